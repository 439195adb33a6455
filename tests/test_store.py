"""The learner's durable buffer store: exact replay, uncommitted tails, SIGKILL at random moments,
disk use bounded by the buffer capacities."""

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

import hilrl.buffers.store as store_module
from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.replay import DualBuffer, EpisodeAssembler, ReplayBuffer
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
    (tmp_path / "s" / "commit.json").write_text(json.dumps({**commit, "version": 99}))
    with pytest.raises(StoreError, match="version 99 is not supported"):
        BufferStore(tmp_path / "s", SPEC)


WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_store import SPEC, make_steps
import hilrl.buffers.store as store_module
from hilrl.buffers.store import BufferStore
store_module.CHUNK_BYTES = 1024  # 5 image rows per chunk file, so that compaction deletes files
store = BufferStore(Path({path!r}), SPEC, **{store_args})
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
        code = WRITER.format(tests=str(Path(__file__).parent), path=str(path), store_args={})
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # it runs (whatever the start-up time); now kill it at a random moment
        time.sleep(0.5 + rnd.random() * 1.5)
        proc.kill()
        out, _ = proc.communicate()
        printed = [int(line) for line in (first + out).split()]
        acked = max([acked, *printed])
        store = BufferStore(path, SPEC)  # opens cleanly after every kill
        assert store.last_seqs().get("arm", 0) >= acked  # everything acknowledged is there
        steps = [s for _, s in store.replay()]
        assert len(steps) == 5 * store.last_seqs()["arm"]  # and nothing half-written or doubled
        assert [s.episode for s in steps[::5]] == list(range(1, store.last_seqs()["arm"] + 1))
    assert acked > 5


def session(n_episodes: int, seed: int) -> list[tuple[str, Step | Discard]]:
    """Two actors' interleaved episodes with takeovers (human runs), timeouts, restarts and a discard."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, Step | Discard]] = []
    for ep in range(n_episodes):
        for actor in ("a", "b"):
            length = int(rng.integers(3, 12))
            human = rng.random() < 0.3
            for t in range(length):
                if rng.random() < 0.15:
                    human = not human
                last = t == length - 1
                o = {"x": rng.normal(size=2).astype(np.float32),
                     "cam": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)}
                final = {"x": rng.normal(size=2).astype(np.float32),
                         "cam": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)} if last else None
                restart = t == 2 and ep % 7 == 3  # the actor restarted: this episode never ends
                out.append((actor, Step(o, rng.normal(size=1).astype(np.float32), float(last), last and ep % 3 > 0,
                                        last and ep % 3 == 0, human, ep, t, final)))
                if restart:
                    break
        if ep % 11 == 5:
            out.append(("a", Discard(ep)))
    return out


def feed(buffers: DualBuffer, stream) -> None:
    """What LearnerCore._apply does with stored items."""
    asm = EpisodeAssembler()
    for source, item in stream:
        if isinstance(item, Discard):
            buffers.discard_episode(asm.discard(source, item.episode))
            continue
        for t in asm.add(source, item)[0]:
            buffers.add(t)


def live(buffer: ReplayBuffer) -> list[tuple]:
    """The buffer's live transitions, oldest first, as comparable bytes."""
    out = []
    for number in range(buffer.oldest, buffer.added):
        slot = np.asarray([number % buffer.capacity])
        g = buffer.gather(slot)
        out.append((bool(buffer.valid[slot[0]]), g["obs"]["cam"].tobytes(), g["obs"]["x"].tobytes(),
                    g["next_obs"]["cam"].tobytes(), g["action"].tobytes(), float(g["reward"][0]),
                    bool(g["terminated"][0]), bool(buffer.is_intervention[slot[0]])))
    return out


def test_disk_stays_bounded_and_resume_rebuilds_exactly_the_buffers(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 1024)  # 5 image rows per chunk file
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: None)  # durability is the SIGKILL tests' job
    caps = (10, 16)
    stream = session(50, seed=1)
    store = BufferStore(tmp_path / "s", SPEC, capacities=caps, compact_every=40, min_hole=1)
    original = DualBuffer(SPEC, *caps, frame_slack=1.0)  # frames never the limit: exact comparison
    sizes, batch, seqs = [], [], {"a": 0, "b": 0}
    for k, (source, item) in enumerate(stream):  # consecutive items of one actor form a batch: order kept
        batch.append(item)
        if k + 1 == len(stream) or stream[k + 1][0] != source or len(batch) == 20:
            seqs[source] += 1
            store.append(source, seqs[source], batch)
            batch = []
            if sum(seqs.values()) % 25 == 0:
                sizes.append(store.disk_bytes())
    # the store replays discards after the steps; so does a learner on --resume
    feed(original, [x for x in stream if isinstance(x[1], Step)] + [x for x in stream if isinstance(x[1], Discard)])
    n_steps = sum(isinstance(i, Step) for _, i in stream)
    assert n_steps > 10 * sum(caps) and store.commit["steps"] == n_steps
    assert len(store) < 3 * sum(caps)  # rows on disk: bounded by the capacities, not by the steps written
    image_files = list((tmp_path / "s" / "obs" / "cam" / "c").iterdir())
    assert len(image_files) < 3 * sum(caps) / 5 and max(sizes) < 1.5 * sizes[0]  # and so are the files
    resumed = DualBuffer(SPEC, *caps, frame_slack=1.0)
    feed(resumed, BufferStore(tmp_path / "s", SPEC, capacities=caps).replay())
    assert len(original.human) > 0 and len(original.policy) > 0
    assert live(resumed.human) == live(original.human) and live(resumed.policy) == live(original.policy)

    # readers of the raw arrays (hilrl plot-q) skip freed rows: whole episodes only, exactly as written
    from hilrl.deploy.plot_q import read_store_episodes

    written: dict[tuple[str, int], list[Step]] = {}
    for source, item in stream:
        if isinstance(item, Step):
            written.setdefault((source, item.episode), []).append(item)
    discarded = {(source, item.episode) for source, item in stream if isinstance(item, Discard)}
    _, episodes = read_store_episodes(tmp_path / "s")
    assert len(episodes) > 3 and len(episodes) < 100  # some episodes were freed, some kept
    for e in episodes:
        source, _, ep = e.name.split()
        steps = written[(source, int(ep))]
        assert (source, int(ep)) not in discarded and (steps[-1].terminated or steps[-1].truncated)
        np.testing.assert_array_equal(e.actions, np.stack([st.action for st in steps]))
        np.testing.assert_array_equal(e.states, np.stack([st.obs["x"] for st in steps]))


def test_sigkill_during_compaction_keeps_every_acknowledged_batch_and_no_deleted_row(tmp_path: Path) -> None:
    rnd = random.Random(1)
    path = tmp_path / "s"
    acked, args = 0, {"capacities": (4, 4), "compact_every": 5, "min_hole": 2}
    for _ in range(4):
        code = WRITER.format(tests=str(Path(__file__).parent), path=str(path), store_args=args)
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # it runs (whatever the start-up time); now kill it at a random moment
        time.sleep(0.5 + rnd.random() * 1.5)
        proc.kill()
        out, _ = proc.communicate()
        acked = max([acked, *(int(line) for line in (first + out).split())])
        store = BufferStore(path, SPEC, **args)  # opens cleanly after every kill
        last = store.last_seqs().get("arm", 0)
        assert last >= acked
        steps = [s for _, s in store.replay()]
        for s in steps:  # every replayed row is the row written, none from a deleted chunk
            expected = make_steps(s.episode, 5)[s.step]
            assert s.obs["cam"].tobytes() == expected.obs["cam"].tobytes() and s.action == expected.action
        assert [(s.episode, s.step) for s in steps[-10:]] == [(e, t) for e in (last - 1, last) for t in range(5)]
        assert len(store) <= 60  # bounded: 4 + 4 transitions, not 5 rows per batch written
    assert acked > 8 and store.holes and len(list((path / "obs" / "cam" / "c").iterdir())) < 15
