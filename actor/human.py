"""The person (or script) next to the arm, as the control loop sees it.

Every takeover device — lerobot's gamepad, a keyboard, the sim's scripted expert — is wrapped in
a `HumanInput`: once per tick the loop calls `poll(obs)` (is the takeover held? did an episode-end
or emergency-stop button fire?) and, while the takeover is held, `action(obs)` for the human's
action in the arm's action space (end-effector delta + gripper, like the policy's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

EpisodeEnd = Literal["success", "failure", "rerecord"]


@dataclass
class HumanEvents:
    """What the human signalled during one tick."""

    takeover: bool = False           # the takeover button is held: the human's action is executed
    end: EpisodeEnd | None = None    # success / failure end the episode; rerecord discards it
    estop: bool = False              # emergency stop: hold the arm now and stop


class HumanInput(Protocol):
    def reset(self, demonstrating: bool = False) -> None:
        """A new episode starts; `demonstrating`: the human is asked to do the whole episode."""

    def poll(self, obs: dict[str, np.ndarray]) -> HumanEvents:
        """The human's signals for this tick (never blocks)."""

    def action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The human's action for this tick (only called while the takeover is held)."""

    def close(self) -> None:
        """Release the device."""


class ScriptedTeleop:
    """The sim's stand-in for a person: a scripted expert that takes over by a simple rule.

    * demonstration episodes: the expert acts from the first step;
    * policy episodes: the expert takes over once the policy has run `takeover_after` steps
      without solving the task (0 = never), and keeps control until the episode ends.
    """

    def __init__(self, expert, takeover_after: int) -> None:
        self.expert = expert
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
        return self.expert.act(obs)

    def close(self) -> None:
        pass
