"""The person (or script) next to the arm, as the control loop sees it.

Every takeover device — lerobot's gamepad, a keyboard, the sim's scripted expert — is wrapped in
a `HumanInput` (declared in `hilrl.hardware.human`, next to the devices): once per tick the loop
calls `poll(obs)` (is the takeover held? did an episode-end or emergency-stop button fire?) and,
while the takeover is held, `action(obs)` for the human's action in the arm's action space
(end-effector delta + gripper, like the policy's). This module holds the sim's scripted stand-in
and the episode schedule.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

import numpy as np

from hilrl.hardware.human import EpisodeEnd, HumanEvents, HumanInput

__all__ = ["EpisodeEnd", "HumanEvents", "HumanInput", "NoTakeover", "Schedule", "ScriptedTeleop", "parse_schedule"]


class ScriptedTeleop:
    """The sim's stand-in for a person: a scripted expert that takes over by a simple rule.

    * demonstration episodes: the expert acts from the first step;
    * policy episodes: the expert takes over once the policy has run `takeover_after` steps
      without solving the task (0 = never), and keeps control until the episode ends.
    """

    def __init__(self, expert, takeover_after: int, scene=None) -> None:
        self.expert = expert
        self.scene = scene  # () -> what the person sees beyond the observation (the sim's block position)
        self.takeover_after = takeover_after
        self.demonstrating = False
        self._steps = 0
        self._holding = False

    def reset(self, demonstrating: bool = False) -> None:
        self.demonstrating = demonstrating
        self._steps = 0
        self._holding = demonstrating
        self.expert.reset()

    def poll(self, obs: dict[str, np.ndarray]) -> HumanEvents:
        if not self._holding and self.takeover_after and self._steps >= self.takeover_after:
            self._holding = True
            self.expert.reset()
        self._steps += 1
        return HumanEvents(takeover=self._holding)

    def action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.expert.act(obs if self.scene is None else {**obs, **self.scene()})

    def go(self) -> bool:
        return True  # no go button: a scripted human never holds the arm at its rest pose

    def close(self) -> None:
        pass


class NoTakeover:
    """A device whose takeover is ignored (joint-mode policy runs: the human's actions are end-effector
    deltas, which a joint-space arm cannot execute). Verdicts, e-stop and go still work. Nobody can
    demonstrate with it either: a residual actor runs its base instead (`hilrl.actor.loop`)."""

    def __init__(self, device) -> None:
        self.device = device
        self._said = False

    def reset(self, demonstrating: bool = False) -> None:
        self.device.reset(demonstrating=False)

    def poll(self, obs: dict[str, np.ndarray]) -> HumanEvents:
        events = self.device.poll(obs)
        if events.takeover and not self._said:
            self._said = True
            logging.getLogger(__name__).warning("takeover ignored: joint-mode arm (use --action-mode ee to take over)")
        return HumanEvents(takeover=False, end=events.end, estop=events.estop)

    def action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        raise RuntimeError("NoTakeover never hands control to the human")

    def go(self) -> bool:
        return self.device.go()

    def close(self) -> None:
        self.device.close()


EpisodeKind = Literal["human", "policy"]
_KINDS: dict[str, EpisodeKind] = {"h": "human", "human": "human", "p": "policy", "policy": "policy"}


def parse_schedule(text: str) -> list[tuple[EpisodeKind, int]]:
    """'3h3p' or 'human:3,policy:3' -> [('human', 3), ('policy', 3)]; '' -> []. ValueError says what is wrong."""
    text = text.strip().lower()
    if not text:
        return []
    if re.fullmatch(r"(\d+[hp])+", text):
        parts = [(_KINDS[k], int(n)) for n, k in re.findall(r"(\d+)([hp])", text)]
    else:
        parts = []
        for item in text.split(","):
            kind, sep, count = item.strip().partition(":")
            if not sep or kind.strip() not in _KINDS or not count.strip().isdigit():
                raise ValueError(f"--schedule {text!r}: expected e.g. 3h3p or human:3,policy:3")
            parts.append((_KINDS[kind.strip()], int(count)))
    if not any(n for _, n in parts):
        raise ValueError(f"--schedule {text!r}: every count is 0")
    return [(k, n) for k, n in parts if n > 0]


class Schedule:
    """The operating rhythm, e.g. 3 human episodes then 3 policy episodes, repeated.

    :meth:`next` says which kind of episode comes next; :meth:`done` moves on after one that counted
    (a re-recorded episode is done again, so it does not move the schedule).
    """

    def __init__(self, text: str) -> None:
        self.plan = parse_schedule(text)
        self.cycle: list[EpisodeKind] = [k for k, n in self.plan for _ in range(n)]
        self.labels = [f"{k} episode {i + 1}/{n}" for k, n in self.plan for i in range(n)]
        self.position = 0

    def __bool__(self) -> bool:
        return bool(self.cycle)

    def next(self) -> EpisodeKind:
        return self.cycle[self.position % len(self.cycle)]

    def describe(self) -> str:
        """'human episode 2/3' for the console."""
        return self.labels[self.position % len(self.cycle)]

    def done(self) -> None:
        self.position += 1
