"""Labelled frames of the sim's pick-cube for training the success detector (`hilrl.learner.success_net`).

`render_labelled_episodes` drives gym-hil's Panda pick-cube with the scripted expert, renders the
front camera with shadows off, and labels every frame with the environment's own sparse success
criterion (the block lifted more than 0.1 m).
"""

from __future__ import annotations

import os

import numpy as np

KIND_CYCLE = (0, 1, 0, 1, 2)  # rendered episode kinds in turn: lift, drop, lift, drop, fumble


def render_labelled_episodes(episodes: int, seed: int, image_size: int = 64, camera: str = "front",
                             max_steps: int = 40, after_success: int = 10) -> dict[str, np.ndarray]:
    """Frames of gym-hil's pick-cube with ground-truth success labels (block lifted > 0.1 m: the env's reward).

    Episodes cycle through `KIND_CYCLE`: *lift* (the expert picks the block, then keeps it up for `after_success`
    steps), *drop* (picks it, then opens the gripper: the block falls, so the arm is up without it) or
    *fumble* (a very noisy expert for at most 25 steps, which mostly fails). Frames are rendered after
    every step, shadows off.
    Returns ``images`` uint8 [N, S, S, 3], ``labels`` bool [N], ``episode`` int64 [N], ``kind`` int64 [N]
    (0 lift, 1 drop, 2 fumble) and ``lift`` float32 [N] (block height above its start, m; label = lift > 0.1).
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium as gym
    import mujoco
    from gym_hil.wrappers.hil_wrappers import DEFAULT_EE_STEP_SIZE, EEActionWrapper

    from hilrl.hardware.expert import ScriptedExpert
    from hilrl.hardware.sim import ENV_ID

    if image_size > 128:
        raise ValueError(f"image_size {image_size}: gym-hil's offscreen buffer is 128x128")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = gym.make(ENV_ID, random_block_position=True, image_obs=False, disable_env_checker=True)
        env = EEActionWrapper(base, ee_action_step_size=DEFAULT_EE_STEP_SIZE, use_gripper=True)
    sim = env.unwrapped
    renderer = mujoco.Renderer(sim.model, image_size, image_size)
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    labels: list[bool] = []
    episode_ids: list[int] = []
    kinds: list[int] = []
    lifts: list[float] = []
    state = np.random.get_state()
    try:
        for ep in range(episodes):
            kind = KIND_CYCLE[ep % len(KIND_CYCLE)]
            expert = ScriptedExpert(noise=1.0 if kind == 2 else 0.1, seed=int(rng.integers(2**31 - 1)))
            np.random.seed(int(rng.integers(2**31 - 1)))  # gym-hil samples the block position from np.random
            obs, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
            z_init = float(sim.data.sensor("block_pos").data[2])
            succeeded_at = None
            for t in range(max_steps if kind != 2 else min(max_steps, 25)):
                o = {k: np.asarray(obs[k], np.float32) for k in ("agent_pos", "environment_state")}
                action = expert.act(o)
                if kind == 1 and succeeded_at is not None:
                    action = np.array([0.0, 0.0, 0.0, 0.0], np.float32)  # open: drop the block
                obs, reward, terminated, _, _ = env.step(action)
                renderer.update_scene(sim.data, camera=camera)
                renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                images.append(renderer.render().copy())
                labels.append(bool(reward > 0))
                lifts.append(float(sim.data.sensor("block_pos").data[2] - z_init))
                episode_ids.append(ep)
                kinds.append(kind)
                if reward > 0 and succeeded_at is None:
                    succeeded_at = t
                if succeeded_at is not None and t - succeeded_at >= after_success + (4 if kind == 1 else 0):
                    break
                if terminated and reward <= 0:  # block out of bounds
                    break
    finally:
        np.random.set_state(state)
        renderer.close()
        env.close()
    return {"images": np.stack(images), "labels": np.asarray(labels), "episode": np.asarray(episode_ids, np.int64),
            "kind": np.asarray(kinds, np.int64), "lift": np.asarray(lifts, np.float32)}
