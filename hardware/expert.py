"""A scripted pick-cube expert for :class:`hilrl.hardware.sim.SimPickCube`.

It is a closed-loop state machine that decides every step from the observation alone (plus two tiny
counters that :meth:`ScriptedExpert.reset` clears), so it can take over at any point of an episode,
the way a human does during online RL: the arm may be anywhere, the gripper may be closed on nothing
or half-closed, the block may have been pushed or tilted.

What it reads (see :mod:`hilrl.hardware.sim`): the pinch point ``agent_pos[15:18]`` (the tool centre
point between the finger tips), the commanded gripper set-point ``agent_pos[14]`` in ``[0, 255]`` and
the block centre ``environment_state``. Decision per step:

1. *Holding* (gripper commanded closed and the block centred between the fingers): keep closed and lift.
   Right after closing it waits a few steps so the fingers actually close before lifting.
2. *Gripper closed (or partly closed) on nothing*: open it (``g = 0``) and move up to the hover height.
   After opening it waits a couple of steps before descending so the fingers are really open.
3. *Gripper open*: rise to a safe height if low and off to the side, move above the block, descend to
   the grasp height when aligned, and close when at it.
"""

from __future__ import annotations

import numpy as np

from hilrl.hardware.sim import ACTION_HIGH, ACTION_LOW, GRIPPER, GRIPPER_CLOSED, STEP_SIZE_M, TCP

G_OPEN, G_HOLD, G_CLOSE = 0.0, 1.0, 2.0


class ScriptedExpert:
    """Move above the block, descend, close the gripper for a few steps, lift.

    ``noise`` is the std (in action units, i.e. x 0.025 m) of Gaussian noise added to the xyz part of
    every action, for noisy demonstrations; the result is clipped to the action bounds. ``bias``
    (``[dx, dy, dz]``, action units) is a fixed offset added to every xyz command: a miscalibrated
    expert, the base policy of the residual study (benchmarks/residual_study.py).
    """

    # Geometry (metres). The block is a 4 cm cube; its centre rests at z = 0.02.
    HOVER_ABOVE = 0.06  # pinch point this far above the block centre while travelling
    GRASP_ABOVE = 0.0  # pinch point this far above the block centre when closing
    SAFE_ABOVE = 0.045  # below this (relative to the block centre) never travel sideways
    ALIGN_XY = 0.012  # xy error small enough to descend
    GRASP_Z_TOL = 0.012  # z error small enough to close
    HOLD_XY = 0.025  # block within this xy distance of the pinch point counts as "between the fingers"
    HOLD_Z = 0.03  # ... and within this z distance
    CLOSE_WAIT = 3  # steps to keep still after commanding close
    OPEN_WAIT = 2  # steps to wait at hover after commanding open
    GAIN = 0.8  # proportional gain (fraction of the error corrected per step)

    def __init__(self, noise: float = 0.0, seed: int | None = None, bias: tuple[float, ...] = ()) -> None:
        self.noise = float(noise)
        self.bias = np.zeros(3) if not bias else np.asarray(bias, dtype=np.float64).reshape(3)
        self._rng = np.random.default_rng(seed)
        self._low = np.asarray(ACTION_LOW, dtype=np.float32)
        self._high = np.asarray(ACTION_HIGH, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the internal counters (call at every episode start or takeover)."""
        self._closing = 0  # steps since close was commanded (while near the block)
        self._opening = 0  # steps left to wait after commanding open

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One action ``[dx, dy, dz, g]`` (float32, within the action bounds) for this observation."""
        agent = np.asarray(obs["agent_pos"], dtype=np.float64)
        tcp = agent[TCP]
        block = np.asarray(obs["environment_state"], dtype=np.float64)
        closed = agent[GRIPPER] > 0.05 * GRIPPER_CLOSED
        err = block - tcp
        xy_err = float(np.linalg.norm(err[:2]))
        between_fingers = xy_err < self.HOLD_XY and abs(err[2] - self.GRASP_ABOVE) < self.HOLD_Z

        if closed and between_fingers:
            self._opening = 0
            if self._closing < self.CLOSE_WAIT:
                self._closing += 1
                return self._finish(np.zeros(3), G_CLOSE)
            return self._finish(np.array([0.0, 0.0, 1.0]), G_CLOSE)  # lift
        self._closing = 0

        hover_z = block[2] + self.HOVER_ABOVE
        if closed:  # closed (or closing) on nothing: open and back off upwards
            self._opening = self.OPEN_WAIT
            return self._finish(self._towards(tcp, np.array([tcp[0], tcp[1], max(tcp[2], hover_z)])), G_OPEN)

        if xy_err > self.ALIGN_XY or self._opening > 0:
            self._opening = max(self._opening - 1, 0)
            if tcp[2] < block[2] + self.SAFE_ABOVE and xy_err > self.ALIGN_XY:
                target = np.array([tcp[0], tcp[1], hover_z])  # too low to travel: go up first
            else:
                target = np.array([block[0], block[1], hover_z])
            return self._finish(self._towards(tcp, target), G_OPEN)

        grasp = block + np.array([0.0, 0.0, self.GRASP_ABOVE])
        if abs(tcp[2] - grasp[2]) > self.GRASP_Z_TOL:
            return self._finish(self._towards(tcp, grasp), G_OPEN)  # descend
        self._closing = 1
        return self._finish(np.zeros(3), G_CLOSE)

    def _towards(self, tcp: np.ndarray, target: np.ndarray) -> np.ndarray:
        return self.GAIN * (target - tcp) / STEP_SIZE_M

    def _finish(self, xyz: np.ndarray, gripper: float) -> np.ndarray:
        xyz = xyz + self.bias
        if self.noise > 0:
            xyz = xyz + self._rng.normal(0.0, self.noise, size=3)
        action = np.concatenate([xyz, [gripper]]).astype(np.float32)
        return np.clip(action, self._low, self._high)
