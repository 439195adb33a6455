"""Turn each actor's stream of executed steps into complete (s, a, r, s') transitions.

The actor sends every observation once; the next observation of step t is the observation of
step t+1, or, at the end of an episode (terminated *or* truncated), the final observation that
travels with the last step. A step waits here until its successor arrives.

`StepLinker` is the one rule for "this step's successor" (same stream, same episode, next step number),
used by everything that walks a step stream: the assembler, the store's compaction, the LeRobot export,
the Q figures and recording replay; `episode_runs` splits a stream into its runs of linked steps.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from hilrl.buffers.replay import Transition

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


@dataclass
class EpisodeEnd:
    """Emitted when an episode's last transition has been assembled."""

    episode_key: int
    length: int
    all_human: bool
    interventions: int
    success: bool


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


class EpisodeAssembler:
    """Holds the one step per actor that still waits for its next observation."""

    def __init__(self) -> None:
        self._pending: StepLinker[Step] = StepLinker()
        self._keys: dict[tuple[str, int], int] = {}
        self._human_steps: dict[int, int] = {}
        self.dropped_steps = 0

    def episode_key(self, actor_id: str, episode: int) -> int:
        """A learner-wide integer id for (actor, episode)."""
        return self._keys.setdefault((actor_id, episode), len(self._keys))

    def add(self, actor_id: str, step: Step) -> tuple[list[Transition], EpisodeEnd | None]:
        """Feed one step; returns the transitions it completes and the episode end, if any."""
        out: list[Transition] = []
        key = self.episode_key(actor_id, step.episode)
        ended = step.terminated or step.truncated
        if ended and step.final_obs is None:
            raise ValueError(f"episode {step.episode} step {step.step} ends the episode "
                             "but carries no final observation")
        before, orphan = self._pending.link(actor_id, step.episode, step.step, step, ended)
        if before is not None:
            out.append(self._complete(actor_id, before, step.obs, terminated=False, truncated=False))
        if orphan is not None:  # the actor restarted mid-episode: that step never got a successor
            self.dropped_steps += 1
            log.warning("actor %s: episode %d step %d never got its next observation; dropped",
                        actor_id, orphan.episode, orphan.step)
        if ended:
            out.append(self._complete(actor_id, step, step.final_obs, step.terminated, step.truncated))
            human = self._human_steps.pop(key, 0)
            end = EpisodeEnd(key, step.step + 1, human == step.step + 1, human, step.terminated and step.reward > 0)
            return out, end
        return out, None

    def discard(self, actor_id: str, episode: int) -> int:
        """Forget an episode's waiting step; returns its learner-wide key."""
        key = self.episode_key(actor_id, episode)
        self._pending.forget(actor_id, episode)
        self._human_steps.pop(key, None)
        return key

    def _complete(self, actor_id: str, s: Step, next_obs: dict[str, np.ndarray], terminated: bool,
                  truncated: bool) -> Transition:
        key = self.episode_key(actor_id, s.episode)
        if s.is_intervention:
            self._human_steps[key] = self._human_steps.get(key, 0) + 1
        return Transition(obs=s.obs, action=s.action, reward=s.reward, next_obs=next_obs, terminated=terminated,
                          truncated=truncated, episode_key=key, is_intervention=s.is_intervention)
