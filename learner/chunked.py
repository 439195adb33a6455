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
networks, normalisation, checkpoints, the camera encoder and the steps of the update — is `TD3`'s;
`ChunkedTD3` overrides only the hooks of `TD3.update`. The plain one-step `TD3` is used whenever ``chunk == 1``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from hilrl.learner.td3 import TD3, UpdateInputs


def chunk_target(reward: Tensor, done: Tensor, next_q: Tensor, gamma: float) -> Tensor:
    """``sum_{k<h} gamma^k r_k + gamma^h (1 - done) next_q``; reward ``[B, h]``, done and next_q ``[B]``."""
    h = reward.shape[-1]
    discounts = gamma ** torch.arange(h, device=reward.device, dtype=reward.dtype)
    return (reward * discounts).sum(-1) + gamma**h * (1.0 - done) * next_q


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over the entries where `mask` is 1 (0 when there are none)."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class ChunkedTD3(TD3):
    """`TD3` whose policy emits ``h`` actions and whose critic scores ``(s, a_t..a_{t+h-1})``.

    Only the hooks of `TD3.update` differ: the window layout (`inputs`), the h-step target
    (`td_target`), the critic loss over valid windows (`critic_loss`) and BC over real steps (`bc_loss`).

    ``batch``: "state" [B,S], "action" [B,h,A] (raw, in bounds), "reward" [B,h], "next_state" [B,S]
    (s_{t+h}), "done" [B], "valid" [B], "action_mask" [B,h], optional "human" [B]; camera policies
    also "images" / "next_images". Metrics as `TD3.update`, plus "valid_share".
    """

    @property
    def chunk(self) -> int:
        return self.policy_cfg.chunk

    def inputs(self, batch: dict[str, Any]) -> UpdateInputs:
        h, a_dim = self.chunk, self.policy_cfg.action_dim
        if tuple(batch["action"].shape[1:]) != (h, a_dim):
            raise ValueError(f"chunked update: action must be [B, {h}, {a_dim}], got {list(batch['action'].shape)}")
        x = super().inputs(batch)  # normalised [B, h, A] actions; reward and masks replaced below
        valid = batch["valid"].to(self.device, torch.float32).reshape(-1)
        return replace(x, action=x.action.flatten(1),  # [B, h * A]
                       reward=batch["reward"].to(self.device, torch.float32),  # [B, h]
                       masks={"valid": valid, "action_mask": batch["action_mask"].to(self.device, torch.float32)},
                       metrics={"valid_share": valid.mean()})

    def td_target(self, x: UpdateInputs, next_q: Tensor) -> Tensor:
        return chunk_target(x.reward, x.done, next_q, self.cfg.gamma)

    def critic_loss(self, x: UpdateInputs, q1: Tensor, q2: Tensor, target_q: Tensor) -> Tensor:
        """Only windows that stay inside one episode."""
        valid = x.masks["valid"]
        return masked_mean((q1 - target_q) ** 2, valid) + masked_mean((q2 - target_q) ** 2, valid)

    def bc_loss(self, x: UpdateInputs, pi: Tensor) -> Tensor:
        """Every row's start state; BC on the human rows' real (unmasked) steps."""
        squared = ((pi - x.action) ** 2).unflatten(-1, (self.chunk, -1)).mean(-1)  # [B, h]
        step_mask = x.masks["action_mask"]
        if x.human is not None:
            step_mask = step_mask * x.human.reshape(-1, 1)
        return masked_mean(squared, step_mask)
