"""The learner's durable buffer store: every received step, on disk before it is acknowledged.

A zarr v3 group (`<output-dir>/store/`) holds the step stream exactly as actors sent it, in arrival
order: a step table (`buffers.step_table`) with the `source` column (which actor or dataset sent it).
Appending batches (one or many, from any sources) is two phases:

1. the batches' rows are appended past the committed length and fsynced;
2. `commit.json` — committed row counts, the `(actor_id, seq)` record of every source and the
   discarded episodes — is replaced atomically (write, fsync, rename, fsync directory).

A crash at any moment leaves the previous commit intact; rows past it are truncated when the store
is opened again, so the store never holds a step twice. The learner acknowledges a batch once it is
in its ingest log (`learner/ingest.py`, `store/log/`), which it empties into this store. `--resume`
replays the store through the assembler to rebuild both buffers.

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from hilrl.buffers.assembler import Discard, Step, StepLinker
from hilrl.buffers.durable import atomic_write, temp_path
from hilrl.buffers.row_ranges import Ranges, count_rows, in_ranges, kept_ranges, merge_ranges, range_index, runs
from hilrl.buffers.spec import Spec
from hilrl.buffers.step_table import INT64, StepTable, check_int64, check_step
from hilrl.buffers.step_table import DurableLocalStore as _DurableLocalStore

__all__ = ["BufferStore", "StoreError", "StoreInputError", "StoreSnapshot",
           "check_batch", "read_store", "store_snapshot"]

log = logging.getLogger(__name__)

FORMAT = "hilrl-store"
VERSION = 2  # 2 added holes (bounded disk use); version 1 stores open and become version 2
READABLE = (1, 2)
CHUNK_BYTES = 1 << 20  # observation chunk files of about this size


class StoreError(RuntimeError):
    """The store cannot be used as it is; the text says why and what to do."""


class StoreInputError(ValueError):
    """A batch that can never be stored (a value out of range, or not what the spec says); nothing was written."""


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
        self.table = StepTable(zarr.open_group(store=self._store, mode="r+"), spec)
        self.group = self.table.group
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
        StepTable.create(self._store, self.spec, FORMAT, VERSION, sources=True, chunk_bytes=CHUNK_BYTES)
        self._store.sync()

    def _check_compatible(self) -> None:
        _check_commit(self.path, self.commit)
        stored = Spec.from_dict(zarr.open_group(store=self._store, mode="r").attrs["spec"])
        if problem := stored.mismatch(self.spec):
            raise StoreError(f"{self.path}: stored spec differs from the learner's: {problem}")

    def _truncate_uncommitted(self) -> None:
        """Drop rows a crash left past the last commit (they were never acknowledged)."""
        self.table.truncate(self.commit["steps"], self.commit["finals"])

    # ------------------------------------------------------------------ writing

    def last_seqs(self) -> dict[str, int]:
        """The highest committed batch seq of every source."""
        return {k: int(v["last_seq"]) for k, v in self.commit["actors"].items()}

    def instances(self) -> dict[str, str]:
        """The state-directory identity each actor source's batches came from (where the actor said it)."""
        return {k: v["instance"] for k, v in self.commit["actors"].items() if v.get("instance")}

    def append(self, source: str, seq: int, items: list[Step | Discard], instance: str = "") -> None:
        """Durably store one batch and its `(source, seq)` record (with the sending actor's `instance`, if given);
        returns once it is committed (`append_batches` with one batch)."""
        self.append_batches([(source, seq, items, instance)])

    def append_batches(self, batches: list[tuple[str, int, list[Step | Discard], str]]) -> None:
        """Durably store `(source, seq, items, instance)` batches in ONE commit, in order.

        All or nothing: the items are checked against the spec first (`StoreInputError`, nothing touched),
        the rows are written at the committed length of every array and fsynced, and only then is the
        commit record replaced. If anything fails (an `OSError` such as ENOSPC, ...) every array is cut
        back to the committed length and the in-memory commit stays the one on disk, so a resend of the
        batches is stored once, at the right rows."""
        checked = [(source, seq, *check_batch(self.spec, source, seq, items), instance)
                   for source, seq, items, instance in batches]
        n, e = self.commit["steps"], self.commit["finals"]
        sources, actors, discards = list(self.commit["sources"]), dict(self.commit["actors"]), []
        steps, ids = [], []
        for source, seq, batch_steps, batch_discards, instance in checked:
            if source not in sources:
                sources.append(source)
            steps += batch_steps
            ids += [sources.index(source)] * len(batch_steps)
            discards += ([source, d] for d in batch_discards)
            actors[source] = {"last_seq": seq, **({"instance": instance} if instance else {})}
        rows, finals = self.table.rows(steps, n)
        if rows:
            rows["source"] = np.asarray(ids, dtype=np.int32)
        new = {**self.commit, "sources": sources, "steps": n + len(steps),
               "finals": e + len(finals.get("final_index", ())),
               "discards": [*self.commit["discards"], *discards], "actors": actors}
        try:
            if rows:
                self.table.put(rows, finals, n, e)
                self._store.sync()
            self._write_commit(new)
        except BaseException:
            self._roll_back(new)
            raise
        self.commit = new
        self._since_compact += len(steps)
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
        margin = len(self.commit["discards"]) + 1
        keep = [deque(maxlen=c + margin) for c in self.capacities]  # (row, successor row), newest last
        linker: StepLinker[tuple[int, bool]] = StepLinker()  # (row, human)
        ranges = kept_ranges(self.commit["steps"], self.holes)
        names = ("source", "episode", "step", "is_intervention", "terminated", "truncated")
        for start, v in self.table.column_blocks(names, ranges):
            for j in range(len(v["step"])):
                row, human, ended = start + j, bool(v["is_intervention"][j]), bool(v["terminated"][j] or
                                                                                  v["truncated"][j])
                before, _ = linker.link(int(v["source"][j]), int(v["episode"][j]), int(v["step"][j]), (row, human),
                                        ended)
                if before is not None:
                    keep[0 if before[1] else 1].append((before[0], row))
                if ended:
                    keep[0 if human else 1].append((row, row))
        needed = {r for side in keep for pair in side for r in pair} | {w[2][0] for w in linker.waiting.values()}
        return np.asarray(sorted(needed), dtype=np.int64)

    def compact(self) -> int:
        """Turn rows the buffers can no longer hold into holes and delete their chunks; returns rows freed."""
        self._since_compact = 0
        n = self.commit["steps"]
        needed = self.needed_rows()
        bounds = np.concatenate([[-1], needed, [n]])
        fresh = [(int(a) + 1, int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
                 if b - a - 1 >= self.min_hole]
        holes = merge_ranges([*self.holes, *fresh])
        freed = count_rows(holes) - count_rows(self.holes)
        if freed <= 0:
            return 0
        final_index = self.group["final_index"][: self.commit["finals"]]
        dead = in_ranges(final_index, holes)
        final_holes = runs(np.flatnonzero(dead))
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
        for name, arr in self.table.arrays():
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
            first, last = in_ranges(lo, holes), in_ranges(hi, holes)
            same = range_index(lo, holes) == range_index(hi, holes)
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
        return int(self.commit["steps"]) - count_rows(self.holes)

    def replay(self) -> Iterator[tuple[str, Step | Discard]]:
        """Every committed step outside holes in arrival order as (source, step), then the discards."""
        return StoreSnapshot(self.path, self.table, self.commit, self.holes).replay()


def check_batch(spec: Spec, source: str, seq: int, items: list[Step | Discard]) -> tuple[list[Step], list[int]]:
    """Check a batch against the spec and the store's dtypes; its steps and its discarded episodes.
    Raises `StoreInputError` naming the first bad item; nothing is written before this passes."""
    if not isinstance(source, str) or not source:
        raise StoreInputError(f"source {source!r}: must be a non-empty string")
    if not 1 <= seq <= INT64[1]:
        raise StoreInputError(f"seq {seq}: must be between 1 and 2**63 - 1")
    steps: list[Step] = []
    discards: list[int] = []
    for i, item in enumerate(items):
        try:
            if isinstance(item, Discard):
                discards.append(check_int64(item.episode, "episode"))
                continue
            check_step(spec, item)
        except ValueError as exc:
            raise StoreInputError(f"batch {seq} item {i}: {exc}") from None
        steps.append(item)
    return steps, discards


@dataclass
class StoreSnapshot:
    """A store as of one commit, read-only (safe while a learner writes to it)."""

    path: Path
    table: StepTable
    commit: dict
    holes: Ranges

    @property
    def spec(self) -> Spec:
        return self.table.spec

    @property
    def sources(self) -> list[str]:
        return list(self.commit["sources"])

    @property
    def steps(self) -> int:
        """Committed rows, including those inside holes."""
        return int(self.commit["steps"])

    def discarded(self) -> set[tuple[str, int]]:
        return {(str(s), int(e)) for s, e in self.commit["discards"]}

    def freed(self, rows: np.ndarray) -> np.ndarray:
        """Per row number, True where compaction freed it (it reads back as zeros)."""
        return in_ranges(np.asarray(rows, dtype=np.int64), self.holes)

    def replay(self) -> Iterator[tuple[str, Step | Discard]]:
        """Every committed step outside holes in arrival order as (source, step), then the discards."""
        sources = self.commit["sources"]
        for sid, step in self.table.steps(kept_ranges(self.steps, self.holes), self.commit["finals"]):
            yield sources[sid], step
        for source, episode in self.commit["discards"]:
            yield source, Discard(int(episode))


def store_snapshot(path: str | Path) -> StoreSnapshot:
    """The store at `path` up to its last commit, read-only."""
    path = Path(path)
    try:
        commit = json.loads((path / "commit.json").read_text())
    except FileNotFoundError:
        raise StoreError(f"{path}: no learner buffer store there (no commit.json); "
                         "give <learner output-dir>/store") from None
    _check_commit(path, commit)
    g = zarr.open_group(str(path), mode="r")
    holes, _ = _load_holes(path, commit)
    return StoreSnapshot(path, StepTable(g, Spec.from_dict(g.attrs["spec"])), commit, holes)


def read_store(path: str | Path) -> tuple[Spec, Iterator[tuple[str, Step | Discard]], set[tuple[str, int]]]:
    """Read-only view of a store up to its last commit (safe while a learner writes to it):
    its spec, its (source, step) stream without the discards, and the discarded (source, episode)s."""
    snap = store_snapshot(path)
    return snap.spec, (x for x in snap.replay() if isinstance(x[1], Step)), snap.discarded()


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
