"""The on-disk step formats do not change: a tiny learner store and a tiny recording written by commit 6fa8472
(before the step table was shared) are read back exactly, and writing the same steps today gives the same files.

Regenerate the fixture only on purpose (a format change), with the commit that defines the format:
`python tests/test_step_format.py tests/data/format-<commit>`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import zarr

from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.recording import StepRecorder, read_steps
from hilrl.buffers.spec import Feature, Spec
from hilrl.buffers.store import BufferStore, read_store

FIXTURE = Path(__file__).parent / "data" / "format-6fa8472"
SPEC = Spec(observation=(Feature("x", "float32", (3,)), Feature("cam", "uint8", (4, 4, 3))),
            action=Feature("action", "float32", (2,), (-1, -1), (1, 1)))


def episode(ep: int, n: int, ends: str = "terminated", start: int = 0) -> list[Step]:
    rng = np.random.default_rng(ep * 100 + start)
    out = []
    for t in range(start, start + n):
        last = t == start + n - 1 and ends != "open"
        o = {"x": rng.normal(size=3).astype(np.float32), "cam": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)}
        f = {"x": rng.normal(size=3).astype(np.float32), "cam": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)}
        out.append(Step(o, rng.normal(size=2).astype(np.float32), float(last and ends == "terminated"),
                        last and ends == "terminated", last and ends == "truncated", bool(t % 3 == 0), ep, t,
                        f if last else None))
    return out


def store_batches() -> list[tuple[str, int, list[Step | Discard]]]:
    """Two interleaved actors, a discarded episode, a restart mid-episode and an open tail."""
    a0, a1, a2 = episode(0, 30), episode(1, 25, "truncated"), episode(2, 6, "open")
    b0, b1 = episode(10, 12, "open"), episode(11, 40)
    return [("arm-a", 1, a0[:20]), ("arm-b", 1, b0), ("arm-a", 2, a0[20:] + a1[:5]), ("arm-b", 2, b1[:30]),
            ("arm-a", 3, a1[5:] + [Discard(1)]), ("arm-b", 3, b1[30:]), ("arm-a", 4, a2)]


def recording_steps() -> list[Step]:
    return episode(0, 9) + episode(1, 7, "truncated") + episode(2, 5)


def write(root: Path) -> None:
    """The fixture: a bounded store (compacted, so it has holes) and a recording spanning several chunks."""
    store = BufferStore(root / "store", SPEC, capacities=(8, 8), compact_every=40, min_hole=4)
    for source, seq, items in store_batches():
        store.append(source, seq, items, instance=f"{source}-state")
    with StepRecorder(root / "recording.zarr", SPEC, chunk_steps=8) as rec:
        for s in recording_steps():
            rec.add(s)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def same_step(a: Step, b: Step) -> None:
    assert (a.episode, a.step, a.reward, a.terminated, a.truncated, a.is_intervention) == (
        b.episode, b.step, b.reward, b.terminated, b.truncated, b.is_intervention)
    np.testing.assert_array_equal(a.action, b.action)
    for got, want in ((a.obs, b.obs), (a.final_obs, b.final_obs)):
        assert (got is None) == (want is None)
        for k in want or ():
            assert got[k].dtype == want[k].dtype and got[k].tobytes() == want[k].tobytes()


def test_todays_code_writes_the_fixture_byte_for_byte(tmp_path: Path) -> None:
    write(tmp_path)
    old, new = files(FIXTURE), files(tmp_path)
    assert sorted(new) == sorted(old)  # array names, chunk files, hole lists, commit record
    for name in old:
        if name.endswith(".json"):
            assert json.loads(new[name]) == json.loads(old[name]), name  # dtypes, chunking, attrs
        else:
            assert new[name] == old[name], name


def test_old_recording_reads_back_exactly() -> None:
    spec, steps = read_steps(FIXTURE / "recording.zarr")
    assert spec == SPEC
    want = recording_steps()
    got = list(steps)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        same_step(a, b)


def test_old_store_reopens_and_replays_what_compaction_kept(tmp_path: Path) -> None:
    g = zarr.open_group(str(FIXTURE / "store"), mode="r")
    assert g.attrs["format"] == "hilrl-store" and g["obs/cam"].dtype == np.uint8 and g["source"].dtype == np.int32
    spec, items, discarded = read_store(FIXTURE / "store")
    assert spec == SPEC and discarded == {("arm-a", 1)}
    sent = {(src, s.episode, s.step): s for src, _, batch in store_batches() for s in batch if isinstance(s, Step)}
    got = list(items)
    assert 0 < len(got) < len(sent)  # compaction freed rows
    for src, s in got:
        same_step(s, sent[(src, s.episode, s.step)])
    import shutil

    shutil.copytree(FIXTURE / "store", tmp_path / "store")
    reopened = BufferStore(tmp_path / "store", SPEC, capacities=(8, 8), compact_every=40, min_hole=4)
    assert reopened.last_seqs() == {"arm-a": 4, "arm-b": 3}
    assert [(src, s.episode, s.step) for src, s in reopened.replay() if isinstance(s, Step)] == [
        (src, s.episode, s.step) for src, s in got]


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=False)
    write(out)
    print(f"wrote {out}")
