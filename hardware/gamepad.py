"""The gamepad as a :class:`hilrl.hardware.human.HumanInput`, on top of lerobot's own gamepad teleoperator.

lerobot 0.4.4 (``lerobot.teleoperators.gamepad``) reads the pad through pygame's joystick layer
(``gamepad_utils.GamepadController``; on macOS it uses hidapi instead). We use its
:class:`GamepadTeleop` and its button/axis mapping unchanged, so the buttons mean what lerobot users
already know. The *raw pygame button indices* lerobot reads (its comments name the buttons of a
Logitech pad in DirectInput mode, e.g. an F310 with its switch on "D"):

======  =========================  ==========================================================
index   Logitech "D" layout        what lerobot (and so this adapter) does with it
======  =========================  ==========================================================
5       RB                         **held = takeover** (lerobot's ``intervention_flag``)
3       Y                          episode **success**
1       A                          episode **failure**
0       X                          **re-record** (discard the episode)
6       LT                         close the gripper while held
7       RT                         open the gripper while held
2       B                          free in lerobot (it prints "B: Exit" but never reads it):
                                   **emergency stop** here
4       LB                         free in lerobot: **go**, start the next episode once the
                                   real arm is at its rest pose
======  =========================  ==========================================================

Xbox-style pads (XInput, ``xpad`` on Linux) number their buttons A=0, B=1, X=2, Y=3, LB=4, RB=5,
Back=6, Start=7, so there the same indices are: X-button = emergency stop, A = re-record,
B = failure, Y = success, Back/Start = close/open. RB is the takeover on both.

Axes (lerobot's ``get_deltas``, deadzone 0.1): ``dx = -axis 1`` (left stick forward is +x),
``dy = -axis 0`` (left stick left is +y), ``dz = -axis 3`` (right stick forward is up).

Two additions to lerobot's controller, both in :class:`HilGamepadController`:

* an end-of-episode press is *latched*: lerobot clears the status on the button's release, so a tap
  shorter than one control tick (press and release processed in the same ``update()``) is lost;
  here a release never cancels a press that has not been read yet;
* the emergency stop (button 2) is latched on its press; unplugging the pad (pygame's
  ``JOYDEVICEREMOVED``) is an emergency stop too. Nothing clears it: build a new input after one.

Gripper: lerobot's ``GripperAction`` is CLOSE=0, STAY=1, OPEN=2; our action uses the gym-hil
convention 2 closes, 0 opens, 1 holds, so ``g = 2 - lerobot_gripper``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np

from hilrl.hardware.human import EpisodeEnd, HumanEvents

log = logging.getLogger(__name__)

TAKEOVER_BUTTON = 5  # lerobot: joystick.get_button(5)
ESTOP_BUTTON = 2  # the button lerobot leaves unused
GO_BUTTON = 4  # LB on Logitech "D" and Xbox pads alike; unused by lerobot
ACTION_LOW = np.array([-1.0, -1.0, -1.0, 0.0], dtype=np.float32)
ACTION_HIGH = np.array([1.0, 1.0, 1.0, 2.0], dtype=np.float32)

NO_GAMEPAD_HELP = (
    "no gamepad found: pygame/SDL sees 0 joysticks. Check that the pad is plugged in (or its USB "
    "dongle is, and the pad is switched on), that `ls /dev/input/js*` lists it, that your user may "
    "read it (`ls -l /dev/input/event*`; add yourself to the 'input' group), and for a Logitech "
    "F310/F710 that the switch on its back is on 'D'. No pad? Use the keyboard (KeyboardInput)."
)


class GamepadNotFoundError(ConnectionError):
    """No gamepad is connected (or readable)."""


def lerobot_gripper_to_ours(value: float) -> float:
    """lerobot's CLOSE=0 / STAY=1 / OPEN=2 -> our 2 closes / 1 holds / 0 opens."""
    return 2.0 - float(value)


def _controller_class() -> type:
    """lerobot's pygame controller with the latched end status and the e-stop (see module doc)."""
    from lerobot.teleoperators.gamepad.gamepad_utils import GamepadController

    class HilGamepadController(GamepadController):
        _end: Any = None

        def __init__(self, deadzone: float = 0.1, estop_button: int = ESTOP_BUTTON) -> None:
            super().__init__(deadzone=deadzone)
            self.estop_button = estop_button
            self.estop = False
            self.go = False  # latched on a GO_BUTTON press until GamepadInput.go() reads it

        @property
        def episode_end_status(self) -> Any:  # type: ignore[override]
            return self._end

        @episode_end_status.setter
        def episode_end_status(self, value: Any) -> None:
            if value is not None:  # lerobot's "release clears it" would lose a short tap
                self._end = value

        def get_episode_end_status(self) -> Any:
            status, self._end = self._end, None
            return status

        def update(self) -> None:
            import pygame

            if self.joystick is None:
                raise GamepadNotFoundError(NO_GAMEPAD_HELP)
            events = pygame.event.get()
            for event in events:
                if event.type == pygame.JOYBUTTONDOWN and event.button == self.estop_button:
                    self.estop = True
                elif event.type == pygame.JOYBUTTONDOWN and event.button == GO_BUTTON:
                    self.go = True
                elif event.type == pygame.JOYDEVICEREMOVED:  # unplugged mid-session: stop the arm
                    log.error("gamepad %s was disconnected: emergency stop", self.joystick.get_name())
                    self.estop = True
                    continue
                pygame.event.post(event)  # hand the same events on to lerobot's own mapping
            super().update()

    return HilGamepadController


def make_teleop(deadzone: float = 0.1) -> Any:
    """lerobot's ``GamepadTeleop`` (gripper on), connected to our controller subclass."""
    from lerobot.teleoperators.gamepad import GamepadTeleop, GamepadTeleopConfig

    class HilGamepadTeleop(GamepadTeleop):
        def connect(self) -> None:
            if sys.platform == "darwin":  # lerobot's hidapi path, unchanged (no latch, no e-stop)
                super().connect()
                return
            self.gamepad = _controller_class()(deadzone=deadzone)
            self.gamepad.start()

    return HilGamepadTeleop(GamepadTeleopConfig(use_gripper=True))


class GamepadInput:
    """Takeover, episode verdicts and e-stop from a gamepad; 4-d ``[dx, dy, dz, g]`` actions.

    ``scale`` multiplies the stick deflection (1.0: full deflection is one full action unit).
    Raises :class:`GamepadNotFoundError` (naming the device and what to check) when no pad is found.
    """

    def __init__(self, scale: float = 1.0, deadzone: float = 0.1) -> None:
        self.scale = float(scale)
        self.teleop = make_teleop(deadzone)
        self.teleop.connect()
        pad = self.teleop.gamepad
        if pad is None or not getattr(pad, "running", False) or getattr(pad, "joystick", 1) is None:
            self.close()
            raise GamepadNotFoundError(NO_GAMEPAD_HELP)
        self.demonstrating = False
        joystick = getattr(pad, "joystick", None)
        log.info("gamepad: %s", joystick.get_name() if joystick is not None else "hidapi device")

    @property
    def name(self) -> str:
        joystick = getattr(self.teleop.gamepad, "joystick", None)
        return joystick.get_name() if joystick is not None else "gamepad"

    def reset(self, demonstrating: bool = False) -> None:
        """New episode: forget verdicts pressed between episodes (an e-stop stays latched)."""
        self.demonstrating = demonstrating
        pad = self.teleop.gamepad
        pad.update()
        pad.get_episode_end_status()

    def poll(self, obs: dict[str, np.ndarray]) -> HumanEvents:
        """lerobot's teleop events for this tick, as :class:`HumanEvents`."""
        from lerobot.teleoperators.utils import TeleopEvents

        ev = self.teleop.get_teleop_events()
        end: EpisodeEnd | None = None
        if ev[TeleopEvents.RERECORD_EPISODE]:
            end = "rerecord"
        elif ev[TeleopEvents.SUCCESS]:
            end = "success"
        elif ev[TeleopEvents.TERMINATE_EPISODE]:
            end = "failure"
        estop = bool(getattr(self.teleop.gamepad, "estop", False))
        return HumanEvents(takeover=bool(ev[TeleopEvents.IS_INTERVENTION]), end=end, estop=estop)

    def go(self) -> bool:
        """The operator pressed LB (go: start the next episode) since the last call."""
        pad = self.teleop.gamepad
        pad.update()
        pressed, pad.go = bool(getattr(pad, "go", False)), False
        return pressed

    def action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``[dx, dy, dz, g]`` from lerobot's ``get_action`` (sticks and LT/RT), in our bounds."""
        a = self.teleop.get_action()
        xyz = np.array([a["delta_x"], a["delta_y"], a["delta_z"]], dtype=np.float64) * self.scale
        out = np.array([*xyz, lerobot_gripper_to_ours(a["gripper"])], dtype=np.float32)
        return np.clip(out, ACTION_LOW, ACTION_HIGH)

    def close(self) -> None:
        """Release the pad (lerobot quits pygame's joystick module and pygame)."""
        if self.teleop.gamepad is not None:
            self.teleop.disconnect()

    def __enter__(self) -> GamepadInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
