"""The learner's durable buffer store: every received step, on disk before it is acknowledged.

A zarr v3 group (`<output-dir>/store/`) holds the step stream exactly as actors sent it, in arrival
order (same per-step arrays as `buffers.recording`, plus `source`: which actor or dataset sent it).
Appending a batch is two phases:

1. the batch's rows are appended past the committed length and fsynced;
2. `commit.json` — committed row counts, the `(actor_id, seq)` record of every source and the
   discarded episodes — is replaced atomically (write, fsync, rename, fsync directory).

Only then may the batch be acknowledged. A crash at any moment leaves the previous commit intact;
rows past it are truncated when the store is opened again, so the store never holds a step twice
or a step whose batch was not acknowledged as stored. `--resume` replays the store through the
assembler to rebuild both buffers.

Bounded disk use (given the buffer capacities). Every `compact_every` stored steps the store works
out, from its own rows and with the assembler's pairing rule, which rows the buffers can still
hold: the newest `capacity` (+ a margin: one per discard) transitions of each side, the row after
each of them (its next observation) and each source's last row (still waiting for its successor).
Every run of at least `min_hole` other rows becomes a *hole*: the hole list goes to a new immutable
`holes-<n>.json` (fsynced), the commit that names it is replaced atomically, and only then are the
chunk files lying wholly inside holes deleted (again on every open, so a crash in between only
leaves garbage that the next open removes). Replay skips holes. Dead rows outside holes are
replayed; their transitions are count-dead (at least `capacity` newer ones of their side follow),
so the rings evict them again and `--resume` rebuilds the same buffer contents. One caveat: when a
buffer's frame ring rather than its transition ring is the limit (very short human/policy runs, see
`buffers.replay`), frames shared with a deleted predecessor are written anew, which can retire one
more of the oldest transitions than before the restart.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.durable import atomic_write, fsync_path, temp_path
from hilrl.buffers.spec import Spec, check_array

log = logging.getLogger(__name__)

FORMAT = "hilrl-store"
VERSION = 2  # 2 added holes (bounded disk use); version 1 stores open and become version 2
READABLE = (1, 2)
CHUNK_BYTES = 1 << 20
SCALARS = {"reward": "float32", "terminated": "bool", "truncated": "bool", "is_intervention": "bool",
           "episode": "int64", "step": "int64", "source": "int32"}


class StoreError(RuntimeError):
    """The store cannot be used as it is; the text says why and what to do."""


class StoreInputError(ValueError):
    """A batch that can never be stored (a value out of range, or not what the spec says); nothing was written."""


class _DurableLocalStore(LocalStore):
    """LocalStore that remembers which files it wrote, so a commit can fsync exactly those."""

    def __init__(self, root: Path, read_only: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self.touched: set[str] = set()

    async def set(self, key: str, value: Any) -> None:
        await super().set(key, value)
        self.touched.add(key)

    def sync(self) -> None:
        dirs = set()
        for key in self.touched:
            path = Path(self.root) / key
            try:
                fsync_path(path)
            except FileNotFoundError:  # deleted since (a failed append's chunk past the commit): nothing to keep
                continue
            dirs.add(path.parent)
        for d in dirs:
            fsync_path(d)
        self.touched.clear()


def _chunk_rows(row_bytes: int) -> int:
    return int(max(1, min(4096, CHUNK_BYTES // max(row_bytes, 1))))


class BufferStore:
    """The durable step store; `capacities=(human, policy)` bounds its disk use (None keeps every step)."""

    def __init__(self, path: str | Path, spec: Spec, capacities: tuple[int, int] | None = None,
                 compact_every: int | None = None, min_hole: int = 64) -> None:
        self.path = Path(path)
        self.spec = spec
        self.capacities = capacities
        self.compact_every = compact_every or (max(1024, sum(capacities) // 8) if capacities else 0)
        self.min_hole = max(1, min_hole)
        fresh = not (self.path / "commit.json").exists()
        self._store = _DurableLocalStore(self.path)
        if fresh:
            self._create()
            self.commit = {"format": FORMAT, "version": VERSION, "steps": 0, "finals": 0, "sources": [],
                           "actors": {}, "discards": [], "holes": None}
            self._write_commit()
        else:
            self.commit = json.loads((self.path / "commit.json").read_text())
            self._check_compatible()
            self.commit["version"] = VERSION
            self.commit.setdefault("holes", None)
        self.group = zarr.open_group(store=self._store, mode="r+")
        self.holes, self.final_holes = _load_holes(self.path, self.commit)
        self._truncate_uncommitted()
        self._collect_garbage()
        self._since_compact = 0

    # ------------------------------------------------------------------ layout

    def _create(self) -> None:
        # Start over from what a creation cut short left, keeping the directory itself: it may be a mount point
        # (the store on a disk of its own), which zarr's mode "w" would try to remove.
        for leftover in self.path.iterdir() if self.path.is_dir() else ():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        g = zarr.open_group(store=self._store, mode="w-")
        g.attrs.update({"format": FORMAT, "version": VERSION, "spec": self.spec.to_dict()})
        for f in self.spec.observation:
            row = f.size * np.dtype(f.dtype).itemsize
            for prefix in ("obs", "final"):
                g.create_array(f"{prefix}/{f.name}", shape=(0, *f.shape), chunks=(_chunk_rows(row), *f.shape),
                               dtype=f.dtype)
        g.create_array("action", shape=(0, self.spec.action_dim), chunks=(4096, self.spec.action_dim),
                       dtype="float32")
        for name, dtype in {**SCALARS, "final_index": "int64"}.items():
            g.create_array(name, shape=(0,), chunks=(4096,), dtype=dtype)
        self._store.sync()

    def _check_compatible(self) -> None:
        _check_commit(self.path, self.commit)
        stored = Spec.from_dict(zarr.open_group(store=self._store, mode="r").attrs["spec"])
        if problem := stored.mismatch(self.spec):
            raise StoreError(f"{self.path}: stored spec differs from the learner's: {problem}")

    def _truncate_uncommitted(self) -> None:
        """Drop rows a crash left past the last commit (they were never acknowledged)."""
        n, e = self.commit["steps"], self.commit["finals"]
        for name, arr in self._arrays():
            rows = e if name.startswith("final") else n
            if arr.shape[0] != rows:
                arr.resize((rows, *arr.shape[1:]))

    def _arrays(self) -> Iterator[tuple[str, zarr.Array]]:
        for f in self.spec.observation:
            yield f"obs/{f.name}", self.group[f"obs/{f.name}"]
            yield f"final/{f.name}", self.group[f"final/{f.name}"]
        for name in ("action", *SCALARS, "final_index"):
            yield name, self.group[name]

    # ------------------------------------------------------------------ writing

    def last_seqs(self) -> dict[str, int]:
        """The highest committed batch seq of every source."""
        return {k: int(v["last_seq"]) for k, v in self.commit["actors"].items()}

    def instances(self) -> dict[str, str]:
        """The state-directory identity each actor source's batches came from (where the actor said it)."""
        return {k: v["instance"] for k, v in self.commit["actors"].items() if v.get("instance")}

    def append(self, source: str, seq: int, items: list[Step | Discard], instance: str = "") -> None:
        """Durably store one batch and its `(source, seq)` record (with the sending actor's `instance`, if given);
        returns once it is committed.

        All or nothing: the items are checked against the spec first (`StoreInputError`, nothing touched),
        the rows are written at the committed length of every array and fsynced, and only then is the
        commit record replaced. If anything fails (an `OSError` such as ENOSPC, ...) every array is cut
        back to the committed length and the in-memory commit stays the one on disk, so a resend of the
        batch is stored once, at the right rows."""
        rows, finals, discards = _prepare(self.spec, source, seq, items)
        sources = list(self.commit["sources"])
        if source not in sources:
            sources.append(source)
        sid = sources.index(source)
        n, e = self.commit["steps"], self.commit["finals"]
        if rows:
            rows["source"] = np.full(len(rows["step"]), sid, dtype=np.int32)
        if finals:
            finals["final_index"] = finals["final_index"] + n
        new = {**self.commit, "sources": sources, "steps": n + len(rows.get("step", ())),
               "finals": e + len(finals.get("final_index", ())),
               "discards": [*self.commit["discards"], *([source, d] for d in discards)],
               "actors": {**self.commit["actors"], source: {"last_seq": seq, **({"instance": instance} if instance
                                                                                   else {})}}}
        try:
            if rows:
                for name, values in rows.items():
                    _put_rows(self.group[name], n, values)
                for name, values in finals.items():
                    _put_rows(self.group[name], e, values)
                self._store.sync()
            self._write_commit(new)
        except BaseException:
            self._roll_back(new)
            raise
        self.commit = new
        self._since_compact += len(rows.get("step", ()))
        if self.capacities and self._since_compact >= self.compact_every:
            try:  # the batch is committed: a failed compaction must not make it look unstored
                self.compact()
            except Exception:
                log.exception("%s: compaction failed; the store stays correct, only larger (retried later)",
                              self.path)

    def _roll_back(self, attempted: dict) -> None:
        """After a failed append: if the new commit record did reach the disk (only its directory fsync
        failed) it stands (`last_seqs` shows it, so a resend is a duplicate); otherwise every array is cut
        back to the commit."""
        try:
            on_disk = json.loads((self.path / "commit.json").read_text())
        except (OSError, ValueError):
            on_disk = None
        if on_disk == attempted:
            self.commit = attempted
            return
        temp_path(self.path / "commit.json").unlink(missing_ok=True)
        try:
            self._truncate_uncommitted()
        except Exception as exc:  # noqa: BLE001 - the next append writes at the committed rows all the same
            log.warning("%s: could not cut the arrays back to the last commit yet (%s); the next append and the "
                        "next open do it", self.path, exc)

    def _write_commit(self, commit: dict | None = None) -> None:
        atomic_write(self.path / "commit.json", json.dumps(self.commit if commit is None else commit).encode())

    # ------------------------------------------------------------------ bounding disk use

    def needed_rows(self) -> np.ndarray:
        """Sorted row numbers the buffers may still hold (see the module docstring); needs capacities."""
        assert self.capacities is not None
        rows = _kept_rows(self.commit["steps"], self.holes)
        cols = {name: self.group[name] for name in ("source", "episode", "step", "is_intervention", "terminated",
                                                    "truncated")}
        margin = len(self.commit["discards"]) + 1
        keep = [deque(maxlen=c + margin) for c in self.capacities]  # (row, successor row), newest last
        pending: dict[int, tuple[int, int, int, bool]] = {}
        for start, stop in _blocks(rows):
            v = {k: a[start:stop] for k, a in cols.items()}
            for j in range(stop - start):
                row, sid, ep, t = start + j, int(v["source"][j]), int(v["episode"][j]), int(v["step"][j])
                human = bool(v["is_intervention"][j])
                p = pending.pop(sid, None)
                if p is not None and p[1] == ep and t == p[2] + 1:
                    keep[0 if p[3] else 1].append((p[0], row))
                if v["terminated"][j] or v["truncated"][j]:
                    keep[0 if human else 1].append((row, row))
                else:
                    pending[sid] = (row, ep, t, human)
        needed = {r for side in keep for pair in side for r in pair} | {p[0] for p in pending.values()}
        return np.asarray(sorted(needed), dtype=np.int64)

    def compact(self) -> int:
        """Turn rows the buffers can no longer hold into holes and delete their chunks; returns rows freed."""
        self._since_compact = 0
        n = self.commit["steps"]
        needed = self.needed_rows()
        bounds = np.concatenate([[-1], needed, [n]])
        fresh = [(int(a) + 1, int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
                 if b - a - 1 >= self.min_hole]
        holes = _merge([*self.holes, *fresh])
        freed = _count(holes) - _count(self.holes)
        if freed <= 0:
            return 0
        final_index = self.group["final_index"][: self.commit["finals"]]
        dead = _in_holes(final_index, holes)
        final_holes = _runs(np.flatnonzero(dead))
        generation = int(self.commit.get("holes_generation", 0)) + 1
        name = f"holes-{generation:06d}.json"
        atomic_write(self.path / name, json.dumps({"rows": holes, "finals": final_holes}).encode())
        old = self.commit.get("holes")
        commit = {**self.commit, "holes": name, "holes_generation": generation}
        self._write_commit(commit)  # the commit point: from here on these rows are gone (a failure: still here)
        self.commit, self.holes, self.final_holes = commit, holes, final_holes
        if old:
            (self.path / old).unlink(missing_ok=True)
        self._collect_garbage()
        return freed

    def _collect_garbage(self) -> None:
        """Delete chunk files wholly inside holes and hole lists no commit names (idempotent)."""
        for name in os.listdir(self.path):
            if name.startswith("holes-") and name != self.commit.get("holes"):
                (self.path / name).unlink(missing_ok=True)
        if not self.holes:
            return
        for name, arr in self._arrays():
            holes = self.final_holes if name.startswith("final") else self.holes
            if not holes:
                continue
            rows = arr.chunks[0]
            chunk_dir = self.path / arr.path / "c"  # zarr's default chunk keys: c/<row chunk>/0/...
            if not chunk_dir.is_dir():
                continue
            present = np.asarray(sorted(int(c) for c in os.listdir(chunk_dir) if c.isdigit()), dtype=np.int64)
            if len(present) == 0:
                continue
            lo, hi = present * rows, np.minimum((present + 1) * rows, arr.shape[0]) - 1
            first, last = _in_holes(lo, holes), _in_holes(hi, holes)
            same = _hole_of(lo, holes) == _hole_of(hi, holes)
            for c in present[first & last & same]:
                target = chunk_dir / str(int(c))
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        """Bytes of every file under the store."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        """Committed steps still on disk (outside holes)."""
        return int(self.commit["steps"]) - _count(self.holes)

    def replay(self) -> Iterator[tuple[str, Step | Discard]]:
        """Every committed step outside holes in arrival order as (source, step), then the discards."""
        return _replay(self.group, self.spec, self.commit, self.holes)


INT64 = (-(2**63), 2**63 - 1)


def _prepare(spec: Spec, source: str, seq: int,
             items: list[Step | Discard]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[int]]:
    """Check a batch against the spec and the store's dtypes and turn it into the rows to write: the step
    arrays, the final-observation arrays (with `final_index` relative to the batch) and the discarded
    episodes. Raises `StoreInputError` naming the first bad item; nothing is written before this passes."""
    if not isinstance(source, str) or not source:
        raise StoreInputError(f"source {source!r}: must be a non-empty string")
    if not 1 <= seq <= INT64[1]:
        raise StoreInputError(f"seq {seq}: must be between 1 and 2**63 - 1")
    steps: list[Step] = []
    discards: list[int] = []
    for i, item in enumerate(items):
        try:
            if isinstance(item, Discard):
                discards.append(_int64(item.episode, "episode"))
                continue
            _check_step(spec, item)
        except ValueError as exc:
            raise StoreInputError(f"batch {seq} item {i}: {exc}") from None
        steps.append(item)
    if not steps:
        return {}, {}, discards
    rows = {f"obs/{f.name}": np.stack([s.obs[f.name] for s in steps]) for f in spec.observation}
    rows["action"] = np.stack([s.action for s in steps]).astype(np.float32)
    for name, dtype in SCALARS.items():
        if name != "source":
            rows[name] = np.asarray([getattr(s, name) for s in steps], dtype=dtype)
    ended = [(i, s) for i, s in enumerate(steps) if s.final_obs is not None]
    finals: dict[str, np.ndarray] = {}
    if ended:
        finals = {f"final/{f.name}": np.stack([s.final_obs[f.name] for _, s in ended]) for f in spec.observation}
        finals["final_index"] = np.asarray([i for i, _ in ended], dtype=np.int64)
    return rows, finals, discards


def _check_step(spec: Spec, step: Step) -> None:
    for what, obs in (("observation", step.obs), ("final observation", step.final_obs)):
        if obs is None:
            continue
        if set(obs) != set(spec.observation_names):
            raise ValueError(f"{what} keys {sorted(obs)} differ from the spec's {list(spec.observation_names)}")
        for f in spec.observation:
            check_array(f, np.asarray(obs[f.name]))
    action = np.asarray(step.action)
    if action.shape != spec.action.shape or action.dtype.kind not in "fiu":
        raise ValueError(f"action: {action.dtype}{list(action.shape)}, the spec says {spec.action.describe()}")
    if not np.isfinite(action.astype(np.float32)).all():
        raise ValueError("action: contains NaN or inf (as float32)")
    if not np.isfinite(np.float32(step.reward)):
        raise ValueError(f"reward {step.reward} is not a finite float32")
    _int64(step.episode, "episode")
    _int64(step.step, "step")


def _int64(value: int, what: str) -> int:
    if not INT64[0] <= int(value) <= INT64[1]:
        raise ValueError(f"{what} {value} does not fit the store's int64")
    return int(value)


def _put_rows(arr: zarr.Array, start: int, values: np.ndarray) -> None:
    """Write `values` as rows `start..` of `arr` and make them its last rows (the array may be longer after a
    failed append: what lies past `start` is not committed)."""
    stop = start + len(values)
    arr.resize((stop, *arr.shape[1:]))
    arr[start:stop] = values


def read_store(path: str | Path) -> tuple[Spec, Iterator[tuple[str, Step | Discard]], set[tuple[str, int]]]:
    """Read-only view of a store up to its last commit (safe while a learner writes to it):
    its spec, its (source, step) stream without the discards, and the discarded (source, episode)s."""
    path = Path(path)
    try:
        commit = json.loads((path / "commit.json").read_text())
    except FileNotFoundError:
        raise StoreError(f"{path}: no learner buffer store there (no commit.json); "
                         "give <learner output-dir>/store") from None
    _check_commit(path, commit)
    g = zarr.open_group(str(path), mode="r")
    spec = Spec.from_dict(g.attrs["spec"])
    holes, _ = _load_holes(path, commit)
    items = (x for x in _replay(g, spec, commit, holes) if isinstance(x[1], Step))
    return spec, items, {(str(s), int(e)) for s, e in commit["discards"]}


def freed_rows(path: str | Path, commit: dict, rows: np.ndarray) -> np.ndarray:
    """Per row number, True where compaction freed it (it reads back as zeros): for direct array readers."""
    holes, _ = _load_holes(Path(path), commit)
    return _in_holes(np.asarray(rows, dtype=np.int64), holes)


def _check_commit(path: Path, commit: dict) -> None:
    if commit.get("format") != FORMAT:
        raise StoreError(f"{path} is not a hilrl buffer store (format {commit.get('format')!r})")
    if commit.get("version") not in READABLE:
        raise StoreError(f"{path}: buffer store format version {commit.get('version')} is not supported by "
                         f"this hilrl (it reads versions {', '.join(map(str, READABLE))}); use the matching "
                         "hilrl release")


def _load_holes(path: Path, commit: dict) -> tuple[list[list[int]], list[list[int]]]:
    name = commit.get("holes")
    if not name:
        return [], []
    try:
        data = json.loads((path / name).read_text())
    except FileNotFoundError:
        raise StoreError(f"{path}: its hole list {name} vanished (the learner compacted the store while it "
                         "was being read); read it again") from None
    return [list(h) for h in data["rows"]], [list(h) for h in data["finals"]]


def _replay(g: zarr.Group, spec: Spec, commit: dict, holes: list[list[int]]) -> Iterator[tuple[str, Step | Discard]]:
    n, sources = commit["steps"], commit["sources"]
    final_index = g["final_index"][: commit["finals"]]
    final_at = {int(i): k for k, i in enumerate(final_index)}
    for start, stop in _blocks(_kept_rows(n, holes)):
        obs = {f.name: g[f"obs/{f.name}"][start:stop] for f in spec.observation}
        action = g["action"][start:stop]
        scalars = {name: g[name][start:stop] for name in SCALARS}
        for j in range(stop - start):
            k = final_at.get(start + j)
            final = None if k is None else {f.name: g[f"final/{f.name}"][k] for f in spec.observation}
            step = Step(obs={name: v[j] for name, v in obs.items()}, action=action[j],
                        reward=float(scalars["reward"][j]), terminated=bool(scalars["terminated"][j]),
                        truncated=bool(scalars["truncated"][j]),
                        is_intervention=bool(scalars["is_intervention"][j]), episode=int(scalars["episode"][j]),
                        step=int(scalars["step"][j]), final_obs=final)
            yield sources[int(scalars["source"][j])], step
    for source, episode in commit["discards"]:
        yield source, Discard(int(episode))


def _kept_rows(n: int, holes: list[list[int]]) -> list[tuple[int, int]]:
    """The row ranges of [0, n) outside the (sorted, disjoint) holes."""
    out, at = [], 0
    for a, b in holes:
        if a > at:
            out.append((at, min(a, n)))
        at = max(at, b)
    if at < n:
        out.append((at, n))
    return [(a, b) for a, b in out if b > a]


def _blocks(ranges: Iterable[tuple[int, int]], size: int = 4096) -> Iterator[tuple[int, int]]:
    for a, b in ranges:
        for start in range(a, b, size):
            yield start, min(b, start + size)


def _merge(ranges: list[tuple[int, int] | list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _count(holes: list[list[int]]) -> int:
    return sum(b - a for a, b in holes)


def _in_holes(rows: np.ndarray, holes: list[list[int]]) -> np.ndarray:
    if not holes:
        return np.zeros(len(rows), dtype=bool)
    starts = np.asarray([a for a, _ in holes])
    ends = np.asarray([b for _, b in holes])
    k = np.searchsorted(starts, rows, side="right") - 1
    return (k >= 0) & (rows < ends[np.maximum(k, 0)])


def _hole_of(rows: np.ndarray, holes: list[list[int]]) -> np.ndarray:
    """Index of the hole at or before each row (only meaningful for rows inside a hole)."""
    return np.searchsorted(np.asarray([a for a, _ in holes]), rows, side="right") - 1


def _runs(idx: np.ndarray) -> list[list[int]]:
    """Consecutive integers in sorted `idx` as [start, stop) ranges."""
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    stops = np.concatenate([idx[breaks], [idx[-1]]]) + 1
    return [[int(a), int(b)] for a, b in zip(starts, stops, strict=True)]
