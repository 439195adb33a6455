"""A keyboard fallback for the gamepad, as a :class:`hilrl.hardware.human.HumanInput`.

Keys come from pynput's listener (the library lerobot's keyboard teleoperators use). We do not use
lerobot's ``KeyboardEndEffectorTeleop`` itself: in 0.4.4 it cannot run without an X display (its
``get_action`` dereferences ``pynput.keyboard.Key``, which it sets to None when ``DISPLAY`` is unset),
its ``_on_press`` only queues keys that have a ``.char`` (so arrows and shifts never arrive), and
its intervention is "any movement key held", which hands control back to the policy between two
key presses. The key map follows lerobot's keyboard controls where they exist:

==============  ==============================================  ===============================
key             meaning                                         lerobot origin
==============  ==============================================  ===============================
space (held)    takeover, like RB on the gamepad                (hilrl; lerobot has none)
up / down       +x / -x                                         gamepad_utils.KeyboardController
left / right    +y / -y                                         gamepad_utils.KeyboardController
right shift     +z (up)                                         gamepad_utils.KeyboardController
left shift      -z (down)                                       gamepad_utils.KeyboardController
left ctrl       close the gripper while held (g = 2)            keyboard_ee (ctrl_l closes)
right ctrl      open the gripper while held (g = 0)             keyboard_ee (ctrl_r opens)
s or enter      episode success                                 keyboard_ee / KeyboardController
q or backspace  episode failure                                 keyboard_ee / KeyboardController
r               re-record (discard the episode)                 keyboard_ee
esc             emergency stop (latched)                        lerobot: "ESC: exit"
g               go: start the next episode (real arm at rest)   (hilrl)
==============  ==============================================  ===============================

Events arrive through :meth:`KeyboardInput.on_press` / :meth:`KeyboardInput.on_release`, the
callbacks pynput's listener calls; tests call them directly (``listen=False``), no display needed.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import numpy as np

from hilrl.hardware.human import EpisodeEnd, HumanEvents

MOVES = {"up": (0, 1.0), "down": (0, -1.0), "left": (1, 1.0), "right": (1, -1.0),
         "shift_r": (2, 1.0), "shift": (2, -1.0), "shift_l": (2, -1.0)}
ENDS: dict[str, EpisodeEnd] = {"s": "success", "enter": "success", "q": "failure", "backspace": "failure",
                               "r": "rerecord"}
TAKEOVER_KEY = "space"
ESTOP_KEY = "esc"
GO_KEY = "g"
CLOSE_KEYS = ("ctrl", "ctrl_l")
OPEN_KEYS = ("ctrl_r",)


def key_name(key: Any) -> str | None:
    """pynput ``KeyCode`` (has ``.char``) or ``Key`` member (has ``.name``) -> 'a', 'space', 'up', ...

    Plain strings are accepted as names too.
    """
    if isinstance(key, str):
        return key.lower()
    char = getattr(key, "char", None)
    if char:
        return str(char).lower()
    name = getattr(key, "name", None)
    return str(name) if name else None


class KeyboardInput:
    """Takeover, verdicts and e-stop from the keyboard; ``[dx, dy, dz, g]`` actions.

    ``listen=True`` starts pynput's global listener (needs a desktop session: X11 ``DISPLAY`` on Linux);
    ``listen=False`` only takes events through :meth:`on_press`/:meth:`on_release`.
    """

    def __init__(self, scale: float = 1.0, listen: bool = True) -> None:
        self.scale = float(scale)
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._end: EpisodeEnd | None = None
        self._estop = False
        self._go = False
        self.demonstrating = False
        self._listener: Any = None
        if listen:
            self._listener = self._start_listener()

    def _start_listener(self) -> Any:
        if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
            raise RuntimeError(
                "keyboard input needs an X display: pynput reads keys through X11 and DISPLAY is not set. "
                "Run the actor inside the desktop session of the machine whose keyboard you use "
                "(or `export DISPLAY=:0` there), or use the gamepad (GamepadInput)."
            )
        try:
            from pynput import keyboard
        except Exception as exc:  # pynput raises ImportError subclasses and Xlib errors alike
            raise RuntimeError(f"keyboard input: pynput could not open the keyboard ({exc})") from exc
        listener = keyboard.Listener(on_press=self.on_press, on_release=self.on_release)
        listener.start()
        return listener

    def on_press(self, key: Any) -> None:
        """pynput callback: a key went down."""
        name = key_name(key)
        if name is None:
            return
        with self._lock:
            self._held.add(name)
            if name == ESTOP_KEY:
                self._estop = True
            elif name == GO_KEY:
                self._go = True
            elif name in ENDS:
                self._end = ENDS[name]

    def on_release(self, key: Any) -> None:
        """pynput callback: a key went up (a verdict already pressed stays until read)."""
        name = key_name(key)
        with self._lock:
            self._held.discard(name or "")

    def reset(self, demonstrating: bool = False) -> None:
        """New episode: drop verdicts typed between episodes (an e-stop stays latched)."""
        with self._lock:
            self.demonstrating = demonstrating
            self._end = None

    def poll(self, obs: dict[str, np.ndarray]) -> HumanEvents:
        """Takeover while space is held; a verdict is reported once; e-stop stays set."""
        with self._lock:
            end, self._end = self._end, None
            return HumanEvents(takeover=TAKEOVER_KEY in self._held, end=end, estop=self._estop)

    def go(self) -> bool:
        """g was pressed (go: start the next episode) since the last call."""
        with self._lock:
            pressed, self._go = self._go, False
            return pressed

    def action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Held movement keys -> unit steps (times ``scale``); ctrl keys -> gripper."""
        xyz = np.zeros(3, dtype=np.float64)
        with self._lock:
            held = set(self._held)
        for name in held:
            if name in MOVES:
                axis, sign = MOVES[name]
                xyz[axis] = np.clip(xyz[axis] + sign, -1.0, 1.0)
        closing, opening = bool(held & set(CLOSE_KEYS)), bool(held & set(OPEN_KEYS))
        g = 1.0 if closing == opening else (2.0 if closing else 0.0)
        return np.clip(np.array([*(xyz * self.scale), g], dtype=np.float32), [-1, -1, -1, 0], [1, 1, 1, 2]).astype(
            np.float32)

    def close(self) -> None:
        """Stop pynput's listener thread."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
