"""Stand-ins for the hardware that is not on a test machine, injected as low as practical.

* :class:`FakeGamepad` replaces only pygame's joystick *device* (``pygame.joystick.Joystick`` and
  ``get_count``) and posts real pygame ``JOYBUTTONDOWN/UP`` / ``JOYAXISMOTION`` events into pygame's
  real event queue (SDL's dummy video driver, no display). lerobot's ``GamepadController`` then reads
  buttons and axes exactly as it would from a pad, so its mapping is what gets tested.
* :class:`FakeKeys` feeds key presses/releases to a :class:`hilrl.hardware.keyboard.KeyboardInput`
  through the same ``on_press``/``on_release`` callbacks pynput's listener calls.
* :class:`FakeFollower` is a duck-typed lerobot SO-10x follower (what :class:`hilrl.hardware.so_arm.SOArm`
  calls on it): joints move to the targets sent, calibration entries are lerobot's ``MotorCalibration``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

BUTTONS = 12
AXES = 6
MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


class FakeJoystick:
    """What lerobot calls on ``pygame.joystick.Joystick(0)``, backed by a :class:`FakeGamepad`."""

    def __init__(self, pad: FakeGamepad, index: int = 0) -> None:
        self._pad = pad
        self.index = index

    def init(self) -> None:
        self._pad.initialised = True

    def quit(self) -> None:
        self._pad.initialised = False

    def get_init(self) -> bool:
        return self._pad.initialised

    def get_name(self) -> str:
        return self._pad.name

    def get_instance_id(self) -> int:
        return 0

    def get_numbuttons(self) -> int:
        return BUTTONS

    def get_numaxes(self) -> int:
        return AXES

    def get_button(self, i: int) -> int:
        return int(self._pad.buttons[i])

    def get_axis(self, i: int) -> float:
        return float(self._pad.axes[i])


class FakeGamepad:
    """A gamepad you press from code: state for ``get_button``/``get_axis`` plus the pygame events."""

    def __init__(self, name: str = "Fake Logitech Gamepad F310") -> None:
        self.name = name
        self.buttons = [False] * BUTTONS
        self.axes = [0.0] * AXES
        self.initialised = False

    def _post(self, kind: str, **attrs: Any) -> None:
        import pygame

        pygame.event.post(pygame.event.Event(getattr(pygame, kind), joy=0, instance_id=0, **attrs))

    def press(self, button: int) -> None:
        self.buttons[button] = True
        self._post("JOYBUTTONDOWN", button=button)

    def release(self, button: int) -> None:
        self.buttons[button] = False
        self._post("JOYBUTTONUP", button=button)

    def tap(self, button: int) -> None:
        """Press and release before the next read (a tap shorter than one control tick)."""
        self.press(button)
        self.release(button)

    def move(self, axis: int, value: float) -> None:
        self.axes[axis] = float(value)
        self._post("JOYAXISMOTION", axis=axis, value=float(value))

    def unplug(self) -> None:
        self._post("JOYDEVICEREMOVED")


@contextmanager
def fake_gamepad(pad: FakeGamepad | None = None, count: int = 1) -> Iterator[FakeGamepad]:
    """Make pygame see ``count`` (0 or 1) fake pads for the duration; headless (SDL dummy drivers)."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    import pygame

    pad = pad or FakeGamepad()
    saved = pygame.joystick.Joystick, pygame.joystick.get_count
    pygame.joystick.Joystick = lambda index=0: FakeJoystick(pad, index)  # type: ignore[assignment]
    pygame.joystick.get_count = lambda: count  # type: ignore[assignment]
    try:
        yield pad
    finally:
        pygame.joystick.Joystick, pygame.joystick.get_count = saved  # type: ignore[assignment]


class FakeKeys:
    """Types on a :class:`~hilrl.hardware.keyboard.KeyboardInput` through pynput's callback signature."""

    def __init__(self, keyboard_input: Any) -> None:
        self.target = keyboard_input

    def press(self, key: str) -> None:
        self.target.on_press(key)

    def release(self, key: str) -> None:
        self.target.on_release(key)

    def tap(self, key: str) -> None:
        self.press(key)
        self.release(key)


class FakeFollower:
    """A follower arm without a bus: ``get_observation`` returns the last targets sent (a perfect servo).

    ``ranges``: raw calibration range per motor (default 1000..3000 ticks, i.e. +-87.9 degrees).
    """

    observation_features = {f"{m}.pos": float for m in MOTORS}
    action_features = observation_features
    calibration_fpath = "follower.json"
    is_calibrated = True

    def __init__(self, q: list[float] | None = None, ranges: dict[str, tuple[int, int]] | None = None) -> None:
        from lerobot.motors.motors_bus import MotorCalibration

        self.q = {k: float(v) for k, v in zip(self.observation_features, q or [10.0 * i for i in range(6)],
                                              strict=True)}
        ranges = ranges or {}
        self.calibration = {m: MotorCalibration(id=i + 1, drive_mode=0, homing_offset=0,
                                                range_min=ranges.get(m, (1000, 3000))[0],
                                                range_max=ranges.get(m, (1000, 3000))[1])
                            for i, m in enumerate(MOTORS)}
        self.sent: list[dict] = []
        self.is_connected = False

    def connect(self, calibrate: bool = True) -> None:
        assert calibrate is False, "the actor must never start lerobot's interactive calibration"
        self.is_connected = True

    def get_observation(self) -> dict:
        return dict(self.q)

    def send_action(self, action: dict) -> dict:
        self.sent.append(dict(action))
        self.q.update(action)
        return action

    def disconnect(self) -> None:
        self.is_connected = False


class StubKinematics:
    """Stands in for lerobot's RobotKinematics (which needs an arm's URDF): FK puts the end effector at the
    first three joints / 100 (m) with identity rotation; IK is its exact inverse. lerobot's processor steps
    call these two methods."""

    def forward_kinematics(self, q: np.ndarray) -> np.ndarray:
        t = np.eye(4)
        t[:3, 3] = np.asarray(q[:3], dtype=float) / 100.0
        return t

    def inverse_kinematics(self, q: np.ndarray, t: np.ndarray) -> np.ndarray:
        out = np.array(q, dtype=float)
        out[:3] = t[:3, 3] * 100.0
        return out
