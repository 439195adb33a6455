"""Turn each actor's stream of executed steps into complete (s, a, r, s') transitions.

The actor sends every observation once; the next observation of step t is the observation of
step t+1, or, at the end of an episode (terminated *or* truncated), the final observation that
travels with the last step. A step waits here until its successor arrives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from hilrl.buffers.replay import Transition

log = logging.getLogger(__name__)


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


class EpisodeAssembler:
    """Holds the one step per actor that still waits for its next observation."""

    def __init__(self) -> None:
        self._pending: dict[str, Step] = {}
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
        pending = self._pending.pop(actor_id, None)
        if pending is not None:
            if pending.episode == step.episode and step.step == pending.step + 1:
                out.append(self._complete(actor_id, pending, step.obs, terminated=False, truncated=False))
            else:
                # The actor restarted mid-episode: that step never got a successor.
                self.dropped_steps += 1
                log.warning("actor %s: episode %d step %d never got its next observation; dropped",
                            actor_id, pending.episode, pending.step)
        if step.terminated or step.truncated:
            if step.final_obs is None:
                raise ValueError(f"episode {step.episode} step {step.step} ends the episode "
                                 "but carries no final observation")
            out.append(self._complete(actor_id, step, step.final_obs, step.terminated, step.truncated))
            human = self._human_steps.pop(key, 0)
            end = EpisodeEnd(key, step.step + 1, human == step.step + 1, human, step.terminated and step.reward > 0)
            return out, end
        self._pending[actor_id] = step
        return out, None

    def discard(self, actor_id: str, episode: int) -> int:
        """Forget an episode's waiting step; returns its learner-wide key."""
        key = self.episode_key(actor_id, episode)
        pending = self._pending.get(actor_id)
        if pending is not None and pending.episode == episode:
            del self._pending[actor_id]
        self._human_steps.pop(key, None)
        return key

    def _complete(self, actor_id: str, s: Step, next_obs: dict[str, np.ndarray], terminated: bool,
                  truncated: bool) -> Transition:
        key = self.episode_key(actor_id, s.episode)
        if s.is_intervention:
            self._human_steps[key] = self._human_steps.get(key, 0) + 1
        return Transition(obs=s.obs, action=s.action, reward=s.reward, next_obs=next_obs, terminated=terminated,
                          truncated=truncated, episode_key=key, is_intervention=s.is_intervention)
