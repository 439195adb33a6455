"""Batches that could never be stored, with a real learner and real sim actors over loopback gRPC.

* Camera batches larger than the learner's message limit: the limit is agreed in Hello and the actor splits
  its batches to fit (before, they were refused with RESOURCE_EXHAUSTED and resent forever).
* A batch the learner refuses (INVALID_ARGUMENT): the actor exits naming it and the `hilrl outbox` commands;
  `hilrl outbox set-aside` moves it aside (kept) and the restarted actor sends the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import free_port, hilrl_status, log_tails, run_hilrl, wait_until
from test_faults import actor_args, assert_exactly_once, learner_args, received, recorded, stop_actor, stored_by_actor

from hilrl.actor.outbox import Outbox
from hilrl.protos.v1 import learner_pb2 as pb

pytestmark = pytest.mark.e2e


def test_camera_batches_over_the_learners_message_limit_are_split_to_fit(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    address = f"127.0.0.1:{port}"
    learner = spawn(*learner_args(port, out, "--max-message-mb", "1", "--human-capacity", "2000",
                                  "--policy-capacity", "2000"), name="learner")
    wait_until(lambda: hilrl_status(address), 60, "the learner to serve", interval=0.3,
               diagnose=lambda: learner.stderr[-2000:])
    # two 128x128 cameras: ~100 kB per step, so a 32-step batch is ~3 MiB, three times the learner's limit
    actor = spawn(*actor_args(address, tmp_path / "cam", "cam", "--sim-cameras", "--fps", "0", "--record",
                              str(tmp_path / "sent.zarr")), name="actor")
    logs = log_tails(learner=learner, actor=actor)
    wait_until(lambda: received(address).get("cam", 0) > 25, 150, "camera steps to arrive", interval=0.5,
               diagnose=logs)
    summary = stop_actor(actor)
    assert learner.stop() == 0
    assert "RESOURCE_EXHAUSTED" not in actor.stderr and "unreachable" not in actor.stderr, actor.stderr[-2000:]
    n = assert_exactly_once(stored_by_actor(out)["cam"], recorded(tmp_path / "sent.zarr"), "cam")
    assert n == summary["steps"] and summary["steps"] > 25  # ~11 steps fit one message
    limit = json.loads((tmp_path / "cam" / "outbox" / "limit.json").read_text())["message_bytes"]
    assert limit == 1 << 20, limit


def test_a_refused_batch_is_named_set_aside_and_the_rest_is_sent(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    address = f"127.0.0.1:{port}"
    state = tmp_path / "arm"
    # an earlier run left a batch no learner accepts (here: an empty item) in the outbox
    Outbox(state / "outbox").put(pb.TransitionBatch(actor_id="arm", items=[pb.Item()]))
    learner = spawn(*learner_args(port, out), name="learner")
    wait_until(lambda: hilrl_status(address), 60, "the learner to serve", interval=0.3,
               diagnose=lambda: learner.stderr[-2000:])
    first = run_hilrl(*actor_args(address, state, "arm"), timeout=120)
    assert first.returncode == 3, first.stderr[-3000:]
    assert "INVALID_ARGUMENT" in first.stderr and "refuses batch seq 1 every time" in first.stderr
    assert f"hilrl outbox set-aside --state-dir {state} --seq 1" in first.stderr

    listed = run_hilrl("outbox", "list", "--state-dir", str(state))
    assert listed.returncode == 0, listed.stderr
    pending = json.loads(listed.stdout)["pending"]
    assert pending[0]["seq"] == 1 and pending[0]["empty_items"] == 1
    kept = sum(p["steps"] for p in pending[1:]) + json.loads(listed.stdout)["journal_steps"]  # the refused run's
    aside = run_hilrl("outbox", "set-aside", "--state-dir", str(state), "--seq", "1")
    assert aside.returncode == 0 and "set aside" in aside.stdout, aside.stderr
    assert (state / "outbox" / "set-aside" / "000000000001.batch").exists()  # moved, not deleted
    assert run_hilrl("outbox", "set-aside", "--state-dir", str(state), "--seq", "1").returncode == 2

    second = spawn(*actor_args(address, state, "arm", "--record", str(tmp_path / "after.zarr")), name="actor")
    wait_until(lambda: received(address).get("arm", 0) > 20, 120, "the actor to stream the rest", interval=0.5,
               diagnose=lambda: second.stderr[-2000:])
    summary = stop_actor(second)
    assert learner.stop() == 0
    stored = stored_by_actor(out)["arm"]
    after = recorded(tmp_path / "after.zarr")
    assert_exactly_once([s for s in stored if s.episode >= min(x.episode for x in after)], after, "arm")
    assert len(stored) == summary["steps"] + kept  # the refused run's other steps were sent too
    assert json.loads(run_hilrl("outbox", "list", "--state-dir", str(state)).stdout)["set_aside"][0]["seq"] == 1
