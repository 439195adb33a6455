"""Disk errors on the actor: a failed outbox write costs no seq and loses no journal, the writer retries in
order and the arm holds meanwhile; with a real actor whose state directory fills up, every executed step is
still stored exactly once after space is freed."""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path

import pytest
from conftest import free_port, log_tails, wait_until
from test_disk_full import fill, small_disk
from test_faults import actor_args, assert_exactly_once, learner_args, received, recorded, stop_actor, stored_by_actor

import hilrl.actor.outbox as outbox_module
from hilrl.actor.outbox import JOURNAL, Outbox, OutboxWriter, read_journal
from hilrl.protos.v1 import learner_pb2 as pb


def item(i: int) -> pb.Item:
    return pb.Item(discard=pb.DiscardEpisode(episode=i))


def failing_fsync(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """The next `times` fsyncs in the outbox module fail with ENOSPC (a full disk)."""
    calls = [0]
    real = outbox_module.os.fsync

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] <= times:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(outbox_module.os, "fsync", fsync)
    return calls


def test_a_failed_put_costs_no_seq_and_keeps_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = Outbox(tmp_path)
    box.stage(item(1))
    box.stage(item(2))
    failing_fsync(monkeypatch, 1)
    with pytest.raises(OSError):
        box.put(pb.TransitionBatch(actor_id="a", items=[item(1), item(2)]))
    assert len(box) == 0 and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.batch"))
    assert [i.discard.episode for i in read_journal(tmp_path / JOURNAL)] == [1, 2]  # the steps are still there
    assert box.put(pb.TransitionBatch(actor_id="a", items=[item(1), item(2)])) == 1  # the retry gets seq 1
    box.stage(item(3))
    assert box.put(pb.TransitionBatch(actor_id="a", items=[item(3)])) == 2
    assert [b.seq for b in Outbox(tmp_path).pending_after(0, timeout=0)] == [1, 2]


def test_the_writer_retries_in_order_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(OutboxWriter, "RETRY_S", 0.05)
    box = Outbox(tmp_path)
    writer = OutboxWriter(box)
    calls = failing_fsync(monkeypatch, 3)
    with caplog.at_level(logging.INFO):
        writer.put(pb.TransitionBatch(actor_id="a", items=[item(1)]))
        writer.stage(item(2))  # the next batch's first step, staged behind the failing write
        writer.drain()
    assert calls[0] >= 4 and not writer.failing
    assert "cannot write to the outbox" in caplog.text and "holding the arm" in caplog.text
    assert "the outbox is writable again" in caplog.text
    assert [(b.seq, [i.discard.episode for i in b.items]) for b in box.pending_after(0, timeout=0)] == [(1, [1])]
    assert [i.discard.episode for i in read_journal(tmp_path / JOURNAL)] == [2]


@pytest.mark.e2e
def test_an_actor_whose_disk_fills_holds_and_loses_no_step(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    address = f"127.0.0.1:{port}"
    with small_disk(tmp_path / "arm", "4m") as state:
        learner = spawn(*learner_args(port, out), name="learner")
        actor = spawn(*actor_args(address, state, "arm", "--seed", "9", "--record", str(tmp_path / "sent.zarr")),
                      name="actor")
        logs = log_tails(learner=learner, actor=actor)
        wait_until(lambda: received(address).get("arm", 0) > 30, 120, "the actor streaming", interval=0.5,
                   diagnose=logs)
        filler = state / "filler"
        fill(filler)
        wait_until(lambda: "cannot write to the outbox" in actor.stderr, 30, "the actor to notice its full disk",
                   interval=0.3, diagnose=logs)
        fill(filler)
        time.sleep(2)
        assert actor.popen.poll() is None, actor.stderr[-3000:]
        assert "holding the arm" in actor.stderr
        frozen = received(address)["arm"]
        filler.unlink()
        wait_until(lambda: received(address)["arm"] > frozen + 50, 60, "streaming to resume", interval=0.5,
                   diagnose=logs)
        assert "the outbox is writable again" in actor.stderr
        summary = stop_actor(actor)
        assert learner.stop() == 0
    n = assert_exactly_once(stored_by_actor(out)["arm"], recorded(tmp_path / "sent.zarr"), "arm")
    assert n == summary["steps"]
