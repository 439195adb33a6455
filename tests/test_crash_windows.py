"""Crash windows (issue 14, defect 7): a kill (SIGKILL in a forked child, at a chosen point) or a failed write
between two steps of an update leaves state from which every step is stored exactly once, and resumes with the
counters that belong to it."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from test_learner_core import SPEC as CORE_SPEC
from test_learner_core import core
from test_store import SPEC, make_steps

import hilrl.buffers.durable as durable
from hilrl.actor.outbox import ITEM_OVERHEAD, JOURNAL, SEND_MARGIN, Outbox, StateDir
from hilrl.buffers.store import BufferStore
from hilrl.learner.actors import ReservedActorId
from hilrl.protos.v1 import learner_pb2 as pb


def item(i: int) -> pb.Item:
    return pb.Item(discard=pb.DiscardEpisode(episode=i))


def episodes(box: Outbox) -> list[int]:
    """The items of every pending batch, in seq order (each is an episode number)."""
    return [i.discard.episode for b in box.pending_after(0, timeout=0) for i in b.items]


def killed_in(work: Callable[[], None]) -> None:
    """Run `work` in a forked child, which SIGKILLs itself where `work` patched it to; the child must die so."""
    proc = multiprocessing.get_context("fork").Process(target=work)
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_kill_between_the_batch_rename_and_the_journal_delete_stores_nothing_twice(tmp_path: Path) -> None:
    def work() -> None:
        box = Outbox(tmp_path)
        for i in (1, 2, 3):
            box.stage(item(i))
        box._clear_journal = die  # the batch file is in place, the journal still holds its items
        box.put(pb.TransitionBatch(actor_id="a", items=[item(1), item(2), item(3)]))

    killed_in(work)
    assert (tmp_path / JOURNAL).exists()
    box = Outbox(tmp_path)
    assert box.recover_journal("a") == 0 and not (tmp_path / JOURNAL).exists()
    assert episodes(box) == [1, 2, 3]
    box.stage(item(4))
    assert box.put(pb.TransitionBatch(actor_id="a", items=[item(4)])) == 2


def test_a_kill_between_the_parts_of_a_split_batch_keeps_each_item_once(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import hilrl.actor.outbox as outbox_module

    real = outbox_module.atomic_write

    def work() -> None:
        box = Outbox(tmp_path)
        header = pb.TransitionBatch(actor_id="a").ByteSize()
        box.message_limit = SEND_MARGIN + header + 2 * (item(1).ByteSize() + ITEM_OVERHEAD)  # two items a part
        for i in range(1, 6):
            box.stage(item(i))
        calls = [0]

        def write(path: Path, data: bytes) -> None:
            calls[0] += 1
            if calls[0] == 2:  # part 1 is durable, part 2 is not
                die()
            real(path, data)

        monkeypatch.setattr(outbox_module, "atomic_write", write)
        box.put(pb.TransitionBatch(actor_id="a", items=[item(i) for i in range(1, 6)]))

    killed_in(work)
    box = Outbox(tmp_path)
    assert episodes(box) == [1, 2]
    assert box.recover_journal("a") == 3
    assert episodes(box) == [1, 2, 3, 4, 5]


def test_ack_replaces_acked_json_before_it_deletes_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = Outbox(tmp_path)
    for i in (1, 2):
        box.put(pb.TransitionBatch(actor_id="a", items=[item(i)]))
    real = Path.unlink

    def work() -> None:
        def unlink(self: Path, missing_ok: bool = False) -> None:
            real(self, missing_ok=missing_ok)
            if self.name == f"{2:012d}.batch":  # both acknowledged batches are gone
                die()

        monkeypatch.setattr(Path, "unlink", unlink)
        box.ack(2)

    killed_in(work)
    reopened = Outbox(tmp_path)
    assert len(reopened) == 0 and reopened.last_acked == 2
    # seq 1 or 2 again would be taken for a duplicate by the learner, and the steps dropped
    assert reopened.put(pb.TransitionBatch(actor_id="a", items=[item(3)])) == 3


def test_acked_and_actor_json_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = durable.fsync_path
    monkeypatch.setattr(durable, "fsync_path", lambda p: (synced.append(Path(p).name), real(p))[1])
    state = StateDir(tmp_path / "state", "a")
    state.take_episode_index()
    box = Outbox(tmp_path / "state" / "outbox")
    box.put(pb.TransitionBatch(actor_id="a", items=[item(1)]))
    box.ack(1)
    assert {"actor.json.tmp", "acked.json.tmp", "state", "outbox"} <= set(synced)  # file, then its directory


def test_a_checkpoint_carries_its_own_learner_state(tmp_path: Path) -> None:
    from hilrl.learner.training import Trainer

    c = core(tmp_path, hidden=(16, 16))
    c.hello("a", CORE_SPEC)
    trainer = Trainer(c)
    trainer._build()
    c.learner_step = 10
    trainer.checkpoint()
    c.learner_step, c.stage = 20, "online"
    saved = c.save_state
    c.save_state = lambda path=None: saved(path) if path is not None else None  # the run's own file: not written
    trainer.checkpoint()  # as if killed after the checkpoint was renamed, before learner_state.json was replaced
    assert json.loads((tmp_path / "out" / "learner_state.json").read_text())["learner_step"] == 10
    resumed = core(tmp_path, hidden=(16, 16), resume=True)
    assert resumed.learner_step == 20 and resumed.stage == "online"  # the counters of the weights it loads
    assert trainer.run_dir.latest_checkpoint().name == "step-000000020"


def test_actor_ids_in_the_dataset_namespace_are_refused_at_hello(tmp_path: Path) -> None:
    c = core(tmp_path)
    with pytest.raises(ReservedActorId, match="dataset:.*another --actor-id"):
        c.hello("dataset:arm", CORE_SPEC)
    c.hello("arm-dataset:1", CORE_SPEC)  # only the prefix is reserved


def test_a_failed_compaction_commit_leaves_the_store_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = {"capacities": (4, 4), "compact_every": 10**6, "min_hole": 1}
    store = BufferStore(tmp_path / "s", SPEC, **args)
    for seq in range(1, 9):
        store.append("arm", seq, make_steps(seq, 5))
    before, holes = dict(store.commit), list(store.holes)

    def fail(commit: dict | None = None) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write_commit", fail)
    with pytest.raises(OSError):
        store.compact()
    assert store.commit == before and store.holes == holes
    monkeypatch.undo()
    store.append("arm", 9, make_steps(9, 5))  # writes the commit record from memory: still the old holes
    assert json.loads((tmp_path / "s" / "commit.json").read_text())["holes"] == before["holes"]
    assert store.compact() > 0
    reopened = BufferStore(tmp_path / "s", SPEC, **args)
    assert reopened.holes == store.holes and reopened.last_seqs() == {"arm": 9}
    assert [(s.episode, s.step) for _, s in reopened.replay()][-5:] == [(9, t) for t in range(5)]
