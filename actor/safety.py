"""The safety clamp between the action source (policy or human) and the arm.

Every executed action passes :meth:`Safety.clamp`, in this order, and each clamp that changed the
action is counted (``Safety.counts``, reported in the actor's summary):

* ``nonfinite``: NaN/inf entries become the middle of their bounds (the policy path already turns a
  NaN output into a hold; this is the last line);
* ``bounds``: the spec's action bounds;
* ``delta``: at most ``max_delta`` change per step and per dimension from the previously executed
  action (action units: end-effector steps and gripper command in ``ee`` mode, degrees in ``joint``
  mode; the first step of an episode is measured from the hold action);
* ``workspace``: an end-effector box (metres). For a delta action ``[dx, dy, dz, g]`` the next target
  ``reference + d * step_m`` is kept inside the box; motion back into the box is always allowed,
  motion further out never. The reference is what the robot adds the delta to: the real arm's
  measured end effector (lerobot's ``EEReferenceAndDelta``, by forward kinematics); in the sim the
  controller's own target, which the clamp integrates from the commanded deltas since the episode's
  first observation (gym-hil moves its target by the delta, and the arm lags behind it by ~2 cm);
* ``joint_limits``: absolute joint targets within the arm's own limits (``joint`` mode; the real arm
  derives them from its lerobot calibration).

"Hold" is the robot's own ``Arm.hold_action()`` (hilrl.hardware.arm; real arm: the current joint positions
in joint mode, zero motion with the gripper held in ``ee`` mode; the sim: the middle of its bounds,
``[0, 0, 0, 1]``, zero motion, gripper as it is). A hold is never clamped. The end-effector position and
the joint limits are the arm's too (``Arm.end_effector()``, ``Arm.joint_limits()``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from hilrl.actor.interfaces import Link, Outbox
from hilrl.buffers.spec import Spec
from hilrl.hardware.arm import Arm

log = logging.getLogger(__name__)

CLAMPS = ("nonfinite", "bounds", "delta", "workspace", "joint_limits")


@dataclass
class SafetyLimits:
    """What the clamp enforces; ``None`` switches a clamp off."""

    max_delta: float | None = None
    workspace: tuple[np.ndarray, np.ndarray] | None = None  # (low xyz, high xyz) in metres
    ee_position: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
    ee_step_m: float = 0.0  # metres per action unit (the workspace clamp needs it)
    ee_reference: str = "measured"  # "measured" (real arm) or "commanded" (the sim's integrated target)
    target_bounds: tuple[np.ndarray, np.ndarray] | None = None  # where the robot itself clips its target
    joint_limits: tuple[np.ndarray, np.ndarray] | None = None


def parse_workspace(values: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(x0, y0, z0, x1, y1, z1)`` -> (low, high); ``()`` -> None. Raises ValueError on a bad box."""
    if not values:
        return None
    if len(values) != 6:
        raise ValueError(f"--workspace needs 6 numbers XMIN,YMIN,ZMIN,XMAX,YMAX,ZMAX (metres), got {len(values)}")
    low, high = np.asarray(values[:3], dtype=np.float64), np.asarray(values[3:], dtype=np.float64)
    if np.any(low >= high):
        raise ValueError(f"--workspace: every minimum must be below its maximum, got min {low} max {high}")
    return low, high


def limits_for(arm: Arm, max_delta: float, workspace: tuple[float, ...]) -> SafetyLimits:
    """The limits for this robot: its end-effector position and joint limits, where it has them.

    Raises ValueError when a workspace box is asked for but the robot cannot say where its end effector is.
    """
    box = parse_workspace(workspace)
    ee = arm.end_effector()
    if box is not None and ee is None:
        raise ValueError("--workspace needs end-effector actions and a robot that knows its end-effector position "
                         "(the sim, or the real arm in --action-mode ee with --urdf-path)")
    limits = SafetyLimits(max_delta=max_delta if max_delta > 0 else None, joint_limits=arm.joint_limits())
    if box is None or ee is None:
        return limits
    return replace(limits, workspace=box, ee_position=ee.position, ee_step_m=ee.step_m, ee_reference=ee.reference,
                   target_bounds=ee.target_bounds)


class Safety:
    """Clamp every executed action (see the module doc); counts what it changed."""

    def __init__(self, spec: Spec, limits: SafetyLimits) -> None:
        self.low = np.asarray(spec.action.low, dtype=np.float32)
        self.high = np.asarray(spec.action.high, dtype=np.float32)
        self.limits = limits
        self.counts = dict.fromkeys(CLAMPS, 0)
        self.previous: np.ndarray | None = None
        self._target: np.ndarray | None = None  # the sim controller's target (ee_reference "commanded")

    def reset(self, hold: np.ndarray) -> None:
        """A new episode: the first step's change is measured from the hold action."""
        self.previous = np.asarray(hold, dtype=np.float32)
        self._target = None

    def hold(self, hold: np.ndarray) -> np.ndarray:
        """The hold action, executed as it is (only NaN-checked); it becomes the previous action."""
        action = np.asarray(hold, dtype=np.float32)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"the robot's hold action is not finite: {action}")
        self.previous = action
        self._advance_target(action)
        return action

    def clamp(self, action: np.ndarray, obs: dict[str, np.ndarray]) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64).reshape(-1).copy()
        mid = (self.low.astype(np.float64) + self.high) / 2
        a = self._count("nonfinite", a, np.where(np.isfinite(a), a, mid))
        a = self._count("bounds", a, np.clip(a, self.low, self.high))
        lim = self.limits
        if lim.max_delta is not None and self.previous is not None:
            prev = self.previous.astype(np.float64)
            a = self._count("delta", a, np.clip(a, prev - lim.max_delta, prev + lim.max_delta))
        if lim.workspace is not None and lim.ee_position is not None:
            if lim.ee_reference == "measured" or self._target is None:
                self._target = np.asarray(lim.ee_position(obs), dtype=np.float64)
            a = self._count("workspace", a, self._workspace(a, self._target))
        if lim.joint_limits is not None:
            a = self._count("joint_limits", a, np.clip(a, *lim.joint_limits))
        out = np.clip(a, self.low, self.high).astype(np.float32)
        self.previous = out
        self._advance_target(out)
        return out

    def _advance_target(self, action: np.ndarray) -> None:
        """Integrate the commanded delta into the sim controller's target (as gym-hil does, clipped)."""
        lim = self.limits
        if lim.ee_reference != "commanded" or self._target is None:
            return
        target = self._target + action[:3].astype(np.float64) * lim.ee_step_m
        self._target = np.clip(target, *lim.target_bounds) if lim.target_bounds is not None else target

    def _workspace(self, a: np.ndarray, ee: np.ndarray) -> np.ndarray:
        low, high = self.limits.workspace  # type: ignore[misc]
        step = self.limits.ee_step_m
        ee = np.asarray(ee, dtype=np.float64)
        up = np.maximum((high - ee) / step, 0.0)    # never further out; back in is always allowed
        down = np.minimum((low - ee) / step, 0.0)
        out = a.copy()
        out[:3] = np.clip(a[:3], down, up)
        return out

    def _count(self, name: str, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        if not np.array_equal(before, after):
            self.counts[name] += 1
            log.debug("safety clamp %s: %s -> %s", name, before, after)
        return after


class LearnerWatch:
    """Is the learner reachable? Lost = not connected, or batches waiting and none acknowledged, for ``after_s``.

    A learner that is frozen (SIGSTOP, a stalled disk) keeps its TCP connection open for a while, so
    the outbox's acknowledgements are the quicker signal. Each change is said once on the console.
    """

    def __init__(self, link: Link, outbox: Outbox, after_s: float, mode: str,
                 clock: Callable[[], float] | None = None) -> None:
        self.link, self.outbox, self.after_s, self.mode = link, outbox, float(after_s), mode
        self.clock = clock or time.monotonic
        self._good = self.clock()
        self._acked = outbox.last_acked
        self.is_lost = False
        self.episodes = 0  # how many times the learner was lost

    def lost(self, version: int = 0) -> bool:
        now = self.clock()
        connected = self.link.connected.is_set()
        acked = self.outbox.last_acked
        waiting = self.outbox.nbytes > 0  # no lock: len() would wait out the writer's fsync
        if connected and (acked != self._acked or not waiting):
            self._good = now
        self._acked = acked
        lost = now - self._good > self.after_s
        if lost and not self.is_lost:
            self.episodes += 1
            what = (f"keeping the last good policy (v{version})" if self.mode == "keep" else
                    "holding the arm: no policy episode runs until it is back")
            log.warning("learner lost: nothing from it for %.1fs (%d batches waiting in the outbox); %s",
                        now - self._good, len(self.outbox), what)
        elif not lost and self.is_lost:
            log.warning("learner back; %s", "policy episodes resume" if self.mode == "hold" else "streaming resumes")
        self.is_lost = lost
        return lost

    @property
    def hold(self) -> bool:
        """The policy must not act now (mode hold and the learner lost at the last check)."""
        return self.mode == "hold" and self.is_lost
