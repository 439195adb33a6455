"""A bad-input battery against ONE running learner (TLS + bearer token) while a healthy sim actor streams.

Raw bytes go to the real method paths through a channel with identity serializers; well-formed but
wrong messages go through the generated stub. Every input gets a specific status code, the learner
never stops, and the healthy actor never even reconnects. The table (input -> status) as measured:

| input                                                        | status              |
| ------------------------------------------------------------ | ------------------- |
| Hello: 64 random bytes                                        | INVALID_ARGUMENT    |
| Hello: a valid HelloRequest cut in half                       | INVALID_ARGUMENT    |
| Hello: protocol version 99                                    | FAILED_PRECONDITION |
| Hello: empty actor_id                                         | INVALID_ARGUMENT    |
| Hello: spec feature of dtype 'object'                         | INVALID_ARGUMENT    |
| Hello: spec agent_pos float32[7] (learner: float32[18])       | FAILED_PRECONDITION |
| Hello: a pickle (canary __reduce__) as the request bytes      | INVALID_ARGUMENT    |
| StreamTransitions: 64 random bytes                            | INVALID_ARGUMENT    |
| StreamTransitions: a valid TransitionBatch cut in half        | INVALID_ARGUMENT    |
| StreamTransitions: actor that never said Hello                | FAILED_PRECONDITION |
| StreamTransitions: batch seq 0                                | INVALID_ARGUMENT    |
| batch: agent_pos float64[18] (wrong dtype)                    | INVALID_ARGUMENT    |
| batch: agent_pos float32[17] (wrong shape)                    | INVALID_ARGUMENT    |
| batch: agent_pos 70 bytes for float32[18] (wrong byte length) | INVALID_ARGUMENT    |
| batch: agent_pos with NaN                                     | INVALID_ARGUMENT    |
| batch: action with inf                                        | INVALID_ARGUMENT    |
| batch: reward inf                                             | INVALID_ARGUMENT    |
| batch: episode end without final_observation                  | INVALID_ARGUMENT    |
| batch: empty item (neither transition nor discard)            | INVALID_ARGUMENT    |
| batch: episode 2**63 (uint64 on the wire, int64 in the store)  | INVALID_ARGUMENT    |
| batch: pickle bytes as a tensor of dtype 'object'             | INVALID_ARGUMENT    |
| batch: pickle bytes as agent_pos uint8[n]                     | INVALID_ARGUMENT    |
| batch: pickle bytes padded to agent_pos' 72 bytes             | OK (18 floats)      |
| batch: 17 MiB (limit 16 MiB)                                  | RESOURCE_EXHAUSTED  |
| batch seq 1 again after it was stored                         | OK, duplicate       |
| GetStatus without a token                                     | UNAUTHENTICATED     |
| GetStatus with a wrong token                                  | UNAUTHENTICATED     |
| StreamTransitions with 'authorization: Basic ...'             | UNAUTHENTICATED     |
| plaintext client against the TLS port                         | UNAVAILABLE         |

The pickle canary never fires (the same payload, unpickled here on purpose, does create its file).
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import free_port, log_tails, wait_until

from hilrl.buffers.spec import Feature, Spec
from hilrl.protos import codec
from hilrl.protos.transport import channel_options
from hilrl.protos.v1 import learner_pb2 as pb
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")]

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bad-input-battery-token"
METHOD = "/hilrl.v1.Learner/"
C = grpc.StatusCode


class Canary:
    """Unpickling this creates ``path`` (protocol-0 pickles are ASCII, so they read as finite float32s)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def canary_payload(path: str) -> bytes:
    return pickle.dumps(Canary(path), protocol=0)


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HILRL_TOKEN", raising=False)


def step_item(spec: Spec, *, end: bool = False, reward: float = 0.0, step: int = 0, episode: int = 0,
              **obs_override) -> pb.Item:
    obs = {f.name: codec.encode_tensor(np.zeros(f.shape, f.dtype)) for f in spec.observation}
    obs.update(obs_override)
    t = pb.Transition(observation=obs, action=codec.encode_tensor(np.zeros(spec.action.shape, np.float32)),
                      reward=reward, terminated=end, episode=episode, step=step)
    if end:
        for f in spec.observation:
            t.final_observation[f.name].CopyFrom(codec.encode_tensor(np.zeros(f.shape, f.dtype)))
    return pb.Item(transition=t)


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return C.OK, ""


def test_bad_input_battery_while_a_healthy_actor_streams(spawn, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    subprocess.run(["bash", str(ROOT / "deploy" / "make-certs.sh"), str(certs)], check=True, capture_output=True,
                   timeout=60)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    address = f"127.0.0.1:{port}"
    learner = spawn("learner", "--port", str(port), "--output-dir", str(tmp_path / "learner"), "--demo-episodes",
                    "100000", "--torch-threads", "1", "--hidden", "32,32", "--tls-cert", str(certs / "server.crt"),
                    "--tls-key", str(certs / "server.key"), "--token-file", str(token_file), name="learner")
    healthy = spawn("actor", "--learner", address, "--env", "sim", "--fps", "50", "--actor-id", "healthy",
                    "--state-dir", str(tmp_path / "healthy"), "--tls-ca", str(certs / "ca.crt"),
                    "--token-file", str(token_file), name="healthy")
    logs = log_tails(learner=learner, actor=healthy)

    tls = grpc.ssl_channel_credentials((certs / "ca.crt").read_bytes())
    auth = (("authorization", f"Bearer {TOKEN}"),)
    big = [*channel_options(64), ("grpc.max_send_message_length", 64 << 20)]
    channel = grpc.secure_channel(address, tls, options=big)
    stub = pb_grpc.LearnerStub(channel)

    def healthy_steps() -> int:
        try:
            reply = stub.GetStatus(pb.StatusRequest(), metadata=auth, timeout=10)
        except grpc.RpcError:  # not serving yet
            return 0
        return next((a.transitions_received for a in reply.actors if a.id == "healthy"), 0)

    wait_until(lambda: healthy_steps() > 20, 120, "the healthy actor to stream", interval=0.5, diagnose=logs)
    spec = Spec.from_dict(json.loads((tmp_path / "learner" / "spec.json").read_text()))  # the sim's

    def hello(actor_id: str = "probe", **kw) -> pb.HelloReply:
        request = pb.HelloRequest(protocol_version=kw.pop("version", codec.PROTOCOL_VERSION), actor_id=actor_id,
                                  spec=kw.pop("spec", codec.encode_spec(spec)))
        return stub.Hello(request, metadata=auth, timeout=10)

    def stream(*batches: pb.TransitionBatch, metadata=auth) -> list[pb.Ack]:
        return list(stub.StreamTransitions(iter(batches), metadata=metadata, timeout=10))

    def raw(method: str, data: bytes) -> Callable[[], object]:
        if method == "StreamTransitions":
            call = channel.stream_stream(METHOD + method)
            return lambda: list(call(iter([data]), metadata=auth, timeout=10))
        return lambda: channel.unary_unary(METHOD + method)(data, metadata=auth, timeout=10)

    def batch(*items: pb.Item, seq: int = 1, actor_id: str = "probe") -> pb.TransitionBatch:
        return pb.TransitionBatch(actor_id=actor_id, seq=seq, items=list(items))

    def obs(**arrays: object) -> dict[str, pb.Tensor]:
        return {"agent_pos": pb.Tensor(**arrays)} if arrays else {}

    # the canary is live: unpickling the payload does create its file
    canary_dir = Path(tempfile.mkdtemp(prefix="c", dir="/tmp"))
    armed, canary = canary_dir / "armed", canary_dir / "x"
    pickle.loads(canary_payload(str(armed)))  # noqa: S301 - proves the payload would fire
    assert armed.exists()
    payload = canary_payload(str(canary))
    assert len(payload) <= 72, len(payload)
    padded = payload.ljust(72, b" ")
    assert np.isfinite(np.frombuffer(padded, "<f4")).all()

    rng = np.random.default_rng(7)
    good_hello = pb.HelloRequest(protocol_version=1, actor_id="probe", spec=codec.encode_spec(spec)).SerializeToString()
    good_batch = batch(step_item(spec), step_item(spec, step=1, end=True)).SerializeToString()
    wrong_spec = Spec((Feature("agent_pos", "float32", (7,)), *spec.observation[1:]), spec.action)
    object_spec = codec.encode_spec(spec)
    object_spec.observation[0].dtype = "object"
    nan = np.zeros(18, np.float32)
    nan[3] = np.nan
    rows: list[tuple[str, grpc.StatusCode, Callable[[], object]]] = [
        ("Hello: 64 random bytes", C.INVALID_ARGUMENT, raw("Hello", rng.bytes(64))),
        ("Hello: a valid HelloRequest cut in half", C.INVALID_ARGUMENT,
         raw("Hello", good_hello[: len(good_hello) // 2])),
        ("Hello: protocol version 99", C.FAILED_PRECONDITION, lambda: hello(version=99)),
        ("Hello: empty actor_id", C.INVALID_ARGUMENT, lambda: hello("")),
        ("Hello: spec feature of dtype 'object'", C.INVALID_ARGUMENT, lambda: hello(spec=object_spec)),
        ("Hello: spec agent_pos float32[7]", C.FAILED_PRECONDITION, lambda: hello(spec=codec.encode_spec(wrong_spec))),
        ("Hello: a pickle as the request bytes", C.INVALID_ARGUMENT, raw("Hello", payload)),
        ("StreamTransitions: 64 random bytes", C.INVALID_ARGUMENT, raw("StreamTransitions", rng.bytes(64))),
        ("StreamTransitions: a valid batch cut in half", C.INVALID_ARGUMENT,
         raw("StreamTransitions", good_batch[: len(good_batch) // 2])),
        ("StreamTransitions: actor that never said Hello", C.FAILED_PRECONDITION,
         lambda: stream(batch(step_item(spec), actor_id="stranger"))),
        ("hello probe (valid)", C.OK, lambda: hello()),
        ("StreamTransitions: batch seq 0", C.INVALID_ARGUMENT, lambda: stream(batch(step_item(spec), seq=0))),
        ("batch: agent_pos float64[18]", C.INVALID_ARGUMENT,
         lambda: stream(batch(step_item(spec, **obs(dtype="float64", shape=[18], data=bytes(144)))))),
        ("batch: agent_pos float32[17]", C.INVALID_ARGUMENT,
         lambda: stream(batch(step_item(spec, **obs(dtype="float32", shape=[17], data=bytes(68)))))),
        ("batch: agent_pos 70 bytes for float32[18]", C.INVALID_ARGUMENT,
         lambda: stream(batch(step_item(spec, **obs(dtype="float32", shape=[18], data=bytes(70)))))),
        ("batch: agent_pos with NaN", C.INVALID_ARGUMENT,
         lambda: stream(batch(step_item(spec, agent_pos=codec.encode_tensor(nan))))),
        ("batch: action with inf", C.INVALID_ARGUMENT, lambda: stream(batch(_with_action(step_item(spec), np.inf)))),
        ("batch: reward inf", C.INVALID_ARGUMENT, lambda: stream(batch(step_item(spec, reward=float("inf"))))),
        ("batch: episode end without final_observation", C.INVALID_ARGUMENT,
         lambda: stream(batch(_without_final(step_item(spec, end=True))))),
        ("batch: empty item", C.INVALID_ARGUMENT, lambda: stream(batch(pb.Item()))),
        ("batch: episode 2**63 (int64 in the store)", C.INVALID_ARGUMENT,
         lambda: stream(batch(step_item(spec), step_item(spec, episode=2**63)))),
        ("batch: pickle bytes as a tensor of dtype 'object'", C.INVALID_ARGUMENT,
         lambda: stream(batch(step_item(spec, **obs(dtype="object", shape=[len(payload)], data=payload))))),
        ("batch: pickle bytes as agent_pos uint8[n]", C.INVALID_ARGUMENT,
         lambda: stream(batch(step_item(spec, **obs(dtype="uint8", shape=[len(payload)], data=payload))))),
        ("batch: 17 MiB (limit 16 MiB)", C.RESOURCE_EXHAUSTED,
         lambda: stream(batch(step_item(spec, **obs(dtype="uint8", shape=[17 << 20], data=bytes(17 << 20)))))),
        ("GetStatus without a token", C.UNAUTHENTICATED, lambda: stub.GetStatus(pb.StatusRequest(), timeout=10)),
        ("GetStatus with a wrong token", C.UNAUTHENTICATED,
         lambda: stub.GetStatus(pb.StatusRequest(), metadata=(("authorization", "Bearer nope"),), timeout=10)),
        ("StreamTransitions with 'authorization: Basic ...'", C.UNAUTHENTICATED,
         lambda: stream(batch(step_item(spec)), metadata=(("authorization", "Basic " + TOKEN),))),
        ("plaintext client against the TLS port", C.UNAVAILABLE, lambda: _plaintext_status(address)),
    ]
    before = healthy_steps()
    table = []
    for what, expected, call in rows:
        got, details = code_of(call)
        table.append((what, expected.name, got.name, details))
        assert learner.popen.poll() is None, f"the learner died on {what!r}:\n{learner.stderr[-3000:]}"
    print("\n" + "\n".join(f"{w:<50} {g:<20} {d[:110]}" for w, _, g, d in table))
    assert [g for _, _, g, _ in table] == [e for _, e, _, _ in table], "\n".join(
        f"{w}: expected {e}, got {g} ({d})" for w, e, g, d in table if e != g)
    for what, _, _, details in table:  # unparseable bytes are named as such, not "Exception deserializing"
        if what.endswith(("random bytes", "cut in half", "as the request bytes")):
            assert details.startswith("malformed "), (what, details)

    # pickle bytes in a float32 field of the right length are just 18 numbers: stored, never unpickled
    acks = stream(batch(step_item(spec, agent_pos=pb.Tensor(dtype="float32", shape=[18], data=padded)), seq=1))
    assert [(a.seq, a.duplicate) for a in acks] == [(1, False)]
    # replayed sequence numbers: acknowledged again, stored once
    end = step_item(spec, step=1, end=True)
    assert [(a.seq, a.duplicate) for a in stream(batch(end, seq=2), batch(end, seq=1), batch(end, seq=2))] == [
        (2, False), (1, True), (2, True)]
    assert [(a.seq, a.duplicate) for a in stream(batch(end, seq=2))] == [(2, True)]
    wait_until(lambda: stub.GetStatus(pb.StatusRequest(), metadata=auth, timeout=10).ingest_backlog_batches == 0, 30,
               "the ingest writer to store the acknowledged batches")
    probe = next(a for a in stub.GetStatus(pb.StatusRequest(), metadata=auth, timeout=10).actors if a.id == "probe")
    assert (probe.transitions_received, probe.last_acked_seq, probe.episodes) == (2, 2, 1)
    assert not canary.exists(), "a pickle from the network was unpickled"

    # the healthy actor kept streaming through all of it, without a single reconnect
    wait_until(lambda: healthy_steps() > before + 50, 60, "the healthy actor to keep streaming", interval=0.5,
               diagnose=logs)
    assert healthy.popen.poll() is None
    assert "unreachable" not in healthy.stderr and "refused" not in healthy.stderr, healthy.stderr[-2000:]
    channel.close()
    assert healthy.stop() == 0, healthy.stderr[-2000:]
    assert json.loads(healthy.stdout.strip().splitlines()[-1])["unacked"] == 0
    assert learner.stop() == 0


def _with_action(item: pb.Item, value: float) -> pb.Item:
    action = np.zeros(len(item.transition.action.data) // 4, np.float32)
    action[0] = value
    item.transition.action.CopyFrom(codec.encode_tensor(action))
    return item


def _without_final(item: pb.Item) -> pb.Item:
    item.transition.ClearField("final_observation")
    return item


def _plaintext_status(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        pb_grpc.LearnerStub(channel).GetStatus(pb.StatusRequest(), timeout=5)
