"""A second scripted pick-cube expert that works differently from :class:`ScriptedExpert`.

It exists to produce demonstrations that are *not* the repository's own expert's (issue 16, item 5:
"the learner takes other people's data well"). What differs, on purpose:

* **Approach path.** `ScriptedExpert` travels at a hover height, stops above the block and descends
  vertically. This one swoops: its target is the block centre raised by ``SLOPE`` x the remaining
  horizontal distance (capped at ``CEILING``), so the pinch point comes down a cone around the block
  and descends while it travels (a diagonal path, not an L).
* **Timing.** Speed-limited motion (the xyz command is scaled so its norm is at most ``MAX_SPEED`` action
  units; `ScriptedExpert` saturates each axis at 1), a lower gain, and a longer settle after closing.
* **Gripper pattern.** It closes in increments (``g = 1.5``: half the stroke per step, two steps to close)
  and holds with ``g = 1`` (no change) while lifting, instead of commanding ``g = 2`` throughout; it
  re-opens with ``g = 0.5`` steps. The lift also drifts towards the middle of the workspace.
* **Noise.** Temporally correlated: an Ornstein-Uhlenbeck process per xyz axis
  (``x <- x - THETA * x + sigma * N(0, 1)``, scaled so its stationary std is ``noise``), instead of white
  Gaussian noise. A slow OU wander is what an imprecise hand looks like; it biases whole stretches of a
  motion rather than single steps.

Like `ScriptedExpert` it decides from the observation alone (plus two counters that :meth:`reset` clears),
so it recovers from a miss: closed on nothing -> open and back off upwards, then swoop again.
"""

from __future__ import annotations

import numpy as np

from hilrl.hardware.sim import ACTION_HIGH, ACTION_LOW, GRIPPER, GRIPPER_CLOSED, STEP_SIZE_M, TCP


class SwoopExpert:
    """Swoop down a cone onto the block, close in two increments, settle, lift while drifting inwards.

    ``noise``: stationary std (action units, x 0.025 m) of the Ornstein-Uhlenbeck noise on xyz; ``seed``
    seeds it. Actions are clipped to the action bounds.
    """

    SLOPE = 1.2  # target height above the grasp point per metre of horizontal distance (the cone)
    CEILING = 0.07  # ... capped at this height above the block centre
    GRASP_ABOVE = 0.003  # pinch point this far above the block centre when closing
    ALIGN_XY = 0.010  # xy error small enough to close (with the z tolerance)
    GRASP_Z_TOL = 0.010
    HOLD_XY = 0.025  # block within this xy distance of the pinch point counts as between the fingers
    HOLD_Z = 0.03
    SETTLE = 4  # steps to hold still once the set-point reads fully closed
    REOPEN_WAIT = 3  # steps to back off after a miss before swooping again
    GAIN = 0.55  # fraction of the error corrected per step
    MAX_SPEED = 0.8  # norm bound of the xyz command (action units)
    LIFT = np.array([0.0, 0.0, 0.7])  # lift command; plus an inward drift (below)
    HOME_XY = np.array([0.4, 0.0])  # the middle of the reachable box (sim.py: x in [0.2, 0.6], y in [-0.3, 0.3])
    THETA = 0.15  # OU mean reversion per step (correlation time ~ 1 / THETA = 7 steps)

    def __init__(self, noise: float = 0.0, seed: int | None = None) -> None:
        self.noise = float(noise)
        self._rng = np.random.default_rng(seed)
        self._sigma = self.noise * np.sqrt(1.0 - (1.0 - self.THETA) ** 2)  # stationary std = noise
        self._low = np.asarray(ACTION_LOW, dtype=np.float32)
        self._high = np.asarray(ACTION_HIGH, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the counters and restart the noise process (call at every episode start or takeover)."""
        self._settled = 0  # steps held still with the set-point fully closed
        self._backing_off = 0  # steps left to back off after a miss
        self._ou = self._rng.normal(0.0, self.noise, size=3) if self.noise > 0 else np.zeros(3)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """One action ``[dx, dy, dz, g]`` (float32, within the action bounds) for this observation."""
        agent = np.asarray(obs["agent_pos"], dtype=np.float64)
        tcp = agent[TCP]
        block = np.asarray(obs["environment_state"], dtype=np.float64)
        setpoint = agent[GRIPPER] / GRIPPER_CLOSED  # 0 open .. 1 closed (commanded)
        err = block + np.array([0.0, 0.0, self.GRASP_ABOVE]) - tcp
        xy_err = float(np.linalg.norm(err[:2]))
        between = xy_err < self.HOLD_XY and abs(err[2]) < self.HOLD_Z

        if setpoint > 0.05 and between:  # closing or holding the block
            self._backing_off = 0
            if setpoint < 0.99:
                return self._finish(np.zeros(3), 1.5)  # close by another half stroke
            if self._settled < self.SETTLE:
                self._settled += 1
                return self._finish(np.zeros(3), 1.0)
            inward = np.clip((self.HOME_XY - tcp[:2]) / STEP_SIZE_M * 0.05, -0.2, 0.2)
            return self._finish(self.LIFT + np.array([inward[0], inward[1], 0.0]), 1.0)
        self._settled = 0

        if setpoint > 0.05:  # closed on nothing: open gradually while backing off upwards
            self._backing_off = self.REOPEN_WAIT
            return self._finish(self._towards(tcp, np.array([tcp[0], tcp[1], block[2] + self.CEILING])), 0.5)
        if self._backing_off > 0:
            self._backing_off -= 1
            return self._finish(self._towards(tcp, np.array([tcp[0], tcp[1], block[2] + self.CEILING])), 0.0)

        if xy_err < self.ALIGN_XY and abs(err[2]) < self.GRASP_Z_TOL:
            return self._finish(np.zeros(3), 1.5)  # at the grasp point: start closing
        height = min(self.SLOPE * xy_err, self.CEILING - self.GRASP_ABOVE)
        target = block + np.array([0.0, 0.0, self.GRASP_ABOVE + height])
        if tcp[2] < target[2] - 0.02 and xy_err > self.HOLD_XY:  # below the cone off to the side: up first
            target = np.array([tcp[0], tcp[1], target[2]])
        return self._finish(self._towards(tcp, target), 0.0)

    def _towards(self, tcp: np.ndarray, target: np.ndarray) -> np.ndarray:
        step = self.GAIN * (target - tcp) / STEP_SIZE_M
        norm = float(np.linalg.norm(step))
        return step * (self.MAX_SPEED / norm) if norm > self.MAX_SPEED else step

    def _finish(self, xyz: np.ndarray, gripper: float) -> np.ndarray:
        if self.noise > 0:
            self._ou = (1.0 - self.THETA) * self._ou + self._sigma * self._rng.normal(size=3)
            xyz = xyz + self._ou
        action = np.concatenate([xyz, [gripper]]).astype(np.float32)
        return np.clip(action, self._low, self._high)


# LeRobot's usual names for a state-only gym-hil recording; `hilrl learner --demos` maps them onto the sim's
# feature names with LEARNER_MAP (docs/datasets.md).
FEATURE_NAMES = {"agent_pos": "observation.state", "environment_state": "observation.environment_state"}
LEARNER_MAP = ("--demo-map.state", "observation.state=agent_pos", "observation.environment_state=environment_state",
               "--demo-map.action-low", "-1", "-1", "-1", "0", "--demo-map.action-high", "1", "1", "1", "2")


def record_lerobot(root, episodes: int, noise: float, seed: int, max_steps: int = 100) -> dict:
    """Record `episodes` SwoopExpert episodes on the sim with lerobot's own ``LeRobotDataset`` writer.

    One frame per step the way lerobot's recorders write them: the observation before the step, the action,
    ``next.reward`` and ``next.done`` (true on a success; a timeout ends the episode without it). State
    features only (``observation.state`` = the sim's ``agent_pos``, ``observation.environment_state`` =
    the block position), no images, no hilrl metadata. Block positions come from ``seed``, the noise from
    ``seed + 1``. Returns the expert's success count and the step count.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from hilrl.hardware.sim import SimPickCube

    env = SimPickCube(seed=seed, max_steps=max_steps)
    expert = SwoopExpert(noise=noise, seed=seed + 1)
    features = {FEATURE_NAMES[f.name]: {"dtype": "float32", "shape": f.shape, "names": None}
                for f in env.spec.state_features}
    features.update({"action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "gripper"]},
                     "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
                     "next.done": {"dtype": "bool", "shape": (1,), "names": None}})
    ds = LeRobotDataset.create(f"local/{os.path.basename(str(root))}", fps=10, features=features, root=root,
                               robot_type="panda_sim", use_videos=False)
    successes = steps = 0
    try:
        for _ in range(episodes):
            obs, done = env.reset(), False
            expert.reset()
            while not done:
                action = expert.act(obs)
                next_obs, reward, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                ds.add_frame({**{FEATURE_NAMES[k]: v for k, v in obs.items()}, "action": action,
                              "next.reward": np.array([reward], np.float32), "next.done": np.array([terminated]),
                              "task": "pick up the cube"})
                obs, steps = next_obs, steps + 1
                successes += int(info["success"])
            ds.save_episode()
    finally:
        ds.finalize()
        env.close()
    return {"episodes": episodes, "successes": successes, "steps": steps, "noise": noise, "seed": seed}
