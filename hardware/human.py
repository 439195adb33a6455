"""What a takeover device tells the control loop: the events of one tick and the device interface.

Every takeover device (lerobot's gamepad, a keyboard, the sim's scripted expert in
`hilrl.actor.human`) is a `HumanInput`: once per tick the loop calls `poll(obs)` (is the takeover
held? did an episode-end or emergency-stop button fire?) and, while the takeover is held,
`action(obs)` for the human's action in the arm's action space.
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

    def go(self) -> bool:
        """True once per press of the go button (gamepad LB, key g) since the last call; a device
        without a go button (the sim's scripted human) always says True, so it never holds a real arm."""

    def close(self) -> None:
        """Release the device."""

