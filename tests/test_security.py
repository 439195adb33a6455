"""TLS, mutual TLS, the bearer token and the binding policy, with real learner/actor processes on loopback.

Certificates come from deploy/make-certs.sh (openssl). One TLS + token learner serves most tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import Proc, free_port, run_hilrl, wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hilrl.actor.config import ActorConfig
from hilrl.deploy.configtools import build_parser, config_to_dict, dump_yaml, parse_config
from hilrl.deploy.status import StatusConfig
from hilrl.learner.auth import MALFORMED, MISSING, WRONG, BearerTokenServerInterceptor
from hilrl.learner.config import LearnerConfig
from hilrl.protos import codec
from hilrl.protos.transport import SecurityConfigError, client_channel, is_tls_handshake_failure, target_host
from hilrl.protos.v1 import learner_pb2 as pb
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")]

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token-for-tests"
FAST_LEARNER = ["--demo-episodes", "3", "--offline-steps", "60", "--publish-every", "20", "--batch-size", "64",
                "--torch-threads", "1", "--hidden", "64,64"]
SECURITY_FLAGS = ["--tls-cert", "--tls-key", "--tls-ca", "--token-file", "--token-env"]


def make_certs(out: Path, *hosts: str) -> Path:
    subprocess.run(["bash", str(ROOT / "deploy" / "make-certs.sh"), str(out), *hosts], check=True,
                   capture_output=True, timeout=60)
    return out


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HILRL_TOKEN", raising=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA: its ca.crt does not verify the learner."""
    return make_certs(tmp_path_factory.mktemp("other"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def _tls(certs: Path, client_cert: bool = False) -> grpc.ChannelCredentials:
    key = (certs / "client.key").read_bytes() if client_cert else None
    chain = (certs / "client.crt").read_bytes() if client_cert else None
    return grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes(), key, chain)


def health(address: str, credentials: grpc.ChannelCredentials | None) -> int:
    """The overall health status (no token sent); raises grpc.RpcError."""
    channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel:
        request = health_pb2.HealthCheckRequest(service="")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def start_learner(log_dir: Path, name: str, *extra: str) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(["learner", "--port", str(port), "--output-dir", str(log_dir / name), *FAST_LEARNER, *extra],
                log_dir, name)
    return proc, f"127.0.0.1:{port}"


def wait_serving(proc: Proc, address: str, credentials: grpc.ChannelCredentials | None) -> None:
    def serving() -> bool:
        assert proc.popen.poll() is None, f"learner exited:\n{proc.stderr[-3000:]}"
        try:
            return health(address, credentials) == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    wait_until(serving, 90, "the learner to serve", interval=0.5, diagnose=lambda: proc.stderr[-3000:])


@pytest.fixture(scope="module")
def learner(tmp_path_factory: pytest.TempPathFactory, certs: Path, token_file: Path) -> Iterator[tuple[Proc, str]]:
    """TLS (no client certificates) + bearer token from a file, 2 MiB message limit."""
    log_dir = tmp_path_factory.mktemp("learner")
    proc, address = start_learner(log_dir, "learner", "--tls-cert", str(certs / "server.crt"), "--tls-key",
                                  str(certs / "server.key"), "--token-file", str(token_file),
                                  "--max-message-mb", "2")
    try:
        wait_serving(proc, address, _tls(certs))
        yield proc, address
    finally:
        proc.stop()


def status(address: str, *args: str) -> subprocess.CompletedProcess:
    return run_hilrl("status", "--learner", address, "--timeout-s", "5", *args)


def assert_alive(learner: tuple[Proc, str], certs: Path) -> None:
    proc, address = learner
    assert proc.popen.poll() is None, proc.stderr[-3000:]
    assert health(address, _tls(certs)) == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------- TLS + token learner, real processes


def test_health_check_answers_without_a_token(learner, certs: Path) -> None:
    _, address = learner
    with grpc.secure_channel(address, _tls(certs)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "hilrl.v1.Learner"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:  # but nothing else does
            pb_grpc.LearnerStub(channel).GetStatus(pb.StatusRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_status_needs_tls_and_the_token(learner, certs: Path, token_file: Path,
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, address = learner
    ca = ["--tls-ca", str(certs / "ca.crt")]
    r = status(address, *ca, "--token-file", str(token_file))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stage"] == "waiting_for_demos"

    r = status(address, *ca)
    assert r.returncode == 1 and r.stdout == ""
    assert "UNAUTHENTICATED" in r.stderr and "missing bearer token" in r.stderr and "HILRL_TOKEN" in r.stderr

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    r = status(address, *ca, "--token-file", str(wrong))
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr and "invalid bearer token" in r.stderr

    monkeypatch.setenv("HILRL_TOKEN", TOKEN)  # the default variable
    assert status(address, *ca).returncode == 0
    monkeypatch.delenv("HILRL_TOKEN")
    monkeypatch.setenv("MY_LEARNER_TOKEN", TOKEN)  # a named one
    r = status(address, *ca, "--token-env", "MY_LEARNER_TOKEN")
    assert r.returncode == 0, r.stderr
    # localhost is in the certificate too; an IP not in it can be checked under another name
    assert status(f"localhost:{address.split(':')[1]}", *ca, "--token-env", "MY_LEARNER_TOKEN").returncode == 0
    r = status(address, *ca, "--token-env", "MY_LEARNER_TOKEN", "--tls-server-name", "learner.example")
    assert r.returncode == 1 and "learner.example" in r.stderr and "--tls-server-name" in r.stderr


def test_plaintext_and_untrusting_clients_fail_and_the_learner_stays_up(learner, certs: Path, other_ca: Path,
                                                                         token_file: Path) -> None:
    _, address = learner
    with grpc.insecure_channel(address) as channel:  # plaintext against the TLS port
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.LearnerStub(channel).GetStatus(pb.StatusRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    r = status(address, "--token-file", str(token_file))
    assert r.returncode == 1 and "if it serves TLS, give --tls-ca" in r.stderr

    r = status(address, "--tls-ca", str(other_ca / "ca.crt"), "--token-file", str(token_file))
    assert r.returncode == 1 and "TLS handshake failed" in r.stderr and "CERTIFICATE_VERIFY_FAILED" in r.stderr
    assert_alive(learner, certs)


def test_oversize_message_is_resource_exhausted_and_the_learner_keeps_serving(learner, certs: Path) -> None:
    _, address = learner
    big = 3 * 1024 * 1024  # the learner accepts at most 2 MiB (--max-message-mb 2)
    options = [("grpc.max_send_message_length", 2 * big), ("grpc.max_receive_message_length", 2 * big)]
    with grpc.secure_channel(address, _tls(certs), options=options) as channel:
        stub = pb_grpc.LearnerStub(channel)
        metadata = [("authorization", f"Bearer {TOKEN}")]
        with pytest.raises(grpc.RpcError) as err:
            stub.Hello(pb.HelloRequest(protocol_version=codec.PROTOCOL_VERSION, actor_id="x" * big),
                       timeout=10, metadata=metadata)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.GetStatus(pb.StatusRequest(), timeout=5, metadata=metadata).stage  # same channel still works
    assert_alive(learner, certs)


def test_actor_with_the_ca_and_the_token_trains(learner, certs: Path, tmp_path: Path, token_file: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    proc, address = learner
    monkeypatch.setenv("HILRL_TOKEN", TOKEN)  # the actor reads it from the environment
    actor = Proc(["actor", "--learner", address, "--env", "sim", "--fps", "0", "--seed", "0", "--actor-id", "tls-arm",
                  "--state-dir", str(tmp_path / "state"), "--tls-ca", str(certs / "ca.crt")], tmp_path, "actor")
    monkeypatch.delenv("HILRL_TOKEN")
    try:
        def filled() -> dict | None:
            r = status(address, "--tls-ca", str(certs / "ca.crt"), "--token-file", str(token_file))
            s = json.loads(r.stdout) if r.returncode == 0 else None
            return s if s and s["buffers"]["human"]["size"] > 0 and s["actors"] else None

        s = wait_until(filled, 120, "the human buffer to fill over TLS",
                       diagnose=lambda: actor.stderr[-2000:] + proc.stderr[-2000:])
        assert s["actors"][0]["id"] == "tls-arm"
        assert actor.stop() == 0, actor.stderr[-2000:]
    finally:
        actor.stop()
    assert json.loads(actor.stdout.strip().splitlines()[-1])["unacked"] == 0


def test_refused_actors_exit_3_with_a_clear_message(learner, certs: Path, other_ca: Path, tmp_path: Path) -> None:
    """Missing token, wrong token, wrong CA: each actor exits 3 and says why; the learner stays up."""
    _, address = learner
    wrong = tmp_path / "wrong-token"
    wrong.write_text("guess\n")
    cases = {
        "no-token": (["--tls-ca", str(certs / "ca.crt")], ["UNAUTHENTICATED", "missing bearer token"]),
        "wrong-token": (["--tls-ca", str(certs / "ca.crt"), "--token-file", str(wrong)],
                        ["UNAUTHENTICATED", "invalid bearer token"]),
        "wrong-ca": (["--tls-ca", str(other_ca / "ca.crt"), "--token-file", str(wrong)],
                     ["TLS handshake failed", "CERTIFICATE_VERIFY_FAILED", "3 attempts"]),
    }
    actors = {name: Proc(["actor", "--learner", address, "--env", "sim", "--fps", "0",
                          "--state-dir", str(tmp_path / f"state-{name}"), *flags], tmp_path, name)
              for name, (flags, _) in cases.items()}
    try:
        for name, (_, expected) in cases.items():
            assert actors[name].wait(120) == 3, f"{name}: {actors[name].stderr[-2000:]}"
            last = actors[name].stderr.strip().splitlines()[-1]
            assert last.startswith("hilrl actor: "), last
            for text in expected:
                assert text in actors[name].stderr, f"{name}: {text!r} not in {actors[name].stderr[-2000:]}"
    finally:
        for a in actors.values():
            a.stop()
    assert_alive(learner, certs)


# ---------------------------------------------------------------- mutual TLS, plaintext + token


def test_mutual_tls_requires_a_client_certificate(certs: Path, tmp_path: Path) -> None:
    proc, address = start_learner(tmp_path, "mtls", "--tls-cert", str(certs / "server.crt"),
                                  "--tls-key", str(certs / "server.key"), "--tls-ca", str(certs / "ca.crt"))
    try:
        wait_serving(proc, address, _tls(certs, client_cert=True))
        assert "(mutual TLS, no token;" in proc.stdout
        with pytest.raises(grpc.RpcError) as err:
            health(address, _tls(certs, client_cert=False))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        r = status(address, "--tls-ca", str(certs / "ca.crt"))
        assert r.returncode == 1 and "give --tls-cert and --tls-key" in r.stderr
        r = status(address, "--tls-ca", str(certs / "ca.crt"), "--tls-cert", str(certs / "client.crt"),
                   "--tls-key", str(certs / "client.key"))
        assert r.returncode == 0, r.stderr
        assert health(address, _tls(certs, client_cert=True)) == health_pb2.HealthCheckResponse.SERVING
    finally:
        assert proc.stop() == 0


def test_plaintext_loopback_with_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HILRL_TOKEN", TOKEN)  # the learner reads it from the environment too
    proc, address = start_learner(tmp_path, "plain")
    try:
        wait_serving(proc, address, None)
        assert "(plaintext, bearer token;" in proc.stdout
        r = status(address)
        assert r.returncode == 0, r.stderr
        monkeypatch.delenv("HILRL_TOKEN")
        r = status(address)
        assert r.returncode == 1 and "missing bearer token" in r.stderr
    finally:
        assert proc.stop() == 0


# ---------------------------------------------------------------- binding policy


def _check(*argv: str):
    from hilrl.learner.server import check_security

    return check_security(parse_config(LearnerConfig, list(argv), "hilrl learner", ""))


def test_non_loopback_needs_tls_and_a_token_unless_insecure(certs: Path, token_file: Path,
                                                            tmp_path: Path) -> None:
    tls = ["--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key")]
    token = ["--token-file", str(token_file)]
    # a real process refuses before it binds anything
    r = run_hilrl("learner", "--host", "0.0.0.0", "--port", str(free_port()), "--output-dir", str(tmp_path / "o"),
                  *tls)
    assert r.returncode == 1 and "refusing to serve on 0.0.0.0 without a bearer token" in r.stderr
    assert "--insecure" in r.stderr and not (tmp_path / "o").exists()

    for argv, missing in ((["--host", "0.0.0.0"], "without TLS (--tls-cert and --tls-key) and a bearer token"),
                          (["--host", "10.1.2.3", *token], "without TLS"),
                          (["--host", "::", *tls], "without a bearer token")):
        with pytest.raises(SystemExit, match=re.escape(missing)):
            _check(*argv)
    assert _check("--host", "0.0.0.0", *tls, *token).warning is None
    assert _check("--host", "localhost").warning is None and _check("--host", "::1").credentials is None
    insecure = _check("--host", "0.0.0.0", "--insecure")
    assert insecure.credentials is None and insecure.token is None
    assert "INSECURE" in insecure.warning and "read the traffic" in insecure.warning
    assert "read the traffic" not in _check("--host", "0.0.0.0", "--insecure", *tls).warning


# ---------------------------------------------------------------- options: parsing, files, tokens


def test_the_same_security_flags_on_every_command() -> None:
    for cls in (LearnerConfig, ActorConfig, StatusConfig):
        helptext = build_parser(cls, "x", "").format_help()
        assert "security (TLS and bearer token):" in helptext
        for flag in SECURITY_FLAGS:
            assert flag in helptext, (cls.__name__, flag)
        assert ("--tls-server-name" in helptext) == (cls is not LearnerConfig)
        assert "reflection" not in helptext.lower()


def test_security_options_from_yaml_and_the_command_line(tmp_path: Path, certs: Path) -> None:
    yaml_file = tmp_path / "actor.yaml"
    yaml_file.write_text(f"learner: learner.lab:50051\ntls_ca: {certs / 'ca.crt'}\ntoken_env: ARM_TOKEN\n")
    cfg = parse_config(ActorConfig, ["--config", str(yaml_file), "--tls-server-name", "learner.lab"], "a", "")
    assert cfg.tls_ca == certs / "ca.crt" and cfg.token_env == "ARM_TOKEN" and cfg.tls_server_name == "learner.lab"
    assert cfg.uses_tls and cfg.learner == "learner.lab:50051"
    dump_yaml(cfg, tmp_path / "round.yaml")
    assert parse_config(ActorConfig, ["--config", str(tmp_path / "round.yaml")], "a", "") == cfg
    assert list(config_to_dict(cfg))[0] == "learner"  # the security options come last, as in --help
    learner_cfg = parse_config(LearnerConfig, ["--tls-cert", "a.crt", "--tls-key", "a.key", "--port", "1"], "l", "")
    assert learner_cfg.tls_cert == Path("a.crt") and learner_cfg.port == 1 and learner_cfg.algo.tau == 0.005


def test_tokens_come_from_a_file_or_an_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ActorConfig().token() is None
    monkeypatch.setenv("HILRL_TOKEN", "from-env")
    assert ActorConfig().token() == "from-env"
    path = tmp_path / "tok"
    path.write_text("from-file\n")
    assert ActorConfig(token_file=path).token() == "from-file"  # the file wins
    monkeypatch.setenv("OTHER", " spaced \n")
    assert ActorConfig(token_env="OTHER").token() == "spaced"
    with pytest.raises(SecurityConfigError, match="--token-env UNSET_VAR: the environment variable is not set"):
        ActorConfig(token_env="UNSET_VAR").token()
    with pytest.raises(SecurityConfigError, match=f"--token-file {tmp_path / 'nope'}: cannot read it"):
        ActorConfig(token_file=tmp_path / "nope").token()
    path.write_text("\n")
    with pytest.raises(SecurityConfigError, match="the token is empty"):
        ActorConfig(token_file=path).token()
    monkeypatch.setenv("HILRL_TOKEN", "two words")
    with pytest.raises(SecurityConfigError, match="printable ASCII without spaces"):
        ActorConfig().token()


def test_unusable_tls_files_are_named(tmp_path: Path, certs: Path) -> None:
    missing = tmp_path / "missing.crt"
    with pytest.raises(SecurityConfigError, match=f"--tls-ca {missing}: cannot read it"):
        client_channel("127.0.0.1:1", 16, ActorConfig(tls_ca=missing))
    not_pem = tmp_path / "token.txt"
    not_pem.write_text("hello")
    with pytest.raises(SecurityConfigError, match=f"--tls-key {not_pem}: not a PEM file"):
        LearnerConfig(tls_cert=certs / "server.crt", tls_key=not_pem).server_credentials()
    with pytest.raises(SecurityConfigError, match="--tls-cert and --tls-key go together"):
        LearnerConfig(tls_cert=certs / "server.crt").server_credentials()
    with pytest.raises(SecurityConfigError, match="--tls-ca needs --tls-cert and --tls-key"):
        LearnerConfig(tls_ca=certs / "ca.crt").server_credentials()
    with pytest.raises(SecurityConfigError, match="--tls-server-name needs TLS"):
        StatusConfig(tls_server_name="x").channel_credentials()
    r = run_hilrl("learner", "--port", str(free_port()), "--output-dir", str(tmp_path / "o"), "--tls-cert",
                  str(missing), "--tls-key", str(certs / "server.key"))
    assert r.returncode == 1 and f"--tls-cert {missing}: cannot read it (No such file or directory)" in r.stderr
    r = run_hilrl("actor", "--learner", "127.0.0.1:1", "--state-dir", str(tmp_path / "s"), "--tls-ca", str(missing))
    assert r.returncode == 2 and f"hilrl actor: --tls-ca {missing}: cannot read it" in r.stderr
    assert not (tmp_path / "s").exists()


def test_server_interceptor_check() -> None:
    check = BearerTokenServerInterceptor(TOKEN).check
    assert check([("authorization", f"Bearer {TOKEN}")]) is None
    assert check(None) == MISSING and check([("x-other", "1")]) == MISSING
    assert check([("authorization", TOKEN)]) == MALFORMED
    assert check([("authorization", "Bearer nope")]) == WRONG
    assert check([("authorization", f"Bearer {TOKEN}x")]) == WRONG
    assert is_tls_handshake_failure("last error: UNKNOWN: ipv4:1: Ssl handshake failed (TSI_PROTOCOL_FAILURE)")
    assert not is_tls_handshake_failure("failed to connect to all addresses; Connection refused")


def test_make_certs_script(tmp_path: Path) -> None:
    out = make_certs(tmp_path / "c", "learner.lab", "10.0.0.7")
    for key in ("ca.key", "server.key", "client.key"):
        assert (out / key).stat().st_mode & 0o777 == 0o600
    san = subprocess.run(["openssl", "x509", "-in", str(out / "server.crt"), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True, check=True).stdout
    for name in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:learner.lab", "IP Address:10.0.0.7"):
        assert name in san
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "server.crt"),
                             str(out / "client.crt")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    again = subprocess.run(["bash", str(ROOT / "deploy" / "make-certs.sh"), str(out)], capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr
    usage = subprocess.run(["bash", str(ROOT / "deploy" / "make-certs.sh"), "-h"], capture_output=True, text=True)
    assert usage.returncode == 0 and "usage:" in usage.stdout


def test_clients_refuse_to_send_the_token_in_plaintext_off_loopback(spawn, token_file: Path, tmp_path: Path) -> None:
    remote = "192.0.2.1:50051"  # TEST-NET-1: not loopback, and nothing answers there
    token = ["--token-file", str(token_file)]
    actor = run_hilrl("actor", "--learner", remote, "--env", "sim", "--state-dir", str(tmp_path / "s"), *token,
                      timeout=120)
    assert actor.returncode == 2, actor.stderr[-2000:]
    assert "refusing to send the bearer token in plaintext to 192.0.2.1:50051" in actor.stderr
    assert "TLS (--tls-ca" in actor.stderr and "unreachable" not in actor.stderr
    r = run_hilrl("status", "--learner", remote, *token, "--timeout-s", "1")
    assert r.returncode == 2 and "in plaintext" in r.stderr and "TLS" in r.stderr, r.stderr
    # --insecure: the operator says the network is trusted; then it is only unreachable
    r = run_hilrl("status", "--learner", remote, *token, "--timeout-s", "1", "--insecure")
    assert r.returncode == 1 and "cannot reach the learner" in r.stderr, r.stderr
    # no token, or loopback, or TLS: nothing to refuse
    assert run_hilrl("status", "--learner", remote, "--timeout-s", "1").returncode == 1
    assert run_hilrl("status", "--learner", f"127.0.0.1:{free_port()}", *token, "--timeout-s", "1").returncode == 1
    insecure = spawn("actor", "--learner", remote, "--env", "sim", "--state-dir", str(tmp_path / "i"), *token,
                     "--insecure", "--flush-timeout-s", "1", name="insecure")
    wait_until(lambda: "unreachable" in insecure.stderr, 60, "the --insecure actor to try the learner",
               interval=0.5, diagnose=lambda: insecure.stderr[-2000:])
    assert insecure.stop() == 0, insecure.stderr[-2000:]


@pytest.mark.parametrize("target, host", [("h.lab:1", "h.lab"), ("[::1]:1", "::1"), ("dns:///localhost:1", "localhost"),
                                          ("ipv4:10.0.0.7:1", "10.0.0.7"), ("unix:/run/x.sock", "localhost")])
def test_target_host(target: str, host: str) -> None:
    assert target_host(target) == host
