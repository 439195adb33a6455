"""The learner's durable buffer store: exact replay, uncommitted tails, SIGKILL at random moments."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.spec import Feature, Spec
from hilrl.buffers.store import BufferStore, StoreError

SPEC = Spec(observation=(Feature("x", "float32", (2,)), Feature("cam", "uint8", (8, 8, 3))),
            action=Feature("action", "float32", (1,), (-1,), (1,)))


def make_steps(episode: int, n: int, start: int = 0) -> list[Step]:
    rng = np.random.default_rng(episode * 1000 + start)
    out = []
    for t in range(start, start + n):
        last = t == 9
        o = {"x": rng.normal(size=2).astype(np.float32), "cam": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)}
        out.append(Step(o, rng.normal(size=1).astype(np.float32), float(last), last, False, t < 3, episode, t,
                        dict(o) if last else None))
    return out


def test_replay_returns_exactly_what_was_committed_in_order(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "s", SPEC)
    a, b = make_steps(0, 10), make_steps(0, 4)
    store.append("arm-a", 1, a[:5])
    store.append("arm-b", 1, b)
    store.append("arm-a", 2, a[5:] + [Discard(7)])
    reopened = BufferStore(tmp_path / "s", SPEC)
    got = list(reopened.replay())
    expected = [("arm-a", s) for s in a[:5]] + [("arm-b", s) for s in b] + [("arm-a", s) for s in a[5:]]
    assert len(got) == len(expected) + 1 and got[-1] == ("arm-a", Discard(7))
    for (src, s), (esrc, e) in zip(got, expected, strict=False):
        assert src == esrc and (s.episode, s.step, s.is_intervention, s.reward) == (e.episode, e.step,
                                                                                    e.is_intervention, e.reward)
        assert s.obs["cam"].tobytes() == e.obs["cam"].tobytes() and s.obs["cam"].dtype == np.uint8
        np.testing.assert_array_equal(s.action, e.action)
        assert (s.final_obs is None) == (e.final_obs is None)
    assert reopened.last_seqs() == {"arm-a": 2, "arm-b": 1}


def test_rows_past_the_last_commit_are_dropped_on_open(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "s", SPEC)
    store.append("a", 1, make_steps(0, 3))
    g = zarr.open_group(str(tmp_path / "s"), mode="r+")  # a crash after writing rows, before the commit
    g["action"].append(np.zeros((5, 1), np.float32))
    g["obs/cam"].append(np.zeros((5, 8, 8, 3), np.uint8))
    reopened = BufferStore(tmp_path / "s", SPEC)
    assert len(reopened) == 3 and reopened.group["action"].shape[0] == 3 and reopened.group["obs/cam"].shape[0] == 3
    reopened.append("a", 2, make_steps(0, 2, start=3))
    assert [s.step for _, s in BufferStore(tmp_path / "s", SPEC).replay()] == [0, 1, 2, 3, 4]


def test_unknown_version_and_other_spec_are_refused(tmp_path: Path) -> None:
    BufferStore(tmp_path / "s", SPEC)
    other = Spec(observation=(Feature("x", "float32", (3,)),), action=SPEC.action)
    with pytest.raises(StoreError, match="stored spec differs"):
        BufferStore(tmp_path / "s", other)
    commit = json.loads((tmp_path / "s" / "commit.json").read_text())
    (tmp_path / "s" / "commit.json").write_text(json.dumps({**commit, "version": 2}))
    with pytest.raises(StoreError, match="version 2 is not supported"):
        BufferStore(tmp_path / "s", SPEC)


WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_store import SPEC, make_steps
from hilrl.buffers.store import BufferStore
store = BufferStore(Path({path!r}), SPEC)
seq = max(store.last_seqs().values(), default=0)
while True:
    seq += 1
    store.append("arm", seq, make_steps(seq, 5))
    print(seq, flush=True)  # acknowledged
"""


def test_sigkill_at_random_moments_never_loses_an_acknowledged_batch(tmp_path: Path) -> None:
    rnd = random.Random(0)
    path = tmp_path / "s"
    acked = 0
    for _ in range(5):
        code = WRITER.format(tests=str(Path(__file__).parent), path=str(path))
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5 + rnd.random() * 1.5)
        proc.kill()
        out, _ = proc.communicate()
        printed = [int(line) for line in out.split()]
        acked = max([acked, *printed])
        store = BufferStore(path, SPEC)  # opens cleanly after every kill
        assert store.last_seqs().get("arm", 0) >= acked  # everything acknowledged is there
        steps = [s for _, s in store.replay()]
        assert len(steps) == 5 * store.last_seqs()["arm"]  # and nothing half-written or doubled
        assert [s.episode for s in steps[::5]] == list(range(1, store.last_seqs()["arm"] + 1))
    assert acked > 5
