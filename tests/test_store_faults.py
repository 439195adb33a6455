"""A store append is all or nothing: a value that does not fit, a write failing part-way (ENOSPC at a chosen
array) and a failing commit-record write each leave the arrays at the committed length, on disk and in memory;
a reopened store reads exactly the committed rows, and later appends (the actor's resend included) land on
aligned rows, each stored once."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import ingest
from test_learner_core import SPEC as CORE_SPEC
from test_learner_core import core
from test_learner_core import steps as core_steps
from test_store import SPEC, make_steps

import hilrl.buffers.store as store_module
import hilrl.learner.ingest as ingest_module
from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.store import BufferStore


def content(step: Step) -> tuple:
    """Everything a stored step carries (arrays hashed): misaligned rows show up as a different value."""
    digest = hashlib.sha256(step.action.astype(np.float32).tobytes())
    for obs in (step.obs, step.final_obs or {}):
        for name in sorted(obs):
            digest.update(name.encode() + np.ascontiguousarray(obs[name]).tobytes())
    return step.episode, step.step, step.is_intervention, float(np.float32(step.reward)), step.terminated, \
        digest.hexdigest()


def assert_consistent(store: BufferStore, expected: list[tuple[str, Step]]) -> None:
    """The arrays (in memory and on disk) end at the commit, and a reopened store replays `expected`."""
    n, e = store.commit["steps"], store.commit["finals"]
    on_disk = zarr.open_group(str(store.path), mode="r")
    for name, arr in store.table.arrays():
        rows = e if name.startswith("final") else n
        assert arr.shape[0] == rows, f"{name}: {arr.shape[0]} rows in memory, the commit says {rows}"
        assert on_disk[name].shape[0] == rows, f"{name}: {on_disk[name].shape[0]} rows on disk, the commit says {rows}"
    reopened = BufferStore(store.path, SPEC)
    got = [(src, content(s)) for src, s in reopened.replay() if isinstance(s, Step)]
    assert got == [(src, content(s)) for src, s in expected]


def fail_writes_to(monkeypatch: pytest.MonkeyPatch, array: str) -> list[str]:
    """Every chunk write of `array` raises ENOSPC (a disk that fills up part-way through an append)."""
    failed: list[str] = []
    original = store_module._DurableLocalStore.set

    async def set_(self, key, value):
        if key.startswith(f"{array}/c"):
            failed.append(key)
            raise OSError(errno.ENOSPC, "No space left on device", key)
        await original(self, key, value)

    monkeypatch.setattr(store_module._DurableLocalStore, "set", set_)
    return failed


def test_an_episode_beyond_int64_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "s", SPEC)
    first = make_steps(0, 4)
    store.append("a", 1, first)
    bad = make_steps(1, 10)
    bad[6].episode = 2**63  # uint64 on the wire, int64 in the store: the remote trigger
    with pytest.raises(ValueError, match=r"item 6: episode 9223372036854775808 does not fit"):
        store.append("a", 2, bad)
    assert store.last_seqs() == {"a": 1}
    assert_consistent(store, [("a", s) for s in first])
    later = make_steps(2, 10)
    store.append("a", 2, later)
    assert_consistent(store, [("a", s) for s in first + later])


@pytest.mark.parametrize("array", ["obs/cam", "episode", "final/x"])
def test_a_write_failing_part_way_is_rolled_back_and_the_resend_lands_aligned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, array: str) -> None:
    store = BufferStore(tmp_path / "s", SPEC)
    first = make_steps(7, 4)
    store.append("a", 1, first)
    batch = [*make_steps(7, 6, start=4), Discard(5)]  # ends episode 7: final rows too (and non-zero chunks:
    # zarr writes no chunk that is all fill value)
    with monkeypatch.context() as m:
        failed = fail_writes_to(m, array)
        with pytest.raises(OSError) as info:
            store.append("a", 2, batch)
        assert info.value.errno == errno.ENOSPC and failed
    assert store.last_seqs() == {"a": 1} and store.commit["discards"] == []
    assert_consistent(store, [("a", s) for s in first])
    store.append("a", 2, batch)  # the actor resends the batch once the disk has room again
    store.append("b", 1, make_steps(3, 10))
    assert_consistent(store, [("a", s) for s in first + batch[:-1]] + [("b", s) for s in make_steps(3, 10)])
    assert store.commit["discards"] == [["a", 5]]


def fail_commit_write(monkeypatch: pytest.MonkeyPatch, after_rename: bool) -> None:
    """The next commit-record write fails: before the new record replaces the old one, or after (its directory
    fsync fails), once."""
    original = store_module.atomic_write
    armed = [True]

    def atomic_write(path: Path, data: bytes) -> None:
        if path.name == "commit.json" and armed[0]:
            armed[0] = False
            if after_rename:
                original(path, data)
            raise OSError(errno.EIO, "Input/output error", str(path))
        original(path, data)

    monkeypatch.setattr(store_module, "atomic_write", atomic_write)


@pytest.mark.parametrize("after_rename", [False, True], ids=["before-rename", "after-rename"])
def test_a_failed_store_commit_after_the_ack_is_retried_and_stores_the_batch_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, after_rename: bool) -> None:
    """Through the ingest path, as the service calls it: the batch is acknowledged once it is in the ingest log; the
    writer's failed store commit is logged and retried from what it holds, and the batch is stored once (also when
    the failed commit did reach the disk); the actor's resend is a duplicate."""
    monkeypatch.setattr(ingest_module, "RETRY_S", 0.05)
    c = core(tmp_path)
    c.hello("a", CORE_SPEC)
    first, second = core_steps(0, 3, human=True), core_steps(1, 4, human=True)
    assert ingest(c, "a", [(1, first)])[0] is False
    fail_commit_write(monkeypatch, after_rename)
    assert ingest(c, "a", [(2, second)])[0] is False  # acknowledged from the log; stored by the writer's retry
    assert "not storing" in caplog.text and "Input/output error" in caplog.text
    assert ingest(c, "a", [(2, second)]) == [True]  # the actor's resend
    assert ingest(c, "a", [(3, core_steps(2, 2, human=True))])[0] is False
    assert c.status()["store_problem"] == ""
    store = c.store
    n = store.commit["steps"]
    assert n == 9 and all(arr.shape[0] == (store.commit["finals"] if name.startswith("final") else n)
                          for name, arr in store.table.arrays())
    stored = [(s.episode, s.step) for _, s in BufferStore(store.path, CORE_SPEC).replay() if isinstance(s, Step)]
    assert stored == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1)]
    assert c.status()["buffers"]["human"]["size"] == 9 and c.status()["actors"][0]["last_acked_seq"] == 3
