"""The step stream: executed steps as actors send them, and the rule that links a step to its successor.

The actor sends every observation once; the next observation of step t is the observation of
step t+1, or, at the end of an episode (terminated *or* truncated), the final observation that
travels with the last step. `buffers.replay.EpisodeAssembler` pairs them into transitions.

`StepLinker` is the one rule for "this step's successor" (same stream, same episode, next step number),
used by everything that walks a step stream: the replay buffers' assembler, the store's compaction, the LeRobot export,
the Q figures and recording replay; `episode_runs` splits a stream into its runs of linked steps.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Step:
    """One executed control step as the actor reports it."""

    obs: dict[str, np.ndarray]
    action: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    is_intervention: bool
    episode: int
    step: int
    final_obs: dict[str, np.ndarray] | None = None


@dataclass
class Discard:
    """The operator threw an episode away (re-record): none of its steps may be trained on."""

    episode: int


class StepLinker(Generic[T]):
    """Per stream (an actor, a store source), the step still waiting for its successor."""

    def __init__(self) -> None:
        self.waiting: dict[Hashable, tuple[int, int, T]] = {}

    def link(self, stream: Hashable, episode: int, step: int, item: T, ended: bool) -> tuple[T | None, T | None]:
        """Feed the next step of `stream` (`item` stands for it); returns (the waiting step it is the successor of,
        the waiting step it orphans: same stream but not its successor, e.g. after an actor restart). The step
        waits in turn unless it `ended` its episode."""
        before = self.waiting.pop(stream, None)
        linked = orphan = None
        if before is not None:
            if before[0] == episode and step == before[1] + 1:
                linked = before[2]
            else:
                orphan = before[2]
        if not ended:
            self.waiting[stream] = (episode, step, item)
        return linked, orphan

    def forget(self, stream: Hashable, episode: int) -> None:
        """Drop the stream's waiting step if it belongs to `episode` (discarded)."""
        if (w := self.waiting.get(stream)) is not None and w[0] == episode:
            del self.waiting[stream]


def episode_runs(steps: Iterable[tuple[Hashable, int, int, bool]]) -> Iterator[tuple[Hashable, list[int], bool]]:
    """Split a stream of (stream, episode, step, ended) into maximal runs of linked steps, as
    (stream, positions in `steps`, closed: its last step ended the episode), each as soon as it is over
    (ended or orphaned); at the end of input the open runs, in order of their start."""
    linker: StepLinker[int] = StepLinker()
    runs: dict[Hashable, list[int]] = {}
    for i, (stream, episode, step, ended) in enumerate(steps):
        _, orphan = linker.link(stream, episode, step, i, ended)
        if orphan is not None:
            yield stream, runs.pop(stream), False
        runs.setdefault(stream, []).append(i)
        if ended:
            yield stream, runs.pop(stream), True
    for stream, run in runs.items():
        yield stream, run, False
