"""The ingest log (learner/ingest.py): acknowledged once logged, stored by the writer, recovered after a crash,
bounded by backpressure, and its segments deleted once stored. Real files throughout."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ingest
from test_learner_core import SPEC, core, steps

import hilrl.buffers.durable as durable
import hilrl.learner.ingest as ingest_module
from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.durable import BatchLog
from hilrl.buffers.store import BufferStore
from hilrl.learner.ingest import pack_items, unpack_items


def stored_keys(path: Path) -> list[tuple[str, int, int]]:
    return [(src, s.episode, s.step) for src, s in BufferStore(path, SPEC).replay() if isinstance(s, Step)]


def crash(c) -> None:
    """Stop the writer where it is and drop the core, as a SIGKILL would (the files stay as they are)."""
    with c.ingest._cond:
        c.ingest._stopping = True
        c.ingest._cond.notify_all()
    c.ingest._writer.join(10)
    c.ingest.log.close()


def test_a_batch_round_trips_through_its_log_record() -> None:
    items = [*steps(4, 3, human=True), Discard(2)]
    meta, back = unpack_items(SPEC, b"".join(bytes(p) for p in pack_items(SPEC, items, {"source": "a", "seq": 7})))
    assert meta == {"source": "a", "seq": 7} and isinstance(back[-1], Discard) and back[-1].episode == 2
    for a, b in zip(items[:-1], back[:-1], strict=True):
        assert (a.episode, a.step, a.reward, a.terminated, a.truncated, a.is_intervention) == \
            (b.episode, b.step, b.reward, b.terminated, b.truncated, b.is_intervention)
        assert np.array_equal(a.obs["x"], b.obs["x"]) and np.array_equal(a.action, b.action)
        assert (a.final_obs is None) == (b.final_obs is None)
    assert np.array_equal(back[2].final_obs["x"], items[2].final_obs["x"])


def test_a_crash_between_the_log_fsync_and_the_store_write_is_recovered_exactly_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = core(tmp_path)
    c.hello("a", SPEC)
    ingest(c, "a", [(1, steps(0, 3, human=True))])  # stored
    monkeypatch.setattr(ingest_module, "_store_all", lambda store, batches: (_ for _ in ()).throw(
        OSError(errno.EIO, "writer held back by the test")))
    monkeypatch.setattr(ingest_module, "RETRY_S", 0.05)
    assert c.ingest.batches("a", [(2, steps(1, 4, human=False))], 0) == [False]  # acknowledged: in the log
    assert c.ingest.batches("a", [(3, steps(2, 2, human=True))], 0) == [False]
    assert c.status()["ingest_backlog_batches"] == 2
    crash(c)
    monkeypatch.undo()
    assert stored_keys(tmp_path / "out" / "store") == [("a", 0, t) for t in range(3)]  # not in the store yet

    resumed = core(tmp_path, resume=True)
    expected = [("a", 0, 0), ("a", 0, 1), ("a", 0, 2), *(("a", 1, t) for t in range(4)), ("a", 2, 0), ("a", 2, 1)]
    assert stored_keys(tmp_path / "out" / "store") == expected
    assert resumed.status()["actors"][0]["last_acked_seq"] == 3
    assert len(resumed.buffers.human) == 5 and len(resumed.buffers.policy) == 4
    assert ingest(resumed, "a", [(3, steps(2, 2, human=True))]) == [True]  # the actor's resend: a duplicate
    crash(resumed)
    again = core(tmp_path, resume=True)  # the log was emptied into the store: nothing is stored twice
    assert stored_keys(tmp_path / "out" / "store") == expected and len(again.buffers.human) == 5


def test_a_crash_after_the_store_commit_but_before_the_segment_delete_stores_nothing_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BatchLog, "drop", lambda self, keep_from: None)
    c = core(tmp_path)
    c.hello("a", SPEC)
    for seq in range(1, 4):
        ingest(c, "a", [(seq, steps(seq, 2, human=True))])
    crash(c)
    assert len(list((tmp_path / "out" / "store" / "log").glob("*.log"))) >= 1  # every batch is still logged
    monkeypatch.undo()
    resumed = core(tmp_path, resume=True)
    assert stored_keys(tmp_path / "out" / "store") == [("a", e, t) for e in (1, 2, 3) for t in (0, 1)]
    assert len(resumed.buffers.human) == 6
    assert list((tmp_path / "out" / "store" / "log").glob("*.log")) == []


def test_a_torn_record_at_the_end_of_the_log_is_ignored(tmp_path: Path) -> None:
    log = BatchLog(tmp_path / "log")
    log.append([b"first"])
    log.append([b"second"])
    log.close()
    segment = next((tmp_path / "log").glob("*.log"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-3])  # a crash in the middle of the last write (never acknowledged)
    assert [bytes(p) for _, p in BatchLog(tmp_path / "log").read()] == [b"first"]


def test_a_full_backlog_holds_the_acknowledgements_back_until_the_writer_catches_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = core(tmp_path)
    c.hello("a", SPEC)
    release = threading.Event()
    original = ingest_module._store_all
    monkeypatch.setattr(ingest_module, "_store_all", lambda store, batches: release.wait(30) and
                        original(store, batches))
    one = sum(len(p) for p in pack_items(SPEC, steps(1, 4, human=True), {"source": "a", "seq": 1, "instance": ""}))
    c.ingest.backlog_bytes = 2 * one
    done: list[int] = []

    def send() -> None:
        for seq in range(1, 7):
            c.ingest.batches("a", [(seq, steps(seq, 4, human=True))], 0)
            done.append(seq)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(1.5)
    backlog = c.status()["ingest_backlog_bytes"]
    assert len(done) <= 3 and backlog <= 3 * one, (done, backlog)  # bounded: waiting, not queueing
    assert sender.is_alive()
    release.set()
    sender.join(30)
    assert done == [1, 2, 3, 4, 5, 6] and c.ingest.drain(30)
    assert c.status()["ingest_backlog_batches"] == 0 and len(c.buffers.human) == 24


def test_a_failing_writer_with_a_full_backlog_refuses_instead_of_waiting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = core(tmp_path)
    c.hello("a", SPEC)
    monkeypatch.setattr(ingest_module, "RETRY_S", 0.05)
    monkeypatch.setattr(ingest_module, "_store_all", lambda store, batches: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))
    c.ingest.backlog_bytes = 1
    c.ingest.batches("a", [(1, steps(1, 2, human=True))], 0)  # an empty backlog always takes one
    with pytest.raises(OSError) as info:
        c.ingest.batches("a", [(2, steps(2, 2, human=True))], 0)
    assert info.value.errno == errno.ENOSPC and "the disk is full" in c.status()["store_problem"]
    monkeypatch.undo()
    assert c.ingest.drain(30) and ingest(c, "a", [(2, steps(2, 2, human=True))]) == [False]
    assert c.status()["store_problem"] == "" and len(c.buffers.human) == 4


def test_log_segments_are_deleted_once_their_batches_are_stored(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durable, "SEGMENT_BYTES", 1)  # every record starts a new segment
    c = core(tmp_path)
    c.hello("a", SPEC)
    for seq in range(1, 21):
        ingest(c, "a", [(seq, steps(seq, 3, human=False))])
    segments = list((tmp_path / "out" / "store" / "log").glob("*.log"))
    assert len(segments) <= 1, segments  # only the one being written
    assert c.ingest.log.disk_bytes() < 2000 and len(c.store) == 60
