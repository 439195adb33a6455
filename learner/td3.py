"""TD3 (Fujimoto et al. 2018) and TD3+BC (Fujimoto & Gu 2021) on state vectors and camera images.

One `TD3.update` is one gradient step of the paper:

    a'  = clip(pi'(s') + clip(N(0, policy_noise), -noise_clip, noise_clip), -1, 1)
    y   = r + gamma * (1 - done) * min(Q1'(s', a'), Q2'(s', a'))
    L_Q = MSE(Q1(s, a), y) + MSE(Q2(s, a), y)
    every `policy_delay` critic steps:
        TD3+BC (bc_weight > 0):  lambda = alpha / mean|Q1(s, pi(s))|  (no gradient through lambda)
                                 L_pi   = -lambda * mean Q1(s, pi(s)) + bc_weight * mean_H (pi(s) - a)^2
                                 (mean_H: over the rows marked human; all rows when no mask is given)
        TD3    (bc_weight = 0):  L_pi   = -mean Q1(s, pi(s))
        theta' <- tau * theta + (1 - tau) * theta'   (actor and critic targets)

States are normalised with the policy's statistics and actions mapped to [-1, 1] by its bounds,
so all of the above happens in normalised space. Checkpoints are safetensors + JSON (no pickle).

Camera policies (DrQ-v2, Yarats et al. 2021). ``s`` is then (state, images): the images of ``s`` and
``s'`` are augmented with DrQ's random shift (``image_pad``, on the training device) and encoded by
the one image encoder of the policy, **once per batch**; actor, critics and both targets read those
feature maps through their own projection heads. The encoder is trained by the critic loss only: the
actor and the targets see detached features (``s'`` is encoded without gradient), so there is no
target encoder. This is DrQ/DrQ-v2's practice (the actor's gradient is stopped at the encoder; the
critic's loss alone shapes the representation). A separate critic encoder would cost a second
ResNet forward and backward per update on every batch; sharing also means the shipped `Policy`
holds exactly the encoder the critic trained. With ``freeze_encoder`` (a pretrained encoder, as in
HIL-SERL's frozen ResNet-10) the encoder gets no gradient at all and ``s`` and ``s'`` are encoded in
one call without autograd.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hilrl.buffers.durable import atomic_path, atomic_write
from hilrl.buffers.options import opt as option
from hilrl.learner.encoders import load_trunk_weights, random_shift
from hilrl.learner.networks import Policy, PolicyConfig, make_critic

log = logging.getLogger(__name__)


@dataclass
class TD3Config:
    """Hyper-parameters of TD3 / TD3+BC (the papers' defaults, except alpha: see README 'Defaults')."""

    gamma: float = option(0.99, "discount factor")
    tau: float = option(0.005, "Polyak rate of the target networks")
    actor_lr: float = option(3e-4, "Adam learning rate of the actor")
    critic_lr: float = option(3e-4, "Adam learning rate of the twin critic")
    policy_noise: float = option(0.2, "std of the target-policy smoothing noise (normalised action units)")
    noise_clip: float = option(0.5, "the smoothing noise is clipped to [-noise_clip, noise_clip]")
    policy_delay: int = option(2, "actor and targets are updated once every `policy_delay` critic steps")
    alpha: float = option(0.5, "TD3+BC: lambda = alpha / mean|Q|, balances the Q term against the BC term "
                               "(the paper's 2.5 imitates few demos with a sparse reward far worse)")
    freeze_encoder: bool = option(True, "camera policies: keep the image encoder fixed (features computed once per "
                                        "frame and cached, see --algo.feature-views; the learner first "
                                        "pretrains it on the demos, see --encoder-pretrain-steps): the CPU route. "
                                        "false = DrQ-v2: the critic loss trains the encoder (a GPU default)")
    encoder_weights: str | None = option(None, "camera policies: pretrained encoder weights, a local safetensors "
                                               "file (a ResNet's with torchvision key names, or `hilrl encoder` "
                                               "output); none = pretrained by the learner on the demos")
    image_pad: int = option(4, "camera policies: DrQ random-shift augmentation, pixels of replicate padding "
                               "(0 = no augmentation)")
    feature_views: int = option(2, "camera policies with a frozen encoder: cache each frame's encoder features "
                                   "once, as N views (the frame and N-1 DrQ shifts, float16), and reuse them in "
                                   "every update (learner/features.py); 0 = encode every batch. Ignored with a "
                                   "trained encoder (--algo.freeze-encoder false) or --chunk > 1")

    def __post_init__(self) -> None:
        if self.feature_views < 0:
            raise ValueError(f"--algo.feature-views must be >= 0, got {self.feature_views}")


@dataclass
class UpdateInputs:
    """One batch as the update reads it: on the device, normalised; what the hooks of `TD3.update` receive."""

    state: Tensor  # [B, S], normalised
    next_state: Tensor  # [B, S], normalised
    action: Tensor  # [B, A] in [-1, 1] (chunked: [B, h * A])
    reward: Tensor  # [B] (chunked: [B, h])
    done: Tensor  # [B]
    human: Tensor | None  # [B] 1.0 on human rows, or None
    fmaps: Tensor | None  # encoder feature maps of s (camera policies)
    next_fmaps: Tensor | None  # ... and of s'
    masks: dict[str, Tensor] = field(default_factory=dict)  # variant-specific masks (chunked: valid, action_mask)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # extra metrics the variant reports


def adam(params: list[Tensor], lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel where PyTorch has one (CPU and CUDA): the same update rule as the
    default for-loop implementation, one kernel over all parameters instead of a dozen ops per tensor."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))


class TD3:
    """Networks, targets, optimisers and the update rule. Everything lives on ``device``."""

    def __init__(
        self, policy_cfg: PolicyConfig, cfg: TD3Config, device: torch.device, seed: int | None = None
    ) -> None:
        self.policy_cfg = policy_cfg
        self.cfg = cfg
        self.device = torch.device(device)
        # Initialise on the CPU under a private RNG: same seed -> same weights on any device,
        # and the caller's global RNG is left untouched.
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            policy = Policy(policy_cfg)
            critic = make_critic(policy_cfg)
        if policy.encoder is not None and cfg.encoder_weights:
            load_trunk_weights(policy.encoder.trunk, cfg.encoder_weights)
            log.info("image encoder: pretrained weights from %s", cfg.encoder_weights)
        self.policy = policy.to(self.device)
        self.critic = critic.to(self.device)
        self.target_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.target_policy.encoder = None  # targets read the online encoder's features (no target encoder)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self._actor_params = list(self.policy.actor.parameters())
        self.actor_opt = adam(self._actor_params, cfg.actor_lr, self.device)
        critic_params = list(self.critic.parameters())
        self.encoder = self.policy.encoder
        if self.encoder is not None:
            if cfg.freeze_encoder:
                self.encoder.requires_grad_(False)
            else:
                critic_params += list(self.encoder.parameters())  # trained by the critic loss (DrQ-v2)
        self.critic_opt = adam(critic_params, cfg.critic_lr, self.device)
        # (online, target) parameter lists for the Polyak updates; load_state_dict copies in place, so they stay valid.
        self._actor_pairs = (self._actor_params, list(self.target_policy.actor.parameters()))
        self._critic_pairs = (list(self.critic.parameters()), list(self.target_critic.parameters()))
        self.generator = torch.Generator(device=self.device)  # target-policy smoothing noise
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()  # non-deterministic
        self.total_it = 0  # number of critic updates done so far

    @property
    def actor(self) -> nn.Module:
        return self.policy.actor

    def set_normalization(self, mean: Any, std: Any, action_low: Any, action_high: Any) -> None:
        """Set state statistics and action bounds on the policy and on the target policy."""
        self.policy.set_normalization(mean, std, action_low, action_high)
        self.target_policy.set_normalization(mean, std, action_low, action_high)

    def encode_batch(self, batch: dict[str, Any]) -> tuple[Tensor | None, Tensor | None]:
        """Augmented feature maps of the batch's ``images`` and ``next_images`` (None, None for state policies).

        Trainable encoder: ``s`` with autograd (the critic loss trains the encoder), ``s'`` without.
        Frozen encoder: both in one call without autograd. A batch that already carries "fmaps" and
        "next_fmaps" (a `FeatureCache`'s) is used as it is.
        """
        if self.encoder is None:
            return None, None
        if "fmaps" in batch:  # cached features of the frozen encoder (learner/features.py)
            return batch["fmaps"], batch["next_fmaps"]
        pad, gen = self.cfg.image_pad, self.generator

        def stacked(key: str) -> Tensor:
            if key not in batch:
                raise ValueError(f"camera policy: the batch has no {key!r} (name -> uint8 [B, H, W, 3])")
            images = {k: v.to(self.device, non_blocking=True) for k, v in batch[key].items()}
            x = self.policy.stack_images(images)  # [B, K, H, W, 3] uint8
            return random_shift(x.flatten(0, 1), pad, gen).view(x.shape)

        obs, next_obs = stacked("images"), stacked("next_images")
        if self.cfg.freeze_encoder:
            with torch.no_grad():
                fmaps = self.encoder(torch.cat([obs, next_obs]))
            return fmaps[: len(obs)], fmaps[len(obs):]
        fmaps = self.encoder(obs)
        with torch.no_grad():
            next_fmaps = self.encoder(next_obs)
        return fmaps, next_fmaps

    def update(self, batch: dict[str, Any], bc_weight: float, update_actor: bool = True,
               return_tensors: bool = False) -> dict[str, Any]:
        """One critic step (and, every `policy_delay` steps, one actor step + target update).

        ``batch``: "state" [B,S], "action" [B,A] (raw, in bounds), "reward" [B], "next_state" [B,S],
        "done" [B] (1.0 only on true termination), optional "human" [B] (1.0 for rows from the human
        buffer: the BC term imitates only those; policy rows are the policy's own noisy actions);
        camera policies also "images" and "next_images" (camera name -> uint8 [B,H,W,3]).
        Returns critic_loss and q_mean every call;
        actor_loss and bc_loss on actor steps; lambda on actor steps with ``bc_weight > 0``.
        Floats by default (one host sync); ``return_tensors=True`` returns 0-d device tensors instead,
        so a caller that logs only every N steps never waits for the device in between.

        The four hooks (`inputs`, `td_target`, `critic_loss`, `bc_loss`) are what a variant of the
        update overrides (`learner/chunked.py`: the h-step target and its masks); the steps stay here.
        """
        cfg = self.cfg
        x = self.inputs(batch)

        # ---- critic ----
        with torch.no_grad():
            noise = torch.randn(x.action.shape, device=self.device, generator=self.generator) * cfg.policy_noise
            noise = noise.clamp(-cfg.noise_clip, cfg.noise_clip)
            next_action = (self.target_policy.actor(x.next_state, x.next_fmaps) + noise).clamp(-1.0, 1.0)
            target_q1, target_q2 = self.target_critic(x.next_state, next_action, x.next_fmaps)
            target_q = self.td_target(x, torch.min(target_q1, target_q2))
        q1, q2 = self.critic(x.state, x.action, x.fmaps)
        critic_loss = self.critic_loss(x, q1, q2, target_q)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.total_it += 1

        metrics: dict[str, Tensor] = {"critic_loss": critic_loss.detach(), "q_mean": q1.detach().mean(),
                                      **x.metrics}

        # ---- delayed actor + targets (a critic warm-up passes update_actor=False: critic target only) ----
        if self.total_it % cfg.policy_delay == 0 and not update_actor:
            self._soft_update(self._critic_pairs)
        elif self.total_it % cfg.policy_delay == 0:
            feats = None if x.fmaps is None else x.fmaps.detach()  # the actor loss never trains the encoder
            pi = self.policy.actor(x.state, feats)
            q = self.critic.q1(x.state, pi, feats)
            self._actor_step(q, self.bc_loss(x, pi), bc_weight, metrics)
        return self._metrics(metrics, return_tensors)

    # ---- the hooks: the one-step TD3 / TD3+BC of the papers ----

    def inputs(self, batch: dict[str, Any]) -> UpdateInputs:
        """The batch on the device, normalised (states by the policy's statistics, actions to [-1, 1]),
        with the encoder's feature maps for camera policies."""
        dev = self.device
        fmaps, next_fmaps = self.encode_batch(batch)
        human = batch.get("human")
        return UpdateInputs(
            state=self.policy.normalize_state(batch["state"].to(dev, torch.float32)),
            next_state=self.policy.normalize_state(batch["next_state"].to(dev, torch.float32)),
            action=self.policy.normalize_action(batch["action"].to(dev, torch.float32)).clamp(-1.0, 1.0),
            reward=batch["reward"].to(dev, torch.float32).reshape(-1),
            done=batch["done"].to(dev, torch.float32).reshape(-1),
            human=None if human is None else human.to(dev, torch.float32).reshape(-1),
            fmaps=fmaps,
            next_fmaps=next_fmaps,
        )

    def td_target(self, x: UpdateInputs, next_q: Tensor) -> Tensor:
        """``y = r + gamma * (1 - done) * min(Q1', Q2')(s', a')`` (``next_q`` is the min)."""
        return x.reward + self.cfg.gamma * (1.0 - x.done) * next_q

    def critic_loss(self, x: UpdateInputs, q1: Tensor, q2: Tensor, target_q: Tensor) -> Tensor:
        """``MSE(Q1, y) + MSE(Q2, y)``."""
        return F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)

    def bc_loss(self, x: UpdateInputs, pi: Tensor) -> Tensor:
        """``mean_H (pi(s) - a)^2``: over the rows marked human, all rows when the batch has no mask."""
        squared = ((pi - x.action) ** 2).mean(dim=-1)
        if x.human is None:
            return squared.mean()
        return (squared * x.human).sum() / x.human.sum().clamp_min(1.0)

    def _actor_step(self, q: Tensor, bc_loss: Tensor, bc_weight: float, metrics: dict) -> None:
        """TD3+BC's actor loss ``-lambda*Q + w*BC`` with ``lambda = alpha / mean|Q|`` (plain ``-Q`` when
        w = 0), one optimiser step, then the Polyak updates of both target networks."""
        if bc_weight > 0:
            lmbda = self.cfg.alpha / q.abs().mean().detach()
            actor_loss = -lmbda * q.mean() + bc_weight * bc_loss
            metrics["lambda"] = lmbda
        else:
            actor_loss = -q.mean()
        self.actor_opt.zero_grad(set_to_none=True)
        # Gradients for the actor's parameters only: the critic's weight gradients would be discarded anyway.
        actor_loss.backward(inputs=self._actor_params)
        self.actor_opt.step()
        self._soft_update(self._actor_pairs)
        self._soft_update(self._critic_pairs)
        metrics["actor_loss"] = actor_loss.detach()
        metrics["bc_loss"] = bc_loss.detach()

    @staticmethod
    def _metrics(metrics: dict, return_tensors: bool) -> dict:
        """The metrics as tensors, or as floats with one host sync (a single .tolist() rather than one .item()
        per metric; on a GPU that still stalls the pipeline, so the Trainer asks for tensors)."""
        if return_tensors:
            return metrics
        values = torch.stack(list(metrics.values())).tolist()
        return dict(zip(metrics.keys(), values, strict=True))

    @torch.no_grad()
    def _soft_update(self, pairs: tuple[list[Tensor], list[Tensor]]) -> None:
        """``target <- tau * net + (1 - tau) * target`` for every parameter, in one fused foreach call."""
        online, target = pairs
        torch._foreach_lerp_(target, online, self.cfg.tau)

    # ---------------------------------------------------------------- checkpoints

    def _modules(self) -> dict[str, nn.Module]:
        return {
            "policy": self.policy,
            "critic": self.critic,
            "target_policy": self.target_policy,
            "target_critic": self.target_critic,
        }

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor_opt": self.actor_opt, "critic_opt": self.critic_opt}

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the full training state: ``<module>.safetensors``, ``optim.safetensors``, ``td3.json``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name, module in self._modules().items():
            _save_tensors(d / f"{name}.safetensors", module.state_dict())
        tensors: dict[str, Tensor] = {"generator_state": self.generator.get_state()}
        param_groups: dict[str, Any] = {}
        for name, opt in self._optimizers().items():
            sd = opt.state_dict()
            param_groups[name] = sd["param_groups"]
            for idx, state in sd["state"].items():
                for key, value in state.items():
                    tensors[f"{name}.{idx}.{key}"] = torch.as_tensor(value)
        _save_tensors(d / "optim.safetensors", tensors)
        meta = {
            "total_it": self.total_it,
            "td3_config": asdict(self.cfg),
            "policy_config": self.policy_cfg.to_dict(),
            "param_groups": param_groups,
        }
        atomic_write(d / "td3.json", json.dumps(meta, indent=2).encode())

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Restore what `save` wrote (into networks built with the same `PolicyConfig`).

        Restores weights, targets, buffers, Adam moments, the noise generator and the step counter;
        hyper-parameters (learning rates, gamma, ...) stay those of this object's `TD3Config`.
        """
        d = Path(directory)
        meta = json.loads((d / "td3.json").read_text())
        if PolicyConfig.from_dict(meta["policy_config"]) != self.policy_cfg:
            raise ValueError(f"checkpoint policy config {meta['policy_config']} != {self.policy_cfg}")
        for name, module in self._modules().items():
            module.load_state_dict(load_file(d / f"{name}.safetensors", device=str(self.device)), strict=True)
        tensors = load_file(d / "optim.safetensors")  # CPU; Adam moves its state to the params' device
        self.generator.set_state(tensors.pop("generator_state"))
        for name, opt in self._optimizers().items():
            state: dict[int, dict[str, Tensor]] = {}
            for key, value in tensors.items():
                opt_name, idx, field = key.split(".")
                if opt_name == name:
                    state.setdefault(int(idx), {})[field] = value
            # The implementation flags (fused / foreach) are this object's: older checkpoints name none.
            impl = {k: opt.param_groups[0][k] for k in ("fused", "foreach") if k in opt.param_groups[0]}
            groups = [{**g, "betas": tuple(g["betas"]), **impl} for g in meta["param_groups"][name]]
            opt.load_state_dict({"state": state, "param_groups": groups})
        # Hyper-parameters come from the live TD3Config (the checkpoint's copy is informational).
        for opt, lr in ((self.actor_opt, self.cfg.actor_lr), (self.critic_opt, self.cfg.critic_lr)):
            for group in opt.param_groups:
                group["lr"] = lr
        self.total_it = int(meta["total_it"])


def _save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp)
