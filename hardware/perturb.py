"""A miscalibrated arm: the sim with a constant offset on the executed end-effector motion.

Learning studies need an online stage with real work to do. Plain BC from 30 noisy scripted demos
already solves the unperturbed pick-cube ~94 % of the time, so `benchmarks/sample_efficiency.py` runs
the online stage on an arm whose motion commands are biased in a way the demonstrations never showed:
every executed ``[dx, dy, dz]`` is shifted by ``action_offset`` (action units, x 0.025 m), as if the
arm's Cartesian frame were miscalibrated or a joint drifted. The offset is applied after the caller's
own clipping and before the sim clips to its bounds, so the arm can still move in every direction.

Anyone acting on the perturbed arm feels the offset: the policy and also the scripted human (a
proportional controller, which ends up a few millimetres off target but still picks the block for
moderate offsets). ``action_offset=(0, 0, 0)`` is exactly the plain sim.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hilrl.hardware.arm import Arm, EndEffector
from hilrl.hardware.sim import SimPickCube


class OffsetArm(Arm):
    """`SimPickCube` (same spec, reset, step, close) whose executed xyz motion is shifted by a constant."""

    def __init__(self, env: SimPickCube, action_offset: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
        offset = np.asarray(action_offset, dtype=np.float32).reshape(-1)
        if offset.shape != (3,) or not np.all(np.isfinite(offset)):
            raise ValueError(f"action_offset must be 3 finite numbers [dx, dy, dz], got {action_offset!r}")
        if np.any(np.abs(offset) >= 1.0):
            raise ValueError(f"action_offset {offset.tolist()}: every component must be within (-1, 1) action "
                             "units, or the arm could no longer move against it")
        self.env = env
        self.spec = env.spec
        self.action_offset = offset

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        return self.env.reset(seed=seed)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        executed = np.array(action, dtype=np.float32).reshape(-1)
        if executed.shape != (4,):
            raise ValueError(f"action must have shape (4,), got {executed.shape}")
        executed[:3] += self.action_offset
        return self.env.step(executed)

    def end_effector(self) -> EndEffector:
        return self.env.end_effector()

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> OffsetArm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_sim(seed: int | None = None, action_offset: Sequence[float] = (0.0, 0.0, 0.0),
             max_steps: int = 100) -> SimPickCube | OffsetArm:
    """The plain sim when the offset is zero, else the sim behind `OffsetArm`."""
    env = SimPickCube(seed=seed, max_steps=max_steps)
    if not np.any(np.asarray(action_offset, dtype=np.float32)):
        return env
    return OffsetArm(env, action_offset)
