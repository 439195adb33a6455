"""What the actor needs of a robot: `Env` (an episode of observations and actions) and `Arm` (an `Env`
the control loop and the safety clamp drive: its hold action, whether an operator says go, where its
end effector is, its joint limits).

The sim (`hilrl.hardware.sim.SimPickCube`), the real SO-10x follower (`hilrl.hardware.so_arm.SOArm`)
and the wrappers around them (`OffsetArm`, the actor's `ResidualBaseEnv`) are `Arm`s; a class may
inherit `Arm` for its defaults (no operator go, the middle of the action bounds as hold, no end-effector
position, no joint limits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from hilrl.buffers.spec import Spec

Obs = dict[str, np.ndarray]


@dataclass(frozen=True)
class EndEffector:
    """Where the end effector is, for the workspace clamp of end-effector delta actions ``[dx, dy, dz, g]``.

    ``reference`` is what the robot adds the delta to: ``measured`` (the real arm: its forward kinematics)
    or ``commanded`` (the sim: the controller's own target, which moves by ``delta * step_m`` and is
    clipped to ``target_bounds``).
    """

    position: Callable[[Obs], np.ndarray]  # xyz in metres, from an observation
    step_m: float  # metres per action unit
    reference: Literal["measured", "commanded"] = "measured"
    target_bounds: tuple[np.ndarray, np.ndarray] | None = None


class Env(Protocol):
    """Episodes of observations and actions (`spec` says their features)."""

    spec: Spec

    def reset(self, seed: int | None = None) -> Obs: ...

    def step(self, action: np.ndarray) -> tuple[Obs, float, bool, bool, dict]: ...

    def close(self) -> None: ...


class Arm(Env, Protocol):
    """An `Env` the actor's control loop drives (inherit it for the defaults below)."""

    needs_go: bool = False  # the actor waits for the operator's go after every reset (a real arm)

    def hold_action(self) -> np.ndarray:
        """Keep still; by default the middle of the action bounds."""
        return middle_of_bounds(self.spec)

    def end_effector(self) -> EndEffector | None:
        """Where the end effector is, for end-effector actions; None: not known (or joint actions)."""
        return None

    def joint_limits(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(low, high) of absolute joint-target actions; None: the actions are not joint targets."""
        return None


GRIPPER_MODES = ("continuous", "states")
GRIPPER_MODE = "continuous"  # the default of the sim and the SO-10x in ee mode (docs/other-expert.md)
GRIPPER_HOLD_BAND = 0.0


def executed_gripper(g: float, mode: str = "continuous", hold_band: float = 0.0) -> float:
    """The incremental gripper command ``g`` (``[0, 2]``: 2 closes, 0 opens, 1 holds) as the arm executes it.

    ``continuous``: ``g`` itself, except that a command within ``hold_band`` of 1 holds exactly (a deadband:
    a policy's hold of 0.97 would otherwise open the gripper by 3 % every step, and 1.03 close it).
    ``states``: the gamepad's three states, the nearest of open (0), hold (1) and close (2); 0.5 opens and
    1.5 closes.
    """
    if mode == "states":
        return 0.0 if g <= 0.5 else 2.0 if g >= 1.5 else 1.0
    if mode != "continuous":
        raise ValueError(f"gripper mode must be one of {GRIPPER_MODES}, got {mode!r}")
    return 1.0 if abs(g - 1.0) < hold_band else float(g)


def middle_of_bounds(spec: Spec) -> np.ndarray:
    """The middle of the spec's action bounds (for the sim's ``[dx, dy, dz, g]``: no motion, gripper held)."""
    low = np.asarray(spec.action.low, dtype=np.float32)
    high = np.asarray(spec.action.high, dtype=np.float32)
    return (low + high) / 2
