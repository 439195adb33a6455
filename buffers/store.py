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
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.spec import Spec

FORMAT = "hilrl-store"
VERSION = 1
CHUNK_BYTES = 1 << 20
SCALARS = {"reward": "float32", "terminated": "bool", "truncated": "bool", "is_intervention": "bool",
           "episode": "int64", "step": "int64", "source": "int32"}


class StoreError(RuntimeError):
    """The store cannot be used as it is; the text says why and what to do."""


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
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dirs.add(path.parent)
        for d in dirs:
            fsync_path(d)
        self.touched.clear()


def atomic_write(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: a crash leaves either the old or the new file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunk_rows(row_bytes: int) -> int:
    return int(max(1, min(4096, CHUNK_BYTES // max(row_bytes, 1))))


class BufferStore:
    def __init__(self, path: str | Path, spec: Spec) -> None:
        self.path = Path(path)
        self.spec = spec
        fresh = not (self.path / "commit.json").exists()
        self._store = _DurableLocalStore(self.path)
        if fresh:
            self._create()
            self.commit = {"format": FORMAT, "version": VERSION, "steps": 0, "finals": 0, "sources": [],
                           "actors": {}, "discards": []}
            self._write_commit()
        else:
            self.commit = json.loads((self.path / "commit.json").read_text())
            self._check_compatible()
        self.group = zarr.open_group(store=self._store, mode="r+")
        self._truncate_uncommitted()

    # ------------------------------------------------------------------ layout

    def _create(self) -> None:
        g = zarr.open_group(store=self._store, mode="w")
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
        c = self.commit
        if c.get("format") != FORMAT:
            raise StoreError(f"{self.path} is not a hilrl buffer store (format {c.get('format')!r})")
        if c.get("version") != VERSION:
            raise StoreError(f"{self.path}: buffer store format version {c.get('version')} is not supported by "
                             f"this hilrl (it reads version {VERSION}); use the matching hilrl release")
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

    def append(self, source: str, seq: int, items: list[Step | Discard]) -> None:
        """Durably store one batch and its `(source, seq)` record; returns once it is committed."""
        steps = [i for i in items if isinstance(i, Step)]
        sources = self.commit["sources"]
        if source not in sources:
            sources.append(source)
        sid = sources.index(source)
        g, n = self.group, self.commit["steps"]
        if steps:
            for f in self.spec.observation:
                g[f"obs/{f.name}"].append(np.stack([s.obs[f.name] for s in steps]))
            g["action"].append(np.stack([s.action for s in steps]).astype(np.float32))
            for name, dtype in SCALARS.items():
                values = [sid] * len(steps) if name == "source" else [getattr(s, name) for s in steps]
                g[name].append(np.asarray(values, dtype=dtype))
            ended = [(n + i, s) for i, s in enumerate(steps) if s.final_obs is not None]
            if ended:
                for f in self.spec.observation:
                    g[f"final/{f.name}"].append(np.stack([s.final_obs[f.name] for _, s in ended]))
                g["final_index"].append(np.asarray([i for i, _ in ended], dtype=np.int64))
            self._store.sync()
            self.commit["steps"] = n + len(steps)
            self.commit["finals"] += len(ended)
        self.commit["discards"].extend([source, d.episode] for d in items if isinstance(d, Discard))
        self.commit["actors"][source] = {"last_seq": seq}
        self._write_commit()

    def _write_commit(self) -> None:
        atomic_write(self.path / "commit.json", json.dumps(self.commit).encode())

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return int(self.commit["steps"])

    def replay(self) -> Iterator[tuple[str, Step | Discard]]:
        """Every committed step in arrival order as (source, step), then the discards."""
        n, g = self.commit["steps"], self.group
        sources = self.commit["sources"]
        final_at = {int(i): k for k, i in enumerate(g["final_index"][:])}
        block = 4096
        for start in range(0, n, block):
            stop = min(n, start + block)
            obs = {f.name: g[f"obs/{f.name}"][start:stop] for f in self.spec.observation}
            action = g["action"][start:stop]
            scalars = {name: g[name][start:stop] for name in SCALARS}
            for j in range(stop - start):
                k = final_at.get(start + j)
                final = None if k is None else {f.name: g[f"final/{f.name}"][k] for f in self.spec.observation}
                step = Step(obs={name: v[j] for name, v in obs.items()}, action=action[j],
                            reward=float(scalars["reward"][j]), terminated=bool(scalars["terminated"][j]),
                            truncated=bool(scalars["truncated"][j]),
                            is_intervention=bool(scalars["is_intervention"][j]), episode=int(scalars["episode"][j]),
                            step=int(scalars["step"][j]), final_obs=final)
                yield sources[int(scalars["source"][j])], step
        for source, episode in self.commit["discards"]:
            yield source, Discard(int(episode))
