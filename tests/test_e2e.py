"""A real learner process and a real sim actor process over loopback gRPC."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import free_port, hilrl_status, settled_status, wait_until
from safetensors.numpy import load_file

from hilrl.buffers.recording import read_steps
from hilrl.buffers.spec import Feature, Spec
from hilrl.buffers.store import BufferStore
from hilrl.protos import codec
from hilrl.protos.v1 import learner_pb2 as pb
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

# a short run, scaled down: the default 1000-update critic warm-up (the actor holds still after the offline
# stage) becomes 10 updates, so the actor moves before the second published version (publish every 20)
FAST_LEARNER = ["--demo-episodes", "3", "--offline-steps", "60", "--critic-warmup-steps", "10", "--publish-every", "20",
                "--batch-size", "64", "--keep-weight-versions", "1000", "--torch-threads", "1", "--hidden", "64,64"]


def learner_args(port: int, out: Path, *extra: str) -> list[str]:
    return ["learner", "--port", str(port), "--output-dir", str(out), *FAST_LEARNER, *extra]


def actor_args(port: int, state: Path, *extra: str) -> list[str]:
    return ["actor", "--learner", f"127.0.0.1:{port}", "--env", "sim", "--fps", "0", "--state-dir", str(state),
            "--seed", "0", *extra]


def test_sim_actor_trains_against_learner_and_applies_new_weights(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    learner = spawn(*learner_args(port, out), name="learner")
    actor = spawn(*actor_args(port, tmp_path / "actor", "--actor-id", "sim-e2e"), name="actor")
    address = f"127.0.0.1:{port}"

    def trained() -> dict | None:
        s = hilrl_status(address)
        if not s or not s["actors"]:
            return None
        a = s["actors"][0]
        ok = (s["stage"] == "online" and s["buffers"]["human"]["size"] > 0 and s["buffers"]["policy"]["size"] > 0
              and s["learner_step"] > 60 and a["weight_version_applied"] >= 2)
        return s if ok else None

    status = wait_until(trained, 240, "both buffers filled, online updates and weights v>=2 applied",
                        diagnose=lambda: f"learner:\n{learner.stderr[-2000:]}\nactor:\n{actor.stderr[-2000:]}")
    assert status["actors"][0]["id"] == "sim-e2e"
    assert status["actors"][0]["last_acked_seq"] > 0
    # the weight files follow on the publisher's file thread (which writes the newest version waiting)
    def weight_files() -> list[Path] | None:
        found = sorted((out / "weights").glob("v*.safetensors"))
        return found if len(found) >= 2 else None

    files = wait_until(weight_files, 30, "two weight files")
    v1, v2 = load_file(files[0]), load_file(files[-1])
    assert files[0].name == "v000001.safetensors" and v1.keys() == v2.keys()
    assert any(not np.array_equal(v1[k], v2[k]) for k in v1 if k.startswith("actor.")), "later weights equal v1"
    np.testing.assert_array_equal(v1["obs_mean"], v2["obs_mean"])  # normalisation frozen after offline

    assert actor.stop() == 0
    summary = json.loads(actor.stdout.strip().splitlines()[-1])
    assert summary["unacked"] == 0 and summary["weight_version"] >= 2
    assert summary["interventions"] > 0 and summary["demo_episodes"] >= 3
    final = settled_status(address)
    a = final["actors"][0]
    # exactly once: every executed step is stored, none twice (the interrupted episode is closed as truncated)
    assert a["transitions_received"] == summary["steps"]
    assert final["buffers"]["human"]["size"] + final["buffers"]["policy"]["size"] == summary["steps"]
    assert a["interventions"] == summary["interventions"]
    # the actor's control-loop health travels with its batches (its newest figures, over recent ticks)
    assert a["loop_period_p50_ms"] > 0 and a["loop_period_p99_ms"] >= a["loop_period_p50_ms"]
    assert a["overruns"] <= summary["overruns"] and a["safety_clamps"] <= sum(summary["safety_clamps"].values())

    assert learner.stop() == 0
    complete = sorted(p.parent.name for p in (out / "checkpoints").glob("step-*/DONE"))
    assert 1 <= len(complete) <= 3  # the last K=3 complete checkpoints are kept
    assert complete[-1] == f"step-{final['learner_step']:09d}" or int(complete[-1][5:]) >= final["learner_step"]
    assert json.loads((out / "spec.json").read_text())["action"]["shape"] == [4]


def test_actor_keeps_retrying_until_the_learner_comes_up(spawn, tmp_path: Path) -> None:
    port = free_port()
    actor = spawn(*actor_args(port, tmp_path / "actor"), name="actor")
    wait_until(lambda: "retrying in" in actor.stderr, 60, "the actor to report that it is retrying",
               diagnose=lambda: actor.stderr[-2000:])
    assert actor.popen.poll() is None, "the actor gave up instead of retrying"
    assert f"127.0.0.1:{port} unreachable" in actor.stderr
    spawn(*learner_args(port, tmp_path / "learner"), name="learner")
    wait_until(lambda: (s := hilrl_status(f"127.0.0.1:{port}")) and s["buffers"]["human"]["size"] > 0, 120,
               "the late learner to receive demonstrations", diagnose=lambda: actor.stderr[-2000:])


def test_wrong_spec_is_refused_and_malformed_batches_do_not_stop_the_learner(spawn, tmp_path: Path) -> None:
    port = free_port()
    spec = Spec(observation=(Feature("agent_pos", "float32", (7,)), Feature("environment_state", "float32", (3,))),
                action=Feature("action", "float32", (4,), (-1, -1, -1, 0), (1, 1, 1, 2)))
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    learner = spawn(*learner_args(port, tmp_path / "learner", "--spec-file", str(spec_file)), name="learner")
    address = f"127.0.0.1:{port}"
    wait_until(lambda: hilrl_status(address), 60, "the learner to serve", diagnose=lambda: learner.stderr[-2000:])

    actor = spawn(*actor_args(port, tmp_path / "actor"), name="actor")
    assert actor.wait(120) == 3
    assert "FAILED_PRECONDITION" in actor.stderr and "agent_pos" in actor.stderr
    assert "float32[7]" in actor.stderr and "float32[18]" in actor.stderr

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.LearnerStub(channel)
        stub.Hello(pb.HelloRequest(protocol_version=1, actor_id="probe", spec=codec.encode_spec(spec)), timeout=10)
        bad = pb.TransitionBatch(actor_id="probe", seq=1, items=[pb.Item(transition=pb.Transition(
            observation={"agent_pos": codec.encode_tensor(np.full(7, np.nan, np.float32)),
                         "environment_state": codec.encode_tensor(np.zeros(3, np.float32))},
            action=codec.encode_tensor(np.zeros(4, np.float32))))])
        with pytest.raises(grpc.RpcError) as err:
            list(stub.StreamTransitions(iter([bad]), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "agent_pos" in err.value.details() and "NaN" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.Hello(pb.HelloRequest(protocol_version=99, actor_id="old", spec=codec.encode_spec(spec)), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = hilrl_status(address)
    assert status is not None and status["buffers"]["human"]["size"] == 0  # nothing half-stored
    assert learner.popen.poll() is None


def test_demo_command_runs_both_processes_and_reports(tmp_path: Path) -> None:
    from conftest import run_hilrl

    r = run_hilrl("demo", "--output-dir", str(tmp_path / "demo"), "--demo-episodes", "2", "--offline-steps", "40",
                  "--online-steps", "40", "--publish-every", "20", "--eval-episodes", "2", "--train-minutes", "3",
                  timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["eval_episodes"] == 2 and 0.0 <= summary["eval_success_rate"] <= 1.0
    assert summary["demo_episodes"] >= 2 and summary["interventions"] > 0
    assert summary["weight_versions_applied"] >= 1 and summary["learner_step"] >= 80
    assert "=== hilrl demo summary ===" in r.stdout
    assert Path(summary["checkpoint"]).exists()


def test_learner_killed_mid_stream_resumes_and_the_actor_carries_on(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    address = f"127.0.0.1:{port}"
    learner = spawn(*learner_args(port, out), name="learner")
    actor = spawn(*actor_args(port, tmp_path / "actor", "--actor-id", "arm", "--record", str(tmp_path / "sent.zarr")),
                  name="actor")
    before = wait_until(lambda: (s := hilrl_status(address)) and s["weight_version"] >= 2 and s, 240,
                        "weights v2", diagnose=lambda: learner.stderr[-2000:])
    learner.popen.kill()  # SIGKILL: no shutdown handler, no final checkpoint
    learner.popen.wait()
    wait_until(lambda: "unreachable" in actor.stderr, 60, "the actor to notice", diagnose=lambda: actor.stderr[-2000:])
    assert actor.popen.poll() is None
    resumed = spawn(*learner_args(port, out, "--resume"), name="learner2")
    first = wait_until(lambda: hilrl_status(address), 60, "the resumed learner", diagnose=lambda: resumed.stderr)
    # both buffers come back from the store: everything acknowledged before the kill is there
    assert first["buffers"]["human"]["size"] >= before["buffers"]["human"]["size"]
    assert first["buffers"]["policy"]["size"] >= before["buffers"]["policy"]["size"]
    assert first["actors"][0]["transitions_received"] >= before["actors"][0]["transitions_received"]
    after = wait_until(lambda: (s := hilrl_status(address)) and s["actors"]
                       and s["actors"][0]["weight_version_applied"] > before["weight_version"] and s, 240,
                       "the actor to apply a version newer than any before the crash",
                       diagnose=lambda: resumed.stderr[-2000:] + actor.stderr[-2000:])
    assert after["stage"] == "online" and after["learner_step"] >= before["learner_step"] - 20
    assert after["actors"][0]["id"] == "arm"
    assert actor.stop() == 0
    summary = json.loads(actor.stdout.strip().splitlines()[-1])
    assert summary["unacked"] == 0
    final = settled_status(address)
    # exactly once across the crash: steps the actor resent after the kill were not stored twice
    assert final["actors"][0]["transitions_received"] == summary["steps"]
    assert final["buffers"]["human"]["size"] + final["buffers"]["policy"]["size"] == summary["steps"]
    assert resumed.stop() == 0
    # by content: what the learner stored is exactly what the actor recorded sending, no gaps, no doubles
    spec, sent = read_steps(tmp_path / "sent.zarr")
    stored = [step for _, step in BufferStore(out / "store", spec).replay()]
    assert sorted(map(fingerprint, stored)) == sorted(map(fingerprint, sent))
    assert "retrying in" in actor.stderr  # the actor really had to resend after the kill


def fingerprint(step) -> tuple:
    digest = hashlib.sha256(step.action.tobytes())
    for name in sorted(step.obs):
        digest.update(step.obs[name].tobytes())
    return step.episode, step.step, step.is_intervention, step.reward, digest.hexdigest()


def test_frozen_learner_fills_the_bounded_outbox_then_everything_arrives_once(spawn, tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    learner = spawn(*learner_args(port, tmp_path / "learner", "--demo-episodes", "1000"), name="learner")
    actor = spawn(*actor_args(port, tmp_path / "actor", "--outbox-max-mb", "0.05"), name="actor")
    wait_until(lambda: (s := hilrl_status(address)) and s["buffers"]["human"]["size"] > 0, 120, "first demos",
               diagnose=lambda: actor.stderr[-2000:])
    learner.popen.send_signal(signal.SIGSTOP)  # frozen: the TCP connection stays up, nothing is acknowledged
    try:
        wait_until(lambda: "outbox full" in actor.stderr, 120, "the actor to hold on a full outbox",
                   diagnose=lambda: actor.stderr[-2000:])
        held = actor.stderr.count("episode ")
        time.sleep(3)
        assert actor.stderr.count("episode ") == held  # no new episode starts while the outbox is full
        assert actor.popen.poll() is None
    finally:
        learner.popen.send_signal(signal.SIGCONT)
    wait_until(lambda: actor.stderr.count("episode ") > held, 120, "episodes to resume after the learner thaws",
               diagnose=lambda: actor.stderr[-2000:])
    assert actor.stop() == 0
    summary = json.loads(actor.stdout.strip().splitlines()[-1])
    assert summary["unacked"] == 0 and summary["outbox_full_waits"] >= 1
    assert settled_status(address)["actors"][0]["transitions_received"] == summary["steps"]


def test_two_actors_share_one_learner_and_a_dead_one_does_not_block_the_other(spawn, tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    spawn(*learner_args(port, tmp_path / "learner", "--demo-episodes", "1000"), name="learner")
    a = spawn(*actor_args(port, tmp_path / "a", "--actor-id", "arm-a"), name="a")
    b = spawn(*actor_args(port, tmp_path / "b", "--actor-id", "arm-b"), name="b")

    def per_actor() -> dict[str, int]:
        s = hilrl_status(address) or {"actors": []}
        return {x["id"]: x["transitions_received"] for x in s["actors"]}

    wait_until(lambda: all(per_actor().get(i, 0) > 0 for i in ("arm-a", "arm-b")), 120, "both actors streaming",
               diagnose=lambda: a.stderr[-1500:] + b.stderr[-1500:])
    a.popen.kill()  # one actor dies without a goodbye
    a.popen.wait()
    before = per_actor()["arm-b"]
    wait_until(lambda: per_actor()["arm-b"] > before + 100, 60, "the other actor to keep streaming")
    assert b.stop() == 0
    summary = json.loads(b.stdout.strip().splitlines()[-1])
    assert per_actor()["arm-b"] == summary["steps"]
