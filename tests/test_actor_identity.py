"""Who sent a batch, not only its seq: two actor processes under one actor id, a new state directory under an id
with stored batches, and an actor pointed at another learner run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import free_port, hilrl_status, ingest, log_tails, run_hilrl, wait_until
from test_faults import actor_args, assert_exactly_once, learner_args, received, recorded, stop_actor, stored_by_actor
from test_learner_core import SPEC, core, steps

from hilrl.actor.link import LearnerLink, NeverFits
from hilrl.actor.outbox import Outbox, StateDir
from hilrl.learner.actors import ActorIdTaken, ActorInUse
from hilrl.protos.v1 import learner_pb2 as pb


def test_one_live_stream_per_actor_id_and_stored_seqs_belong_to_one_state_directory(tmp_path: Path) -> None:
    c = core(tmp_path)
    c.hello("arm", SPEC, "dir-1", "proc-1", "peer-1")
    c.stream_started("arm", "peer-1")
    ingest(c, "arm", [(1, steps(0, 3, human=True))], 0)
    with pytest.raises(ActorInUse, match="'arm' is streaming to this learner right now"):
        c.hello("arm", SPEC, "dir-2", "proc-2", "peer-2")  # a copy-pasted command on another PC
    with pytest.raises(ActorInUse):
        c.hello("arm", SPEC, "dir-1", "proc-3", "peer-3")  # a cloned PC (same state directory contents)
    c.hello("arm", SPEC, "dir-1", "proc-1", "peer-4")  # the same process reconnecting: fine
    c.disconnected("arm", "peer-1")
    with pytest.raises(ActorIdTaken, match=r"batches up to seq 1 stored from another actor state directory"):
        c.hello("arm", SPEC, "dir-2", "proc-2", "peer-2")  # a fresh --state-dir: its seq 1 is not our seq 1
    resumed = core(tmp_path, resume=True)  # the store remembers which directory the seqs came from
    with pytest.raises(ActorIdTaken):
        resumed.hello("arm", SPEC, "dir-2", "proc-2", "peer-2")
    resumed.hello("arm", SPEC, "dir-1", "proc-5", "peer-5")  # the actor itself, restarted
    # two processes say Hello before either streams: the one whose Hello was superseded is refused
    resumed.hello("arm", SPEC, "dir-1", "proc-6", "peer-6")
    with pytest.raises(ActorInUse, match="taken over by another actor process"):
        resumed.stream_started("arm", "peer-5")
    resumed.stream_started("arm", "peer-6")


def test_unacknowledged_batches_stay_with_their_run_unless_the_operator_says_otherwise(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s", "arm")
    outbox = Outbox(state.path / "outbox")
    outbox.put(pb.TransitionBatch(actor_id="arm", items=[pb.Item(discard=pb.DiscardEpisode(episode=1))]))
    link = LearnerLink("127.0.0.1:1", "arm", SPEC, outbox, state=state)
    link._check_run("run-1")  # the first learner this directory talks to
    assert json.loads((state.path / "actor.json").read_text())["run_id"] == "run-1"
    with pytest.raises(NeverFits, match="serves run run-2, but this actor's outbox holds 1 unacknowledged batches"):
        link._check_run("run-2")
    assert len(outbox) == 1 and state.run_id == "run-1"
    link.new_run = True  # --new-run
    link._check_run("run-2")
    assert state.run_id == "run-2"
    outbox.ack(1)
    link.new_run = False
    link._check_run("run-3")  # nothing unacknowledged: nothing to lose, the actor follows the learner
    link.channel.close()
    state.close()


@pytest.mark.e2e
def test_a_second_actor_with_the_same_id_exits_naming_it(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    address = f"127.0.0.1:{port}"
    learner = spawn(*learner_args(port, out), name="learner")
    first = spawn(*actor_args(address, tmp_path / "a", "arm", "--record", str(tmp_path / "a.zarr")), name="first")
    logs = log_tails(learner=learner, first=first)
    wait_until(lambda: received(address).get("arm", 0) > 20, 120, "the first actor streaming", interval=0.5,
               diagnose=logs)
    second = run_hilrl(*actor_args(address, tmp_path / "b", "arm", "--keepalive-s", "2"), timeout=120)
    assert second.returncode == 3, second.stderr[-2000:]
    assert "ALREADY_EXISTS" in second.stderr and "'arm'" in second.stderr and "--actor-id" in second.stderr
    floor = received(address)["arm"]
    wait_until(lambda: received(address)["arm"] > floor + 20, 60, "the first actor to keep streaming",
               interval=0.5, diagnose=logs)
    assert first.popen.poll() is None and hilrl_status(address)["actors"][0]["connected"]
    summary = stop_actor(first)
    assert learner.stop() == 0
    n = assert_exactly_once(stored_by_actor(out)["arm"], recorded(tmp_path / "a.zarr"), "arm")
    assert n == summary["steps"]
