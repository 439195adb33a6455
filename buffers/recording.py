"""Step recordings on disk (zarr): demonstrations to seed the learner with, and recorded sessions.

Layout of a recording (a zarr v3 group):

    attrs: {"format": "hilrl-steps", "version": 1, "spec": {...}}
    obs/<feature>      [N, *shape]   the observation each step's action was chosen from
    action             [N, A] float32 (the executed action)
    reward             [N] float32,  terminated / truncated / is_intervention [N] bool
    episode            [N] int64,    step [N] int64
    final/<feature>    [E, *shape]   the observation after the last step of each ended episode
    final_index        [E] int64     which step each final observation belongs to

Every observation is stored once; uint8 images stay uint8.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

from hilrl.buffers.assembler import Step
from hilrl.buffers.spec import Spec

FORMAT = "hilrl-steps"
VERSION = 1
SCALARS = {"reward": "float32", "terminated": "bool", "truncated": "bool", "is_intervention": "bool",
           "episode": "int64", "step": "int64"}


class RecordingError(ValueError):
    """The file is not a hilrl recording this version can read; the text says why."""


class StepRecorder:
    """Appends steps to a new recording; call `close()` (or use `with`) to flush the tail."""

    def __init__(self, path: str | Path, spec: Spec, chunk_steps: int = 512) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} already exists; choose a new recording path")
        self.spec = spec
        self.chunk = chunk_steps
        g = zarr.open_group(str(self.path), mode="w-")
        g.attrs.update({"format": FORMAT, "version": VERSION, "spec": spec.to_dict()})
        for f in spec.observation:
            for prefix in ("obs", "final"):
                g.create_array(f"{prefix}/{f.name}", shape=(0, *f.shape), chunks=(chunk_steps, *f.shape), dtype=f.dtype)
        g.create_array("action", shape=(0, spec.action_dim), chunks=(chunk_steps, spec.action_dim), dtype="float32")
        for name, dtype in {**SCALARS, "final_index": "int64"}.items():
            g.create_array(name, shape=(0,), chunks=(chunk_steps,), dtype=dtype)
        self.group = g
        self.steps = 0
        self._pending: list[Step] = []

    def add(self, step: Step) -> None:
        self._pending.append(step)
        if len(self._pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        g, steps = self.group, self._pending
        for f in self.spec.observation:
            g[f"obs/{f.name}"].append(np.stack([s.obs[f.name] for s in steps]))
        g["action"].append(np.stack([s.action for s in steps]).astype(np.float32))
        for name, dtype in SCALARS.items():
            g[name].append(np.array([getattr(s, name) for s in steps], dtype=dtype))
        ended = [(self.steps + i, s) for i, s in enumerate(steps) if s.final_obs is not None]
        if ended:
            for f in self.spec.observation:
                g[f"final/{f.name}"].append(np.stack([s.final_obs[f.name] for _, s in ended]))
            g["final_index"].append(np.array([i for i, _ in ended], dtype=np.int64))
        self.steps += len(steps)
        self._pending = []

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> StepRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_recording(path: str | Path) -> tuple[Spec, zarr.Group]:
    try:
        g = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise RecordingError(f"{path}: no recording there ({exc})") from exc
    if g.attrs.get("format") != FORMAT:
        raise RecordingError(f"{path}: not a hilrl step recording (format {g.attrs.get('format')!r})")
    if g.attrs.get("version") != VERSION:
        raise RecordingError(f"{path}: recording format version {g.attrs.get('version')} is not supported "
                             f"(this hilrl reads version {VERSION}); upgrade hilrl")
    return Spec.from_dict(g.attrs["spec"]), g


def read_steps(path: str | Path) -> tuple[Spec, Iterator[Step]]:
    """The recording's spec and its steps in recorded order."""
    spec, g = open_recording(path)
    n = g["action"].shape[0]
    obs = {f.name: g[f"obs/{f.name}"][:] for f in spec.observation}
    final = {f.name: g[f"final/{f.name}"][:] for f in spec.observation}
    final_at = {int(i): k for k, i in enumerate(g["final_index"][:])}
    action = g["action"][:]
    scalars = {name: g[name][:] for name in SCALARS}

    def steps() -> Iterator[Step]:
        for i in range(n):
            k = final_at.get(i)
            yield Step(obs={name: v[i] for name, v in obs.items()}, action=action[i],
                       reward=float(scalars["reward"][i]), terminated=bool(scalars["terminated"][i]),
                       truncated=bool(scalars["truncated"][i]), is_intervention=bool(scalars["is_intervention"][i]),
                       episode=int(scalars["episode"][i]), step=int(scalars["step"][i]),
                       final_obs=None if k is None else {name: v[k] for name, v in final.items()})

    return spec, steps()
