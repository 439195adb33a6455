"""`--env replay:PATH`: stream a recording (made with `hilrl actor --record`) through the real path.

The recorded steps are sent as they were executed (observations, actions, rewards, who acted),
under this actor's own episode numbers, through the same outbox, gRPC stream and learner ingest
as live steps. CI uses it to replay sim transitions against a real learner.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hilrl.buffers.assembler import Step, episode_runs
from hilrl.buffers.recording import read_steps


class ReplaySource:
    """A recording, episode by episode; stands where an environment would."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.spec, steps = read_steps(self.path)
        recorded = list(steps)
        runs = episode_runs(("", s.episode, s.step, s.terminated or s.truncated) for s in recorded)
        self._episodes: list[list[Step]] = [[recorded[i] for i in run] for _, run, _ in runs]

    def __len__(self) -> int:
        return len(self._episodes)

    def episodes(self) -> Iterator[list[Step]]:
        yield from self._episodes

    def close(self) -> None:
        pass
