"""The actor's durable outbox and state directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hilrl.actor.outbox import SEND_MARGIN, Outbox, StateDir, StateDirInUse
from hilrl.protos.v1 import learner_pb2 as pb


def batch() -> pb.TransitionBatch:
    return pb.TransitionBatch(actor_id="a", items=[pb.Item(discard=pb.DiscardEpisode(episode=1))])


def test_unacked_batches_survive_a_restart_and_seq_keeps_increasing(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    assert [box.put(batch()) for _ in range(4)] == [1, 2, 3, 4]
    box.ack(2)
    assert len(box) == 2
    reopened = Outbox(tmp_path)  # as after an actor crash
    assert [b.seq for b in reopened.pending_after(0, timeout=0)] == [3, 4]
    assert reopened.put(batch()) == 5
    reopened.ack(5)
    again = Outbox(tmp_path)
    assert len(again) == 0 and again.put(batch()) == 6  # seq is never reused, even with an empty outbox


def test_ack_from_the_learner_handshake_catches_up(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    for _ in range(3):
        box.put(batch())
    box.ack(3)  # the learner's Hello says it already stored up to seq 3
    assert len(box) == 0 and box.wait_empty(0)


def test_state_dir_keeps_the_actor_id_and_episode_counter(tmp_path: Path) -> None:
    s = StateDir(tmp_path, None)
    generated = s.actor_id
    assert s.take_episode_index() == 0 and s.take_episode_index() == 1
    s.close()
    s2 = StateDir(tmp_path, None)
    assert s2.actor_id == generated and s2.take_episode_index() == 2
    s2.close()
    with pytest.raises(StateDirInUse, match="belongs to actor"):
        StateDir(tmp_path, "someone-else")


def test_second_process_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    holder = StateDir(tmp_path, "arm-1")
    code = ("import sys; from hilrl.actor.outbox import StateDir, StateDirInUse\n"
            f"try:\n    StateDir({str(tmp_path)!r}, 'arm-1')\nexcept StateDirInUse as e:\n    print(e); sys.exit(7)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 7, r.stderr
    assert "is in use by pid" in r.stdout and "own --state-dir" in r.stdout
    holder.close()


def test_outbox_reports_full_at_its_bound_and_frees_on_ack(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_bytes=3 * batch().ByteSize() + 4)  # seq adds a few bytes per batch
    for _ in range(3):
        assert not box.full
        box.put(batch())
    box.put(batch())
    assert box.full and len(box) == 4  # full stops new episodes; nothing was refused or dropped
    box.ack(2)
    assert not box.full
    assert Outbox(tmp_path, max_bytes=box.max_bytes).nbytes == box.nbytes  # re-counted after a restart


def step_item(i: int) -> pb.Item:
    return pb.Item(discard=pb.DiscardEpisode(episode=i))  # any item: the journal stores them opaquely


def test_steps_of_an_unclosed_batch_survive_a_kill_through_the_journal(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.put(batch())
    for i in range(3):
        box.stage(step_item(10 + i))
    with open(tmp_path / "open.items", "ab") as f:  # the kill tore the record being written
        f.write(b"\x40\x00\x00\x00partial")
    reopened = Outbox(tmp_path)  # no close(): as after SIGKILL
    assert reopened.recover_journal("arm") == 3
    pending = reopened.pending_after(0, timeout=0)
    assert [b.seq for b in pending] == [1, 2]  # the recovered steps follow the batches written before
    assert pending[1].actor_id == "arm" and [it.discard.episode for it in pending[1].items] == [10, 11, 12]
    assert not (tmp_path / "open.items").exists()
    assert Outbox(tmp_path).recover_journal("arm") == 0  # recovered once, never twice


def test_a_written_batch_empties_the_journal(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    items = [step_item(i) for i in range(4)]
    for it in items:
        box.stage(it)
    box.put(pb.TransitionBatch(actor_id="a", items=items))
    box.stage(step_item(99))  # the next batch's first step
    assert Outbox(tmp_path).recover_journal("a") == 1


def test_a_batch_over_the_message_limit_is_put_as_consecutive_batches_that_fit(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.set_message_limit(SEND_MARGIN + 10_000)  # as agreed with the learner in Hello
    frame = pb.Tensor(dtype="uint8", shape=[3000], data=bytes(3000))
    items = [pb.Item(transition=pb.Transition(episode=1, step=t, observation={"cam": frame})) for t in range(10)]
    assert box.put(pb.TransitionBatch(actor_id="a", items=items)) == 4  # 3 steps per batch
    parts = box.pending_after(0, timeout=0)
    assert [b.seq for b in parts] == [1, 2, 3, 4] and all(b.actor_id == "a" for b in parts)
    assert all(b.ByteSize() <= box.max_batch_bytes for b in parts)
    assert [i.transition.step for b in parts for i in b.items] == list(range(10))  # in order, each once
    reopened = Outbox(tmp_path)  # the limit is remembered: a restarted actor splits from its first batch
    assert reopened.max_batch_bytes == box.max_batch_bytes and len(reopened) == 4 and not reopened.oversized()
    reopened.set_message_limit(SEND_MARGIN + 5_000)  # the learner came back with a smaller limit
    assert [seq for seq, _ in reopened.oversized()] == [1, 2, 3]  # 3 steps each; the last has one
