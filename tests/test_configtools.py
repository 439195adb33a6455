"""Tests for hilrl.deploy.configtools: dataclass configs from YAML + command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from hilrl.deploy.configtools import (
    ConfigError,
    build_parser,
    config_from_dict,
    config_to_dict,
    dump_yaml,
    parse_config,
)


@dataclass
class AlgoConfig:
    tau: float = field(default=0.005, metadata={"help": "Target network soft-update rate."})
    batch_size: int = field(default=256, metadata={"help": "Minibatch size per update."})
    use_bc: bool = field(default=True, metadata={"help": "Add the behaviour-cloning term."})


@dataclass
class ServerConfig:
    port: int = field(metadata={"help": "TCP port to listen on."})
    output_dir: Path = field(metadata={"help": "Where checkpoints and logs go."})
    resume: bool = field(default=False, metadata={"help": "Resume from the latest checkpoint."})
    insecure: bool = field(default=False, metadata={"help": "Disable TLS (100% plaintext)."})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "Torch device."})
    hidden: tuple[int, ...] = field(default=(256, 256), metadata={"help": "Hidden layer widths."})
    seed: int | None = field(default=None, metadata={"help": "Random seed (none = random)."})
    name: str = field(default="run", metadata={"help": "Run name."})
    algo: AlgoConfig = field(default_factory=AlgoConfig, metadata={"help": "TD3 settings."})


REQ = ["--port", "50051", "--output-dir", "/tmp/out"]


def parse(*argv: str) -> ServerConfig:
    return parse_config(ServerConfig, list(argv), prog="serve", description="Test server.")


def test_defaults_and_required():
    cfg = parse(*REQ)
    assert cfg == ServerConfig(port=50051, output_dir=Path("/tmp/out"))
    assert isinstance(cfg.output_dir, Path)


def test_missing_required_option(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--port", "1")
    assert exc.value.code == 2
    assert "--output-dir" in capsys.readouterr().err


def test_bare_bool_followed_by_other_flags():
    cfg = parse("--resume", "--insecure", "--port", "7", "--output-dir", "o")
    assert cfg.resume is True and cfg.insecure is True and cfg.port == 7
    cfg = parse(*REQ, "--resume")  # bare flag at the end
    assert cfg.resume is True


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["--resume=true"], True), (["--resume=false"], False), (["--resume", "false"], False),
     (["--resume", "yes"], True), (["--no-resume"], False), (["--resume", "--no-resume"], False)],
)
def test_bool_forms(args, expected):
    assert parse(*REQ, *args).resume is expected


def test_no_flag_for_true_default_and_nested():
    assert parse(*REQ, "--algo.no-use-bc").algo.use_bc is False
    assert parse(*REQ, "--algo.use_bc=false").algo.use_bc is False


def test_bad_bool_value(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*REQ, "--resume", "maybe")
    assert exc.value.code == 2
    assert "--resume" in capsys.readouterr().err


def test_equals_forms_and_underscore_alias():
    cfg = parse("--port=9", "--output_dir=/x", "--name=a=b")
    assert (cfg.port, cfg.output_dir, cfg.name) == (9, Path("/x"), "a=b")


def test_nested_overrides():
    cfg = parse(*REQ, "--algo.tau", "0.01", "--algo.batch-size=64")
    assert cfg.algo == AlgoConfig(tau=0.01, batch_size=64)
    assert parse(*REQ, "--algo.batch_size", "32", "--algo.tau=-0.5").algo.batch_size == 32


def test_literal_choice(capsys):
    assert parse(*REQ, "--device", "cuda").device == "cuda"
    with pytest.raises(SystemExit) as exc:
        parse(*REQ, "--device", "gpu")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "gpu" in err and "'auto'" in err and "'cpu'" in err and "'cuda'" in err


def test_optional_none():
    assert parse(*REQ, "--seed", "3").seed == 3
    assert parse(*REQ, "--seed", "none").seed is None
    assert parse(*REQ, "--seed=null").seed is None
    assert parse(*REQ, "--seed=-1").seed == -1


def test_tuple_forms():
    assert parse(*REQ, "--hidden", "64,32").hidden == (64, 32)
    assert parse(*REQ, "--hidden", "64", "32", "16", "--resume").hidden == (64, 32, 16)
    assert parse(*REQ, "--hidden=8,8").hidden == (8, 8)


def test_unknown_cli_option(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*REQ, "--prot", "5")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--prot" in err and "did you mean --port" in err


def test_abbreviation_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--po", "5", "--output-dir", "o")
    assert exc.value.code == 2
    assert "--po" in capsys.readouterr().err


def test_help_lists_everything(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--help")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in [*dataclasses.fields(ServerConfig), *dataclasses.fields(AlgoConfig)]:
        assert f.metadata["help"] in out, f.name
    for text in ["--output-dir", "--algo.tau", "--algo.batch-size", "auto, cpu, cuda", "default: 256,256",
                 "default: 0.005", "required", "--no-resume", "100% plaintext"]:
        assert text in out, text
    assert out.index("algo:") > out.index("--name")  # nested section is its own group


def test_build_parser_returns_parser():
    ns = build_parser(ServerConfig, "serve", "d").parse_args(["--port", "1"])
    assert vars(ns) == {"port": "1"}


def test_yaml_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"port": 1, "output_dir": "/y", "name": "yaml",
                                    "algo": {"tau": 0.5}, "hidden": [1, 2]}))
    cfg = parse("--config", str(path), "--name", "cli")
    assert (cfg.port, cfg.output_dir, cfg.name, cfg.hidden) == (1, Path("/y"), "cli", (1, 2))
    assert cfg.algo == AlgoConfig(tau=0.5)  # batch_size keeps its dataclass default
    assert parse(f"--config={path}", "--algo.tau", "0.1").algo.tau == 0.1


def test_yaml_unknown_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("port: 1\noutput_dir: o\nalgo:\n  taux: 0.1\n")
    with pytest.raises(SystemExit) as exc:
        parse("--config", str(path))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "algo.taux" in err and str(path) in err and "algo.tau" in err


def test_yaml_wrong_type(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("port: abc\noutput_dir: o\n")
    with pytest.raises(SystemExit):
        parse("--config", str(path))
    err = capsys.readouterr().err
    assert "port" in err and "int" in err and str(path) in err


def test_config_from_dict_errors():
    with pytest.raises(ConfigError, match=r"x\.yaml: unknown key 'prot'.*'port'"):
        config_from_dict(ServerConfig, {"prot": 1, "output_dir": "o"}, "x.yaml")
    with pytest.raises(ConfigError, match="device"):
        config_from_dict(ServerConfig, {"port": 1, "output_dir": "o", "device": "gpu"})
    with pytest.raises(ConfigError, match="missing required key 'port'"):
        config_from_dict(ServerConfig, {"output_dir": "o"})
    with pytest.raises(ConfigError, match="resume"):
        config_from_dict(ServerConfig, {"port": 1, "output_dir": "o", "resume": "yes"})


def test_round_trip_dict():
    cfg = parse(*REQ, "--seed", "4", "--algo.tau", "0.2", "--hidden", "3,4,5", "--device", "cpu")
    data = config_to_dict(cfg)
    assert data["output_dir"] == "/tmp/out" and data["hidden"] == [3, 4, 5] and data["algo"]["tau"] == 0.2
    assert config_from_dict(ServerConfig, data) == cfg


def test_dump_yaml_round_trip(tmp_path):
    cfg = parse(*REQ, "--resume", "--name", "yes", "--seed", "none", "--algo.no-use-bc")
    path = tmp_path / "sub" / "cfg.yaml"
    dump_yaml(cfg, path)
    assert parse("--config", str(path)) == cfg


def test_print_config(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*REQ, "--algo.tau=0.3", "--print-config")
    assert exc.value.code == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["port"] == 50051 and out["algo"]["tau"] == 0.3
