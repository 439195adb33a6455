"""Simulated Panda arm: gym-hil's pick-cube task behind a small, spec-checked interface.

The environment is ``gym_hil/PandaPickCubeBase-v0`` (random block position, state observations only)
wrapped by gym-hil's ``EEActionWrapper(use_gripper=True)``. None of gym-hil's other wrappers are used:
no ``ResetDelayWrapper`` (it sleeps 1 s per reset), no gripper penalty, no viewer, no input control.

Observations (float32):

* ``agent_pos`` (18,): ``[0:7]`` the seven Panda joint angles (rad), ``[7:14]`` the joint
  velocities (rad/s), ``[14]`` the *commanded* gripper position in ``[0, 255]`` (0 open, 255 closed;
  this is the actuator set-point, not the measured finger opening, so it reads 255 even while the
  fingers are still closing or are stopped by the block), ``[15:18]`` the xyz position (m, world frame)
  of the gripper's pinch point (the tool centre point between the finger tips).
* ``environment_state`` (3,): xyz position (m) of the centre of the 4 cm block; it rests at z = 0.02.

Cameras (``cameras=True``, uint8 ``(128, 128, 3)`` each, HWC RGB): ``front`` (a fixed view of the
table) and ``wrist`` (the hand camera), rendered by gym-hil with MuJoCo (``MUJOCO_GL=egl`` headless)
with shadows and multisampling off (`_lighter_rendering`; benchmarks/sim_render.py: 0.6 steps/s with
gym-hil's settings, 4.4 with shadows off, 5.9 with multisampling off too, on a busy 2-core box). With
cameras, ``environment_state`` is *privileged* (a real
arm does not know where the block is): it leaves the observation and the spec (``privileged=False``,
the default with cameras), so it never reaches the stream, the store or the policy; the scripted
human, who sees the scene as a person would, reads it from `scene()` instead.

Action (float32, 4): ``[dx, dy, dz, g]`` in ``[-1, 1]^3 x [0, 2]``; anything outside is clipped.
``dx, dy, dz`` move the Cartesian target of the operational-space controller by 0.025 m per unit
(the target is clipped to x in [0.2, 0.6], y in [-0.3, 0.3], z in [0, 0.5]; the arm follows it).
``g`` is *incremental*: the wrapper maps it to ``g - 1`` and adds that to the normalised gripper
set-point, clipped to ``[0, 1]``. So 2 closes fully and 0 opens fully in one step, 1 holds, and a
continuous value such as 1.3 closes by a further 30 % of the stroke each step (it reaches fully closed
after four steps), while 0.7 opens by 30 % per step.

Episode: sparse reward 1.0 when the block is lifted more than 0.1 m above its initial height; the
episode terminates on that success or when the block leaves the sampling area (by 5 cm), and is
truncated (``terminated=False``) after ``max_steps`` steps. One step is 0.1 s of simulated time.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import gym_hil  # noqa: E402, F401  (registers the gym_hil/* environments)
import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gym_hil.wrappers.hil_wrappers import DEFAULT_EE_STEP_SIZE, EEActionWrapper  # noqa: E402

from hilrl.buffers.spec import Feature, Spec  # noqa: E402
from hilrl.hardware.arm import GRIPPER_HOLD_BAND, GRIPPER_MODE, Arm, EndEffector, executed_gripper  # noqa: E402

ENV_ID = "gym_hil/PandaPickCubeBase-v0"
ACTION_LOW = (-1.0, -1.0, -1.0, 0.0)
ACTION_HIGH = (1.0, 1.0, 1.0, 2.0)
AGENT_POS_DIM = 18
STEP_SIZE_M = 0.025  # metres per action unit (gym-hil's default EE step size)

# Index layout of agent_pos (see the module docstring).
QPOS = slice(0, 7)
QVEL = slice(7, 14)
GRIPPER = 14
TCP = slice(15, 18)
TARGET_BOUNDS = (np.array([0.2, -0.3, 0.0]), np.array([0.6, 0.3, 0.5]))  # gym-hil clips its EE target to these
GRIPPER_CLOSED = 255.0
CAMERAS = ("front", "wrist")  # gym-hil's two cameras (its "handcam_rgb" is called "wrist" in its observation)
IMAGE_SHAPE = (128, 128, 3)


class _NoRenderer:
    """Stand-in for ``mujoco.Renderer``: gym-hil's constructor builds and renders one unconditionally."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def update_scene(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("SimPickCube is state-only; rendering is disabled")

    def render(self, *args: Any, **kwargs: Any) -> None:
        return None  # only called once, inside gym-hil's constructor

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _rendering_disabled() -> Iterator[None]:
    original = mujoco.Renderer
    mujoco.Renderer = _NoRenderer  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        mujoco.Renderer = original  # type: ignore[misc]


@contextlib.contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """gym-hil samples the block position from the global ``np.random``; seed it, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _lighter_rendering(sim: Any, image_size: int) -> None:
    """Rendering settings that change nothing the policy needs (benchmarks/sim_render.py measures them):
    no shadows (~7x the render time) and no 8x multisampling (gym-hil's scene.xml asks for it; it only
    smooths edges: mean |pixel difference| under 1 of 255, and 1.3-1.6x the render time in software GL)."""
    sim._viewer.close()
    sim._model.vis.quality.offsamples = 0
    sim._viewer = mujoco.Renderer(sim._model, height=image_size, width=image_size)
    sim._viewer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False


def pinch_point(obs: dict[str, np.ndarray]) -> np.ndarray:
    """The sim's end-effector position (metres) in an observation."""
    return np.asarray(obs["agent_pos"][TCP], dtype=np.float64)


class SimPickCube(Arm):
    """The gym-hil Panda pick-cube task, state observations, 4-d end-effector action (an `Arm`: it
    holds with the middle of its bounds, needs no go, and knows its pinch point from the observation)."""

    gripper_mode = GRIPPER_MODE  # how `step` executes the gripper command (hardware.arm.executed_gripper)
    gripper_hold_band = GRIPPER_HOLD_BAND

    def __init__(self, seed: int | None = None, max_steps: int = 100, cameras: bool = False,
                 privileged: bool | None = None, image_size: int = IMAGE_SHAPE[0]) -> None:
        self.max_steps = int(max_steps)
        if not 32 <= int(image_size) <= 512:
            raise ValueError(f"image_size must be 32-512 pixels, got {image_size}")
        self.image_shape = (int(image_size), int(image_size), 3)
        self.cameras = CAMERAS if cameras else ()
        self.privileged = not cameras if privileged is None else privileged  # environment_state in the spec
        self._rng = np.random.default_rng(seed)
        with contextlib.nullcontext() if cameras else _rendering_disabled():
            base = gym.make(
                ENV_ID,
                random_block_position=True,
                image_obs=bool(cameras),
                disable_env_checker=True,
                max_episode_steps=self.max_steps,  # we count steps ourselves; keep TimeLimit in step
            )
        if cameras:
            _lighter_rendering(base.unwrapped, self.image_shape[0])
        with warnings.catch_warnings():  # its float64 -> float32 Box bounds are exact; silence the warning
            warnings.filterwarnings("ignore", message=".*precision lowered.*")
            self._env = EEActionWrapper(base, ee_action_step_size=DEFAULT_EE_STEP_SIZE, use_gripper=True)
        self.spec = Spec(
            observation=(
                Feature("agent_pos", "float32", (AGENT_POS_DIM,)),
                *((Feature("environment_state", "float32", (3,)),) if self.privileged else ()),
                *(Feature(name, "uint8", self.image_shape) for name in self.cameras),
            ),
            action=Feature("action", "float32", (4,), ACTION_LOW, ACTION_HIGH),
        )
        self._low = np.asarray(ACTION_LOW, dtype=np.float32)
        self._high = np.asarray(ACTION_HIGH, dtype=np.float32)
        self._steps = 0
        self._needs_reset = True

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode; ``seed`` re-seeds the block placement stream (reproducible episodes)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        episode_seed = int(self._rng.integers(2**31 - 1))
        with _global_numpy_seed(episode_seed):
            obs, _ = self._env.reset(seed=episode_seed)
        self._steps = 0
        self._needs_reset = False
        return self._observation(obs)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        """Apply one (clipped) action for 0.1 s; returns obs, reward, terminated, truncated, info."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (and after an episode ended)")
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (4,):
            raise ValueError(f"action must have shape (4,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError("action contains NaN or inf")
        action = np.clip(action, self._low, self._high)
        action[3] = executed_gripper(float(action[3]), self.gripper_mode, self.gripper_hold_band)
        obs, reward, terminated, _, info = self._env.step(action)
        self._steps += 1
        success = bool(info.get("succeed", False))
        terminated = bool(terminated)
        truncated = not terminated and self._steps >= self.max_steps
        self._needs_reset = terminated or truncated
        return self._observation(obs), float(reward), terminated, truncated, {"success": success}

    def scene(self) -> dict[str, np.ndarray]:
        """What a person watching the arm knows and the observation may not hold: the block position
        (``environment_state``), for the scripted human only."""
        return {"environment_state": np.asarray(self._env.unwrapped._data.sensor("block_pos").data,
                                                dtype=np.float32).copy()}

    def end_effector(self) -> EndEffector:
        """The pinch point (``agent_pos[TCP]``); gym-hil moves its own target by each delta (clipped to
        `TARGET_BOUNDS`), and the arm lags behind that target by ~2 cm."""
        return EndEffector(pinch_point, STEP_SIZE_M, "commanded", TARGET_BOUNDS)

    def close(self) -> None:
        self._env.close()

    def _observation(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.cameras:  # gym-hil's image observation has no block position: read its sensor
            pixels = obs["pixels"]
            block = self._env.unwrapped._data.sensor("block_pos").data
            obs = {"agent_pos": obs["agent_pos"], "environment_state": block}
        names = [f.name for f in self.spec.state_features]
        out = {name: np.asarray(obs[name], dtype=np.float32).copy() for name in names}
        for name in self.cameras:
            out[name] = np.ascontiguousarray(pixels[name], dtype=np.uint8).copy()
        self.spec.check_observation(out)
        return out

    def __enter__(self) -> SimPickCube:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
