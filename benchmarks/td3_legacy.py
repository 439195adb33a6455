"""Frozen reference: the TD3 / TD3+BC and chunked updates exactly as they were before the speed work.

`LegacyTD3` and `LegacyChunkedTD3` keep today's networks, checkpoints and encoder (inherited from
`TD3`), but their update is the old code, line for line: plain (for-loop) Adam, one Polyak `lerp_`
per parameter, the actor loss back-propagated into the critic as well, metrics as separate tensors.
`tests/test_td3_equivalence.py` checks that the new `TD3.update` / `ChunkedTD3.update` give the same
numbers (1e-5) and `benchmarks/td3_update.py` times both ("before" and "after"). Do not edit the
update rule here: it is the yardstick.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hilrl.learner.chunked import ChunkedTD3
from hilrl.learner.networks import PolicyConfig
from hilrl.learner.td3 import TD3, TD3Config


def _plain_adam(opt: torch.optim.Optimizer) -> torch.optim.Adam:
    """The same parameters and learning rate in the default (single-tensor, unfused) CPU Adam of before."""
    params = [p for group in opt.param_groups for p in group["params"]]
    return torch.optim.Adam(params, lr=opt.param_groups[0]["lr"], foreach=False, fused=False)


class LegacyTD3(TD3):
    """`TD3` with the update of commit 6fa8472 (before the update hooks and the speed levers)."""

    def __init__(self, policy_cfg: PolicyConfig, cfg: TD3Config, device: torch.device,
                 seed: int | None = None) -> None:
        super().__init__(policy_cfg, cfg, device, seed)
        self.actor_opt = _plain_adam(self.actor_opt)
        self.critic_opt = _plain_adam(self.critic_opt)

    def update(self, batch: dict[str, Any], bc_weight: float, update_actor: bool = True,
               return_tensors: bool = False) -> dict[str, Any]:
        cfg, dev = self.cfg, self.device
        fmaps, next_fmaps = self.encode_batch(batch)
        state = self.policy.normalize_state(batch["state"].to(dev, torch.float32))
        next_state = self.policy.normalize_state(batch["next_state"].to(dev, torch.float32))
        action = self.policy.normalize_action(batch["action"].to(dev, torch.float32)).clamp(-1.0, 1.0)
        reward = batch["reward"].to(dev, torch.float32).reshape(-1)
        done = batch["done"].to(dev, torch.float32).reshape(-1)

        with torch.no_grad():
            noise = torch.randn(action.shape, device=dev, generator=self.generator) * cfg.policy_noise
            noise = noise.clamp(-cfg.noise_clip, cfg.noise_clip)
            next_action = (self.target_policy.actor(next_state, next_fmaps) + noise).clamp(-1.0, 1.0)
            target_q1, target_q2 = self.target_critic(next_state, next_action, next_fmaps)
            target_q = reward + cfg.gamma * (1.0 - done) * torch.min(target_q1, target_q2)
        q1, q2 = self.critic(state, action, fmaps)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.total_it += 1

        metrics: dict[str, Tensor] = {"critic_loss": critic_loss.detach(), "q_mean": q1.detach().mean()}
        if self.total_it % cfg.policy_delay == 0 and not update_actor:
            self._legacy_soft_update(self.critic, self.target_critic)
        elif self.total_it % cfg.policy_delay == 0:
            feats = None if fmaps is None else fmaps.detach()
            pi = self.policy.actor(state, feats)
            q = self.critic.q1(state, pi, feats)
            squared = ((pi - action) ** 2).mean(dim=-1)
            human = batch.get("human")
            if human is None:
                bc_loss = squared.mean()
            else:
                human = human.to(dev, torch.float32).reshape(-1)
                bc_loss = (squared * human).sum() / human.sum().clamp_min(1.0)
            self._legacy_actor_step(q, bc_loss, bc_weight, metrics)
        return self._legacy_metrics(metrics, return_tensors)

    def _legacy_actor_step(self, q: Tensor, bc_loss: Tensor, bc_weight: float, metrics: dict) -> None:
        if bc_weight > 0:
            lmbda = self.cfg.alpha / q.abs().mean().detach()
            actor_loss = -lmbda * q.mean() + bc_weight * bc_loss
            metrics["lambda"] = lmbda
        else:
            actor_loss = -q.mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self._legacy_soft_update(self.policy.actor, self.target_policy.actor)
        self._legacy_soft_update(self.critic, self.target_critic)
        metrics["actor_loss"] = actor_loss.detach()
        metrics["bc_loss"] = bc_loss.detach()

    @staticmethod
    def _legacy_metrics(metrics: dict, return_tensors: bool) -> dict:
        if return_tensors:
            return metrics
        values = torch.stack(list(metrics.values())).tolist()
        return dict(zip(metrics.keys(), values, strict=True))

    @torch.no_grad()
    def _legacy_soft_update(self, net: nn.Module, target: nn.Module) -> None:
        for p, tp in zip(net.parameters(), target.parameters(), strict=True):
            tp.lerp_(p, self.cfg.tau)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class LegacyChunkedTD3(LegacyTD3):
    """`ChunkedTD3` with the chunked update of commit 6fa8472."""

    chunk = ChunkedTD3.chunk

    def update(self, batch: dict[str, Any], bc_weight: float, update_actor: bool = True,
               return_tensors: bool = False) -> dict[str, Any]:
        cfg, dev, h = self.cfg, self.device, self.chunk
        fmaps, next_fmaps = self.encode_batch(batch)
        state = self.policy.normalize_state(batch["state"].to(dev, torch.float32))
        next_state = self.policy.normalize_state(batch["next_state"].to(dev, torch.float32))
        action = self.policy.normalize_action(batch["action"].to(dev, torch.float32)).clamp(-1.0, 1.0)
        if action.shape[1:] != (h, self.policy_cfg.action_dim):
            raise ValueError(f"chunked update: action must be [B, {h}, {self.policy_cfg.action_dim}], "
                             f"got {list(action.shape)}")
        action = action.flatten(1)
        reward = batch["reward"].to(dev, torch.float32)
        done = batch["done"].to(dev, torch.float32).reshape(-1)
        valid = batch["valid"].to(dev, torch.float32).reshape(-1)

        with torch.no_grad():
            noise = torch.randn(action.shape, device=dev, generator=self.generator) * cfg.policy_noise
            noise = noise.clamp(-cfg.noise_clip, cfg.noise_clip)
            next_action = (self.target_policy.actor(next_state, next_fmaps) + noise).clamp(-1.0, 1.0)
            target_q1, target_q2 = self.target_critic(next_state, next_action, next_fmaps)
            discounts = cfg.gamma ** torch.arange(h, device=reward.device, dtype=reward.dtype)
            next_q = torch.min(target_q1, target_q2)
            target_q = (reward * discounts).sum(-1) + cfg.gamma**h * (1.0 - done) * next_q
        q1, q2 = self.critic(state, action, fmaps)
        critic_loss = _masked_mean((q1 - target_q) ** 2, valid) + _masked_mean((q2 - target_q) ** 2, valid)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.total_it += 1
        metrics: dict[str, Tensor] = {"critic_loss": critic_loss.detach(), "q_mean": q1.detach().mean(),
                                      "valid_share": valid.mean()}

        if self.total_it % cfg.policy_delay == 0 and not update_actor:
            self._legacy_soft_update(self.critic, self.target_critic)
        elif self.total_it % cfg.policy_delay == 0:
            feats = None if fmaps is None else fmaps.detach()
            pi = self.policy.actor(state, feats)
            q = self.critic.q1(state, pi, feats)
            squared = ((pi - action) ** 2).unflatten(-1, (h, -1)).mean(-1)
            step_mask = batch["action_mask"].to(dev, torch.float32)
            human = batch.get("human")
            if human is not None:
                step_mask = step_mask * human.to(dev, torch.float32).reshape(-1, 1)
            bc_loss = _masked_mean(squared, step_mask)
            self._legacy_actor_step(q, bc_loss, bc_weight, metrics)
        return self._legacy_metrics(metrics, return_tensors)
