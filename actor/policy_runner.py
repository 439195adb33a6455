"""The policy on the actor: its action for an observation, with exploration noise, within the bounds."""

from __future__ import annotations

import logging
from collections import deque

import numpy as np
import torch

from hilrl.buffers.spec import Spec, state_vector
from hilrl.hardware.arm import Arm, middle_of_bounds
from hilrl.learner.networks import Policy
from hilrl.learner.residual import BASE_ACTION

log = logging.getLogger(__name__)


class PolicyRunner:
    """Deterministic policy plus Gaussian exploration noise, clamped to the action bounds.

    A chunked policy (``PolicyConfig.chunk`` h > 1, learner/chunked.py) plans h actions at once; `act`
    returns them one per call (open loop, fresh exploration noise on each) and plans again after the
    last. `drop_plan` discards the rest of a chunk: the loop calls it when a step is not the policy's
    (a takeover, a hold) and at every episode start, so a takeover stays instant.
    """

    def __init__(self, spec: Spec, noise: float, rng: np.random.Generator) -> None:
        self.spec = spec
        self.low = np.asarray(spec.action.low, dtype=np.float32)
        self.high = np.asarray(spec.action.high, dtype=np.float32)
        self.noise_std = noise * (self.high - self.low) / 2
        self.rng = rng
        self.policy: Policy | None = None
        self.version = 0
        self._plan: deque[np.ndarray] = deque()  # the rest of the current action chunk (chunked policies)

    def drop_plan(self) -> None:
        """Forget the rest of the current action chunk (the next `act` plans anew)."""
        self._plan.clear()

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], explore: bool) -> np.ndarray | None:
        """The policy's action (plus noise when exploring), clamped; None when the policy output is NaN/inf."""
        assert self.policy is not None
        chunked = self.policy.cfg.chunk > 1
        if chunked and self._plan:  # open loop: the next action of the current chunk
            action = self._plan.popleft()
        else:
            state = torch.from_numpy(state_vector(obs, self.spec)).unsqueeze(0)
            images = {f.name: torch.from_numpy(obs[f.name]).unsqueeze(0) for f in self.spec.image_features}
            action = self.policy(state, images or None)[0].numpy()
            if not np.all(np.isfinite(action)):
                log.error("policy v%d produced a non-finite action %s", self.version, action)
                return None
            if chunked:  # [h, A]: execute the first now, keep the rest
                self._plan.extend(action[1:])
                action = action[0]
        return self._explore(action, explore)

    def residual_bound(self) -> str | None:
        """A residual policy's bound on its correction, per action entry in the arm's units; None otherwise."""
        scale = self.policy.cfg.residual_scale if self.policy is not None else 0.0
        if scale <= 0:
            return None
        bound = np.round(scale * (self.high.astype(np.float64) - self.low) / 2, 4).tolist()
        return (f"residual policy: each action entry is the base's plus at most +-{bound} (scale {scale:g} x half "
                "the action range; in joint mode: degrees per joint, gripper units 0..100)")

    def act_base(self, obs: dict[str, np.ndarray], explore: bool) -> np.ndarray:
        """What the untrained residual policy does, before the learner's first weights: exactly the base's
        action (the ``base_action`` observation, learner/residual.py), plus noise when exploring, clamped."""
        return self._explore(np.asarray(obs[BASE_ACTION], dtype=np.float32), explore)

    def _explore(self, action: np.ndarray, explore: bool) -> np.ndarray:
        if explore and self.noise_std.any():
            action = action + self.rng.normal(0.0, 1.0, size=action.shape) * self.noise_std
        return self.clamp(action)

    def hold(self, arm: Arm) -> np.ndarray:
        """The arm's "do nothing" action (`Arm.hold_action`), within the bounds."""
        return self.clamp(arm.hold_action())

    def clamp(self, action: np.ndarray) -> np.ndarray:
        """The arm never receives an action outside the spec's bounds, or NaN (NaN -> the middle of the bounds)."""
        action = np.asarray(action, dtype=np.float32)
        if not np.all(np.isfinite(action)):
            log.error("non-finite action %s replaced by the hold action", action)
            action = np.where(np.isfinite(action), action, middle_of_bounds(self.spec))
        return np.clip(action, self.low, self.high).astype(np.float32)
