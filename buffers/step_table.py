"""The zarr per-step layout shared by step recordings (`buffers.recording`) and the learner's store (`buffers.store`).

A step table is a zarr v3 group:

    attrs: {"format": ..., "version": ..., "spec": {...}}
    obs/<feature>      [N, *shape]   the observation each step's action was chosen from
    action             [N, A] float32 (the executed action)
    reward             [N] float32,  terminated / truncated / is_intervention [N] bool
    episode            [N] int64,    step [N] int64
    source             [N] int32     (the store only: which actor or dataset sent the step)
    final/<feature>    [E, *shape]   the observation after the last step of each ended episode
    final_index        [E] int64     which step (row) each final observation belongs to

Every observation is stored once; uint8 images stay uint8. The owner (recording or store) decides what
a committed length is; the table only creates, writes rows at a given length, and reads rows.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, ZstdCodec
from zarr.codecs.bytes import Endian
from zarr.storage import LocalStore

from hilrl.buffers.assembler import Step
from hilrl.buffers.durable import fsync_path
from hilrl.buffers.row_ranges import blocks
from hilrl.buffers.spec import Spec, check_array

STEP_COLUMNS = {"reward": "float32", "terminated": "bool", "truncated": "bool", "is_intervention": "bool",
                "episode": "int64", "step": "int64"}
SOURCE = {"source": "int32"}
MAX_CHUNK_ROWS = 4096
_POOL = ThreadPoolExecutor(8, thread_name_prefix="step-table")  # concurrent chunk writes and fsyncs of one commit

Rows = dict[str, np.ndarray]
INT64 = (-(2**63), 2**63 - 1)


class DurableLocalStore(LocalStore):
    """LocalStore that remembers which files it wrote, so a commit can fsync exactly those."""

    def __init__(self, root: Path, read_only: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self.touched: set[str] = set()

    async def set(self, key: str, value: Any) -> None:
        await super().set(key, value)
        self.touched.add(key)

    def sync(self) -> None:
        """fsync every file written since the last call, then their directories; several at once (the disk
        handles concurrent flushes far faster than one after another)."""
        paths = [Path(self.root) / key for key in self.touched]
        synced = list(_POOL.map(_fsync_existing, paths))
        list(_POOL.map(fsync_path, {p.parent for p, done in zip(paths, synced, strict=True) if done}))
        self.touched.clear()


def _fsync_existing(path: Path) -> bool:
    try:
        fsync_path(path)
    except FileNotFoundError:  # deleted since (a failed append's chunk past the commit): nothing to keep
        return False
    return True


def _put_whole_chunks(arr: zarr.Array, values: np.ndarray, start: int) -> tuple[int, int]:
    """Write the chunks of `arr` that rows `start..` of `values` fill completely, encoded in parallel and stored
    as whole chunk files (zarr's own write path costs about 10x more per byte here); returns the rows written
    (start, start) when none. Only for the layout the store creates: raw bytes + zstd, one chunk across every
    axis but the first; anything else is left to zarr."""
    rows, stop = arr.chunks[0], start + len(values)
    first, last = -(-start // rows), stop // rows
    codecs = arr.metadata.codecs
    whole = (len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and codecs[0].endian in (None, Endian.little)
             and isinstance(codecs[1], ZstdCodec) and not codecs[1].checksum and sys.byteorder == "little")
    if last <= first or not whole or not isinstance(arr.store, LocalStore) or arr.chunks[1:] != arr.shape[1:]:
        return start, start
    zstd, root = Zstd(level=codecs[1].level), Path(arr.store.root)
    keys = [f"{arr.path}/{arr.metadata.encode_chunk_key((k, *([0] * (arr.ndim - 1))))}" for k in range(first, last)]

    fill = arr.metadata.fill_value

    def put(k: int, key: str) -> None:
        path, chunk = root / key, np.ascontiguousarray(values[k * rows - start:(k + 1) * rows - start])
        if not (chunk.any() if fill == 0 else np.any(chunk != fill)):  # as zarr does: no file for a chunk of
            # fill values (it reads back as them)
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstd.encode(chunk))

    list(_POOL.map(put, range(first, last), keys))
    if isinstance(arr.store, DurableLocalStore):
        arr.store.touched.update(keys)
    return first * rows, last * rows


def _chunk_rows(row_bytes: int, chunk_bytes: int) -> int:
    return int(max(1, min(MAX_CHUNK_ROWS, chunk_bytes // max(row_bytes, 1))))


class StepTable:
    """One step table (see the module docstring) in an open zarr group."""

    def __init__(self, group: zarr.Group, spec: Spec) -> None:
        self.group = group
        self.spec = spec
        self._scratch: dict[str, np.ndarray] = {}  # reused row memory of `rows` (fresh memory page-faults)
        self._arrays: dict[str, zarr.Array] = {}  # opened once for writing (an open reads its metadata file)
        self.scalars = {**STEP_COLUMNS, **(SOURCE if "source" in group else {})}

    @classmethod
    def create(cls, store: Any, spec: Spec, format: str, version: int, chunk_rows: int | None = None,
               sources: bool = False, chunk_bytes: int = 1 << 20) -> StepTable:
        """A new, empty table at `store` (a path or a zarr store; must not hold a group yet). `chunk_rows`: rows per
        chunk of every array; None: observations in chunks of about `chunk_bytes` (at most 4096 rows), the rest in
        chunks of 4096 rows.
        `sources`: with the `source` column (the learner's store)."""
        g = zarr.open_group(store=store, mode="w-")
        g.attrs.update({"format": format, "version": version, "spec": spec.to_dict()})
        for f in spec.observation:
            rows = chunk_rows or _chunk_rows(f.size * np.dtype(f.dtype).itemsize, chunk_bytes)
            for prefix in ("obs", "final"):
                g.create_array(f"{prefix}/{f.name}", shape=(0, *f.shape), chunks=(rows, *f.shape), dtype=f.dtype)
        rows = chunk_rows or MAX_CHUNK_ROWS
        g.create_array("action", shape=(0, spec.action_dim), chunks=(rows, spec.action_dim), dtype="float32")
        for name, dtype in {**STEP_COLUMNS, **(SOURCE if sources else {}), "final_index": "int64"}.items():
            g.create_array(name, shape=(0,), chunks=(rows,), dtype=dtype)
        return cls(g, spec)

    # ------------------------------------------------------------------ writing

    def rows(self, steps: list[Step], first_row: int = 0) -> tuple[Rows, Rows]:
        """The step rows and the final-observation rows of `steps` (which become rows `first_row..`);
        no `source` column. The observation rows live in memory the next call reuses: write them first."""
        if not steps:
            return {}, {}
        rows = {f"obs/{f.name}": self._stack(f"obs/{f.name}", [s.obs[f.name] for s in steps])
                for f in self.spec.observation}
        rows["action"] = np.stack([s.action for s in steps]).astype(np.float32)
        for name, dtype in STEP_COLUMNS.items():
            rows[name] = np.asarray([getattr(s, name) for s in steps], dtype=dtype)
        ended = [(first_row + i, s) for i, s in enumerate(steps) if s.final_obs is not None]
        finals: Rows = {}
        if ended:
            finals = {f"final/{f.name}": np.stack([s.final_obs[f.name] for _, s in ended])
                      for f in self.spec.observation}
            finals["final_index"] = np.asarray([i for i, _ in ended], dtype=np.int64)
        return rows, finals

    def _stack(self, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        """`np.stack(arrays)` (spec dtype) into this table's reused memory for `name` (grown as needed)."""
        first = np.asarray(arrays[0])
        dtype = self._array(name).dtype
        buf = self._scratch.get(name)
        if buf is None or len(buf) < len(arrays) or buf.shape[1:] != first.shape:
            buf = self._scratch[name] = np.empty((max(len(arrays), 2 * len(buf) if buf is not None else 0),
                                                  *first.shape), dtype=dtype)
        return np.stack(arrays, out=buf[:len(arrays)], casting="unsafe")

    def put(self, rows: Rows, finals: Rows, steps: int, ended: int) -> None:
        """Write `rows` at row `steps` and `finals` at final row `ended` of their arrays, and make them those arrays'
        last rows (an array may be longer after a failed write: what lies past the given length is not kept)."""
        for start, part in ((steps, rows), (ended, finals)):
            for name, values in part.items():
                arr = self._array(name)
                stop = start + len(values)
                arr.resize((stop, *arr.shape[1:]))
                lo, hi = _put_whole_chunks(arr, values, start)
                if lo > start:
                    arr[start:lo] = values[: lo - start]
                if stop > hi:
                    arr[hi:stop] = values[hi - start:]

    def truncate(self, steps: int, ended: int) -> None:
        """Cut every array back to `steps` step rows and `ended` final rows."""
        for name, arr in self.arrays():
            rows = ended if name.startswith("final") else steps
            if arr.shape[0] != rows:
                arr.resize((rows, *arr.shape[1:]))

    def arrays(self) -> Iterator[tuple[str, zarr.Array]]:
        for f in self.spec.observation:
            yield f"obs/{f.name}", self._array(f"obs/{f.name}")
            yield f"final/{f.name}", self._array(f"final/{f.name}")
        for name in ("action", *self.scalars, "final_index"):
            yield name, self._array(name)

    def _array(self, name: str) -> zarr.Array:
        """The array `name`, opened once (its resizes update this object and its metadata file)."""
        if (arr := self._arrays.get(name)) is None:
            arr = self._arrays[name] = self.group[name]
        return arr

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return int(self.group["action"].shape[0])

    def read(self, names: Iterable[str], start: int, stop: int) -> Rows:
        """Rows [start, stop) of the named arrays ("obs/<feature>", "action", "episode", ...)."""
        return {name: self.group[name][start:stop] for name in names}

    def column_blocks(self, names: Iterable[str], ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, Rows]]:
        """(first row, {name: values}) for every block of at most 4096 rows of `ranges`."""
        names = list(names)
        for start, stop in blocks(ranges):
            yield start, self.read(names, start, stop)

    def steps(self, ranges: Iterable[tuple[int, int]], ended: int | None = None) -> Iterator[tuple[int, Step]]:
        """(source id, step) of every row in `ranges` (source id 0 without a `source` column); `ended`: how many
        final rows count (default: all)."""
        final_index = self.group["final_index"][:ended]  # ascending: a block's final rows are one slice
        features = [(f.name, f"obs/{f.name}", f"final/{f.name}") for f in self.spec.observation]
        names = [key for _, key, _ in features] + ["action", *self.scalars]
        for start, v in self.column_blocks(names, ranges):
            n = len(v["action"])
            lo, hi = np.searchsorted(final_index, [start, start + n])
            finals = {name: self.group[key][lo:hi] for name, _, key in features} if hi > lo else {}
            final_at = {int(i) - start: k for k, i in enumerate(final_index[lo:hi])}
            source = v["source"].tolist() if "source" in v else [0] * n
            reward, episode, step = v["reward"].tolist(), v["episode"].tolist(), v["step"].tolist()
            terminated, truncated = v["terminated"].tolist(), v["truncated"].tolist()
            human = v["is_intervention"].tolist()
            for j in range(n):
                k = final_at.get(j)
                yield source[j], Step(obs={name: v[key][j] for name, key, _ in features}, action=v["action"][j],
                                      reward=reward[j], terminated=terminated[j], truncated=truncated[j],
                                      is_intervention=human[j], episode=episode[j], step=step[j],
                                      final_obs=None if k is None else {name: a[k] for name, a in finals.items()})

def check_step(spec: Spec, step: Step) -> None:
    """Raise ValueError unless `step` fits the spec and the table's dtypes."""
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
    check_int64(step.episode, "episode")
    check_int64(step.step, "step")


def check_int64(value: int, what: str) -> int:
    if not INT64[0] <= int(value) <= INT64[1]:
        raise ValueError(f"{what} {value} does not fit the store's int64")
    return int(value)
