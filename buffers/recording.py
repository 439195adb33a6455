"""Step recordings on disk (zarr): demonstrations to seed the learner with, and recorded sessions.

A recording is a step table (`buffers.step_table`, format "hilrl-steps", version 1) without the
`source` column, every array in chunks of `chunk_steps` rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import zarr

from hilrl.buffers.assembler import Step
from hilrl.buffers.spec import Spec
from hilrl.buffers.step_table import StepTable

FORMAT = "hilrl-steps"
VERSION = 1


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
        self.table = StepTable.create(str(self.path), spec, FORMAT, VERSION, chunk_rows=chunk_steps)
        self.group = self.table.group
        self.steps = 0
        self.ended = 0
        self._pending: list[Step] = []

    def add(self, step: Step) -> None:
        self._pending.append(step)
        if len(self._pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        rows, finals = self.table.rows(self._pending, self.steps)
        self.table.put(rows, finals, self.steps, self.ended)
        self.steps += len(self._pending)
        self.ended += len(finals.get("final_index", ()))
        self._pending = []

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> StepRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_recording(path: str | Path) -> StepTable:
    """A recording's step table, read-only; `RecordingError` if it is none this hilrl reads."""
    try:
        g = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise RecordingError(f"{path}: no recording there ({exc})") from exc
    if g.attrs.get("format") != FORMAT:
        raise RecordingError(f"{path}: not a hilrl step recording (format {g.attrs.get('format')!r})")
    if g.attrs.get("version") != VERSION:
        raise RecordingError(f"{path}: recording format version {g.attrs.get('version')} is not supported "
                             f"(this hilrl reads version {VERSION}); upgrade hilrl")
    return StepTable(g, Spec.from_dict(g.attrs["spec"]))


def read_steps(path: str | Path) -> tuple[Spec, Iterator[Step]]:
    """The recording's spec and its steps in recorded order."""
    table = open_recording(path)
    return table.spec, (step for _, step in table.steps([(0, len(table))]))
