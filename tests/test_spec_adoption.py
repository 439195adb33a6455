"""A fresh learner adopts the first valid spec, all or nothing: a bad Hello is refused (INVALID_ARGUMENT) and
leaves the learner fresh, a failure while adopting leaves it as it was, and a restart with another spec is
refused without touching the run's spec.json."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import grpc
import pytest
from conftest import free_port, ingest, wait_until
from test_learner_core import SPEC, core, steps

from hilrl.buffers.spec import Feature, Spec
from hilrl.learner import core as core_module
from hilrl.learner import rundir as rundir_module
from hilrl.learner.config import LearnerConfig
from hilrl.learner.core import LearnerCore, SpecMismatch
from hilrl.protos import codec
from hilrl.protos.v1 import learner_pb2 as pb
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc

OTHER = Spec(observation=(Feature("y", "float32", (5,)),), action=SPEC.action)


def bad_specs() -> dict[str, pb.Spec]:
    """Hello specs that must never be adopted, as a broken or hostile actor could send them."""
    good = codec.encode_spec(SPEC)
    out = {}
    for what, field, value in [("a negative dimension", "shape", [-3]), ("a zero dimension", "shape", [0]),
                               ("a path as its name", "name", "../../escape"), ("a '/' in its name", "name", "a/b"),
                               ("an empty name", "name", ""), ("an absurd size", "shape", [1 << 20, 1 << 20, 3])]:
        spec = pb.Spec()
        spec.CopyFrom(good)
        feature = spec.observation[0]
        if field == "shape":
            del feature.shape[:]
            feature.shape.extend(value)
        else:
            feature.name = value
        out[what] = spec
    nan_bounds = pb.Spec()
    nan_bounds.CopyFrom(good)
    nan_bounds.action.low[0] = float("nan")
    out["NaN action bounds"] = nan_bounds
    return out


@pytest.mark.parametrize("what", list(bad_specs()))
def test_a_bad_spec_does_not_decode(what: str) -> None:
    with pytest.raises(codec.DecodeError, match="invalid spec"):
        codec.decode_spec(bad_specs()[what])


@pytest.mark.parametrize("fails", ["store", "spec.json"])
def test_a_failure_while_adopting_leaves_the_learner_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           fails: str) -> None:
    c = core(tmp_path)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        if fails == "store":
            def no_store(*args, **kwargs):
                raise OSError(errno.ENOSPC, "No space left on device")
            m.setattr(core_module, "BufferStore", no_store)
        else:
            real = rundir_module.atomic_write

            def no_spec_json(path: Path, data: bytes) -> None:
                if path.name == "spec.json":
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))
                real(path, data)
            m.setattr(rundir_module, "atomic_write", no_spec_json)
        with pytest.raises(OSError):
            c.hello("a", SPEC)
    assert c.spec is None and c.buffers is None and c.store is None and not (out / "spec.json").exists()
    c.hello("b", OTHER)  # another actor, another spec: adopted as by a fresh learner
    assert Spec.from_dict(json.loads((out / "spec.json").read_text())) == OTHER
    with pytest.raises(SpecMismatch):
        c.hello("a", SPEC)
    assert ingest(c, "b", [(1, [])], 0)[0] is False


def test_a_restart_with_another_spec_is_refused_and_keeps_the_runs_spec_json(tmp_path: Path) -> None:
    c = core(tmp_path)
    c.hello("a", SPEC)
    ingest(c, "a", [(1, steps(0, 3, human=True))], 0)
    out = tmp_path / "out"
    before = (out / "spec.json").read_bytes()
    other_file = tmp_path / "other.json"
    other_file.write_text(json.dumps(OTHER.to_dict()))
    with pytest.raises(SystemExit, match="differs"):
        LearnerCore(LearnerConfig(output_dir=out, resume=True, spec_file=other_file)).open()
    assert (out / "spec.json").read_bytes() == before
    (out / "spec.json").unlink()  # even without it (a run stopped before writing it) the store's spec wins
    with pytest.raises(SystemExit, match="stored spec differs"):
        LearnerCore(LearnerConfig(output_dir=out, resume=True, spec_file=other_file)).open()
    assert not (out / "spec.json").exists()
    resumed = core(tmp_path, resume=True)
    assert resumed.spec == SPEC and resumed.status()["buffers"]["human"]["size"] == 3
    assert (out / "spec.json").read_bytes() == before


@pytest.mark.e2e
def test_bad_hellos_to_a_fresh_learner_are_refused_and_leave_it_fresh(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    learner = spawn("learner", "--port", str(port), "--output-dir", str(out), "--demo-episodes", "1000",
                    "--torch-threads", "1", "--hidden", "32,32", name="learner")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.LearnerStub(channel)

        def hello(spec: pb.Spec, actor_id: str = "probe") -> tuple[grpc.StatusCode, str]:
            try:
                stub.Hello(pb.HelloRequest(protocol_version=1, actor_id=actor_id, spec=spec), timeout=10)
            except grpc.RpcError as exc:
                return exc.code(), exc.details() or ""
            return grpc.StatusCode.OK, ""

        wait_until(lambda: hello(bad_specs()["a negative dimension"])[0] != grpc.StatusCode.UNAVAILABLE, 60,
                   "the learner to serve", interval=0.3, diagnose=lambda: learner.stderr[-2000:])
        for what, spec in bad_specs().items():
            code, details = hello(spec)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, code, details)
            assert learner.popen.poll() is None
        assert not (out / "spec.json").exists() and not (out / "store").exists()
        assert not (tmp_path / "escape").exists() and not (out.parent / "escape").exists()
        assert hello(codec.encode_spec(SPEC), "real")[0] == grpc.StatusCode.OK  # the first real actor
    assert Spec.from_dict(json.loads((out / "spec.json").read_text())) == SPEC
    assert learner.stop() == 0
