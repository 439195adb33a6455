"""Action-chunked TD3 / TD3+BC (Q-chunking, Li, Zhou & Levine 2025) on contiguous h-step windows.

The policy outputs a chunk of ``h`` actions at once and the critic scores the whole chunk
(`PolicyConfig.chunk = h`: the actor head has ``h * A`` outputs, the critic input is ``s + h * A``).
One `ChunkedTD3.update` on a batch of windows (`buffers.sequences`):

    A   = (a_t, ..., a_{t+h-1})                                  (normalised, flattened to h * A)
    A'  = clip(pi'(s_{t+h}) + clip(N(0, policy_noise), -c, c), -1, 1)
    y   = sum_{k<h} gamma^k r_{t+k} + gamma^h * (1 - done) * min(Q1'(s_{t+h}, A'), Q2'(s_{t+h}, A'))
    L_Q = mean_valid (Q1(s_t, A) - y)^2 + mean_valid (Q2(s_t, A) - y)^2
    every `policy_delay` critic steps:
        L_pi = -lambda * mean Q1(s_t, pi(s_t)) + bc_weight * mean_{human rows, real steps} (pi(s_t) - A)^2
               (TD3+BC: lambda = alpha / mean|Q1| detached; pure TD3 when bc_weight = 0: L_pi = -mean Q1)
        targets <- Polyak

``valid`` (see buffers/sequences.py) drops windows whose episode ends before their last step
(terminal or truncation inside the chunk, a takeover switch); ``done`` is a terminal at the last
step. The h-step return is unbiased because the critic conditions on all h executed actions: no
off-policy correction is needed (the point of Q-chunking over n-step returns). Everything else —
networks, normalisation, checkpoints, the camera encoder — is `TD3`'s; the plain one-step update in
`learner/td3.py` is untouched and used whenever ``chunk == 1``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hilrl.learner.td3 import TD3


def chunk_target(reward: Tensor, done: Tensor, next_q: Tensor, gamma: float) -> Tensor:
    """``sum_{k<h} gamma^k r_k + gamma^h (1 - done) next_q``; reward ``[B, h]``, done and next_q ``[B]``."""
    h = reward.shape[-1]
    discounts = gamma ** torch.arange(h, device=reward.device, dtype=reward.dtype)
    return (reward * discounts).sum(-1) + gamma**h * (1.0 - done) * next_q


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over the entries where `mask` is 1 (0 when there are none)."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class ChunkedTD3(TD3):
    """`TD3` whose policy emits ``h`` actions and whose critic scores ``(s, a_t..a_{t+h-1})``."""

    @property
    def chunk(self) -> int:
        return self.policy_cfg.chunk

    def update(self, batch: dict[str, Any], bc_weight: float, update_actor: bool = True,
               return_tensors: bool = False) -> dict[str, Any]:
        """One critic step (and every `policy_delay` steps one actor step + targets) on a window batch.

        ``batch``: "state" [B,S], "action" [B,h,A] (raw, in bounds), "reward" [B,h], "next_state" [B,S]
        (s_{t+h}), "done" [B], "valid" [B], "action_mask" [B,h], optional "human" [B]; camera policies
        also "images" / "next_images". Metrics as `TD3.update`, plus "valid_share".
        """
        cfg, dev, h = self.cfg, self.device, self.chunk
        fmaps, next_fmaps = self.encode_batch(batch)
        state = self.policy.normalize_state(batch["state"].to(dev, torch.float32))
        next_state = self.policy.normalize_state(batch["next_state"].to(dev, torch.float32))
        action = self.policy.normalize_action(batch["action"].to(dev, torch.float32)).clamp(-1.0, 1.0)
        if action.shape[1:] != (h, self.policy_cfg.action_dim):
            raise ValueError(f"chunked update: action must be [B, {h}, {self.policy_cfg.action_dim}], "
                             f"got {list(action.shape)}")
        action = action.flatten(1)  # [B, h * A]
        reward = batch["reward"].to(dev, torch.float32)
        done = batch["done"].to(dev, torch.float32).reshape(-1)
        valid = batch["valid"].to(dev, torch.float32).reshape(-1)

        # ---- critic: h-step target, only windows that stay inside one episode ----
        with torch.no_grad():
            noise = torch.randn(action.shape, device=dev, generator=self.generator) * cfg.policy_noise
            noise = noise.clamp(-cfg.noise_clip, cfg.noise_clip)
            next_action = (self.target_policy.actor(next_state, next_fmaps) + noise).clamp(-1.0, 1.0)
            target_q1, target_q2 = self.target_critic(next_state, next_action, next_fmaps)
            target_q = chunk_target(reward, done, torch.min(target_q1, target_q2), cfg.gamma)
        q1, q2 = self.critic(state, action, fmaps)
        critic_loss = masked_mean((q1 - target_q) ** 2, valid) + masked_mean((q2 - target_q) ** 2, valid)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.total_it += 1
        metrics: dict[str, Tensor] = {"critic_loss": critic_loss.detach(), "q_mean": q1.detach().mean(),
                                      "valid_share": valid.mean()}

        # ---- delayed actor + targets (every row's start state; BC on the human rows' real steps) ----
        if self.total_it % cfg.policy_delay == 0 and not update_actor:
            self._soft_update(self.critic, self.target_critic)
        elif self.total_it % cfg.policy_delay == 0:
            feats = None if fmaps is None else fmaps.detach()
            pi = self.policy.actor(state, feats)
            q = self.critic.q1(state, pi, feats)
            squared = ((pi - action) ** 2).unflatten(-1, (h, -1)).mean(-1)  # [B, h]
            step_mask = batch["action_mask"].to(dev, torch.float32)
            human = batch.get("human")
            if human is not None:
                step_mask = step_mask * human.to(dev, torch.float32).reshape(-1, 1)
            bc_loss = masked_mean(squared, step_mask)
            self._actor_step(q, bc_loss, bc_weight, metrics)  # TD3+BC's actor loss, as in td3.py
        return self._metrics(metrics, return_tensors)
