"""Typed dataclass configs from YAML files and command-line options (argparse underneath).

A (possibly nested) dataclass describes the config; each field becomes an option:
``output_dir`` -> ``--output-dir`` (``--output_dir`` also accepted), a field ``tau`` of a nested
dataclass field ``algo`` -> ``--algo.tau``. Values may be given as ``--name value`` or ``--name=value``.
Help text comes from ``dataclasses.field(metadata={"help": "..."})`` (``opt(default, "help")``);
``opt(..., group="name")`` lists an option under its own --help heading without changing its flag.
Fields inherited from a dataclass base are options like the class's own (the base's come first).

Precedence: dataclass defaults < ``--config FILE.yaml`` < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from hilrl.buffers import options as _options

T = TypeVar("T")
MISSING = dataclasses.MISSING
_ACCEPT = {int: (int,), float: (int, float), str: (str,), bool: (bool,), Path: (str, Path)}  # YAML types
_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "yes", "on", "1", "t", "y")
_FALSE_WORDS = ("false", "no", "off", "0", "f", "n")


opt = _options.opt  # the field helper lives in the bottom layer (every package declares config); re-exported


class ConfigError(ValueError):
    """A config mapping (e.g. a YAML file) does not match the dataclass."""


@dataclasses.dataclass
class _Option:
    """One leaf field of the config: dotted key, path, type, default (MISSING if required), help."""

    key: str
    path: tuple[str, ...]
    tp: Any
    default: Any
    help: str
    group: str = ""  # --help group of its own (flags unchanged), from ``opt(..., group="...")``


def field_help(f: dataclasses.Field) -> str:
    """Help text of a dataclass field, from ``metadata={"help": ...}`` ("" if none)."""
    return str(f.metadata.get("help", ""))


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _spellings(path: tuple[str, ...]) -> list[str]:
    """Option strings for a field path: the dashed form first, then the underscore form if different."""
    dashed = "--" + ".".join(p.replace("_", "-") for p in path)
    under = "--" + ".".join(path)
    return [dashed] if dashed == under else [dashed, under]


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None`` / ``Optional[X]``, else ``(tp, False)``."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        rest = [a for a in args if a is not type(None)]
        if len(args) == 2 and len(rest) == 1:
            return rest[0], True
        raise TypeError(f"unsupported union type {tp!r} (only X | None is supported)")
    return tp, False


def _element(tp: Any, key: str = "?") -> Any:
    """The scalar/Literal type inside ``tp`` (unwrapping ``| None`` and ``tuple[X, ...]``); checks support."""
    inner, _ = _optional_inner(tp)
    if get_origin(inner) is tuple:
        args = get_args(inner)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"field '{key}': only tuple[X, ...] tuples are supported, got {tp!r}")
        inner = args[0]
    if inner not in _ACCEPT and get_origin(inner) is not Literal:
        raise TypeError(f"field '{key}': unsupported type {tp!r}")
    return inner


def _type_name(tp: Any) -> str:
    inner, opt = _optional_inner(tp)
    if get_origin(inner) is Literal:
        name = "one of " + ", ".join(repr(c) for c in get_args(inner))
    elif get_origin(inner) is tuple:
        name = f"tuple[{_type_name(get_args(inner)[0])}, ...]"
    else:
        name = inner.__name__
    return f"{name} | None" if opt else name


def _show(value: Any) -> str:
    """A default value as an operator would type it on the command line."""
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value) if value else "(empty)"
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _from_string(tp: Any, text: str) -> Any:
    """Convert one command-line string to ``tp`` (a scalar, Literal or Optional thereof)."""
    inner, opt = _optional_inner(tp)
    low = text.strip().lower()
    if opt and low in _NONE_WORDS:
        return None
    if get_origin(inner) is Literal:
        for choice in get_args(inner):
            if str(choice) == text:
                return choice
        choices = ", ".join(repr(str(c)) for c in get_args(inner))
        raise ValueError(f"invalid choice: {text!r} (choose from {choices})")
    if inner is bool:
        if low in _TRUE_WORDS or low in _FALSE_WORDS:
            return low in _TRUE_WORDS
        raise ValueError(f"invalid bool value: {text!r} (use true or false)")
    if inner in (int, float):
        try:
            return inner(text)
        except ValueError:
            raise ValueError(f"invalid {inner.__name__} value: {text!r}") from None
    return inner(text)  # str, Path


def _from_cli(opt: _Option, raw: str | list[str]) -> Any:
    """Convert what argparse collected for ``opt`` (a string, or a token list for tuples)."""
    inner, opt_none = _optional_inner(opt.tp)
    if get_origin(inner) is not tuple:
        return _from_string(opt.tp, raw)
    if opt_none and len(raw) == 1 and raw[0].strip().lower() in _NONE_WORDS:
        return None
    elem = get_args(inner)[0]
    return tuple(_from_string(elem, p.strip()) for tok in raw for p in tok.split(",") if p.strip())


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    """Validate a value read from a mapping (YAML) against ``tp`` and convert it."""
    inner, opt = _optional_inner(tp)
    bad = ConfigError(f"{source}: key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if value is None:
        if opt:
            return None
        raise bad
    if get_origin(inner) is Literal:
        if any(value == c and type(value) is type(c) for c in get_args(inner)):
            return value
        choices = ", ".join(repr(c) for c in get_args(inner))
        raise ConfigError(f"{source}: key '{key}': invalid choice {value!r} (choose from {choices})")
    if get_origin(inner) is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        return tuple(_coerce(get_args(inner)[0], v, f"{key}[{i}]", source) for i, v in enumerate(value))
    if isinstance(value, _ACCEPT[inner]) and (inner is bool or not isinstance(value, bool)):
        return inner(value)
    if inner is float and isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise bad


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _from_dict(cls: type[T], data: Any, source: str, prefix: str) -> T:
    if not isinstance(data, dict):
        where = f"section '{prefix[:-1]}'" if prefix else "top level"
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    flds = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for k in data:
        if k not in flds:
            close = difflib.get_close_matches(str(k), list(flds), n=3)
            hint = ("did you mean " + " or ".join(repr(prefix + c) for c in close) + "?") if close else (
                "valid keys: " + ", ".join(prefix + c for c in flds))
            raise ConfigError(f"{source}: unknown key '{prefix}{k}' ({hint})")
    kwargs: dict[str, Any] = {}
    for name, f in flds.items():
        tp, key = hints[name], prefix + name
        if dataclasses.is_dataclass(tp):
            sub = data.get(name, MISSING)
            if isinstance(sub, tp):
                kwargs[name] = sub
            elif sub is not MISSING or _field_default(f) is MISSING:
                default = _field_default(f)
                base = config_to_dict(default) if default is not MISSING else {}
                over = {} if sub is MISSING else sub
                merged = _deep_merge(base, over) if isinstance(over, dict) else over
                kwargs[name] = _from_dict(tp, merged, source, key + ".")
        elif name in data:
            kwargs[name] = _coerce(tp, data[name], key, source)
        elif _field_default(f) is MISSING:
            raise ConfigError(f"{source}: missing required key '{key}'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: invalid {cls.__name__}: {e}") from e


def config_from_dict(config_cls: type[T], data: dict, source: str = "config") -> T:
    """Build ``config_cls`` from a nested mapping; missing keys take defaults.

    Raises ``ConfigError`` (a ValueError) naming ``source`` and the dotted key for unknown keys
    (with close-match suggestions), wrong types, and missing required keys.
    """
    return _from_dict(config_cls, data, source, "")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def config_to_dict(cfg: Any) -> dict:
    """Nested plain dict of a config instance (tuples -> lists, Paths -> str); YAML/JSON friendly.

    Fields with a ``group`` (e.g. inherited security options) come after the others, as in --help.
    """
    flds = sorted((f for f in dataclasses.fields(cfg) if f.init), key=lambda f: bool(f.metadata.get("group")))
    return {f.name: _plain(getattr(cfg, f.name)) for f in flds}


def dump_yaml(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as YAML that ``--config`` (or ``config_from_dict``) reads back to an equal config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _sections(cls: type, path: tuple[str, ...] = (), defaults: Any = None, doc: str = "") -> list:
    """``[(path, doc, [_Option, ...]), ...]`` for ``cls`` and each nested dataclass section."""
    hints = get_type_hints(cls)
    options: list[_Option] = []
    subs: list = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        if dataclasses.is_dataclass(tp):
            subs += _sections(tp, (*path, f.name), None if default is MISSING else default, field_help(f))
        else:
            key = ".".join((*path, f.name))
            _element(tp, key)
            group = str(f.metadata.get("group", ""))
            options.append(_Option(key, (*path, f.name), tp, default, field_help(f), group))
    return [(path, doc, options), *subs]


def _add_option(group: Any, opt: _Option) -> None:
    inner, optional = _optional_inner(opt.tp)
    names, elem = _spellings(opt.path), _element(opt.tp)
    choices = [str(c) for c in get_args(elem)] if get_origin(elem) is Literal else []
    kind = f"choices: {', '.join(choices)}" if choices else f"type: {_type_name(opt.tp)}"
    info = [kind + (" ('none' = None)" if optional else ""),
            "required" if opt.default is MISSING else f"default: {_show(opt.default)}"]
    metavar = "{" + ",".join(choices) + "}" if choices else elem.__name__.upper()
    kwargs: dict[str, Any] = {"dest": opt.key, "metavar": metavar}
    if inner is bool:
        neg = _spellings((*opt.path[:-1], "no_" + opt.path[-1]))
        info.insert(1, f"bare flag = true, {neg[0]} = false")
        kwargs.update(nargs="?", const="true")
        group.add_argument(*neg, dest=opt.key, action="store_const", const="false", help=argparse.SUPPRESS)
    elif get_origin(inner) is tuple:
        info.insert(1, "comma- or space-separated")
        kwargs["nargs"] = "*"
    text = (opt.help + " " if opt.help else "") + "(" + "; ".join(info) + ")"
    group.add_argument(names[0], help=text.replace("%", "%%"), **kwargs)
    if len(names) > 1:
        group.add_argument(*names[1:], help=argparse.SUPPRESS, **kwargs)


def build_parser(config_cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """Argparse parser with one option per leaf field, plus ``--config`` and ``--print-config``.

    Options store raw strings under their dotted key and are absent from the namespace unless given;
    use ``parse_config`` to get a typed, validated config.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, allow_abbrev=False, argument_default=argparse.SUPPRESS,
        usage=f"{prog} [--config PATH] [--print-config] [--OPTION VALUE ...]")
    parser.add_argument("--config", metavar="PATH",
                        help="YAML file of option values (precedence: defaults < file < command line).")
    parser.add_argument("--print-config", action="store_true",
                        help="Print the resolved config as YAML and exit.")
    named: dict[str, Any] = {}
    for path, doc, options in _sections(config_cls):
        group = parser.add_argument_group(".".join(path) if path else "config options", doc or None)
        for opt in options:
            if opt.group and opt.group not in named:
                named[opt.group] = parser.add_argument_group(opt.group)
            _add_option(named[opt.group] if opt.group else group, opt)
    return parser


def parse_config(config_cls: type[T], argv: list[str] | None, prog: str, description: str) -> T:
    """Parse ``argv`` (``sys.argv[1:]`` if None) into a validated ``config_cls`` instance.

    Errors (unknown option, bad value, bad YAML, missing required option) exit with code 2 via
    ``parser.error``; ``--help`` and ``--print-config`` exit with code 0.
    """
    parser = build_parser(config_cls, prog, description)
    ns, extras = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if extras:
        bad = next((e for e in extras if e.startswith("-")), extras[0]).split("=", 1)[0]
        flags = [s for s in parser._option_string_actions if s.startswith("--")]
        close = difflib.get_close_matches(bad, flags, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    given = vars(ns)
    source = "command line"
    data: dict = {}
    if given.get("config") is not None:
        source = str(given["config"])
        try:
            data = yaml.safe_load(Path(source).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            parser.error(f"cannot load --config {source}: {e}")
        if not isinstance(data, dict):
            parser.error(f"{source}: top level must be a mapping, got {type(data).__name__}")
    options = [o for _, _, opts in _sections(config_cls) for o in opts]
    try:
        for opt in options:
            if opt.key not in given:
                continue
            try:
                value = _from_cli(opt, given[opt.key])
            except ValueError as e:
                parser.error(f"argument {_spellings(opt.path)[0]}: {e}")
            node = data
            for part in opt.path[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{source}: section '{part}' must be a mapping")
            node[opt.path[-1]] = value
        missing = [_spellings(o.path)[0] for o in options if o.default is MISSING and not _has(data, o.path)]
        if missing:
            parser.error("the following arguments are required: " + ", ".join(missing))
        cfg = config_from_dict(config_cls, data, source)
    except ConfigError as e:
        parser.error(str(e))
    if given.get("print_config"):
        sys.stdout.write(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        parser.exit(0)
    return cfg


def _has(data: dict, path: tuple[str, ...]) -> bool:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True
