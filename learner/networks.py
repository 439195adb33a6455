"""State-based networks: the deterministic actor, the twin critic and the deployable `Policy`.

Conventions used everywhere in the learner:

* States are normalised with the mean/std of the offline (human) data: ``s_n = (s - mean) / std``.
  The std is clamped from below, ``std = max(std, 1e-3)`` (not ``std + 1e-3``), so constant
  features (e.g. a fixed joint) do not blow up while ordinary features are left exactly unscaled.
* Actions live in the normalised box ``[-1, 1]`` inside the networks; the affine map
  ``a = low + (a_n + 1) / 2 * (high - low)`` converts to the robot's bounds.

The `Policy` (actor + normalisation buffers) is what the actor process runs. Its ``state_dict``
contains the buffers, so one safetensors blob carries weights *and* normalisation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

STD_EPS = 1e-3  # lower clamp on the per-feature state std


@dataclass
class PolicyConfig:
    """Shape of the policy network; JSON-serialisable via `dataclasses.asdict` (sent in the handshake)."""

    state_dim: int
    action_dim: int
    hidden: tuple[int, ...] = (256, 256)

    def __post_init__(self) -> None:
        self.state_dim = int(self.state_dim)
        self.action_dim = int(self.action_dim)
        self.hidden = tuple(int(h) for h in self.hidden)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        return cls(d["state_dim"], d["action_dim"], tuple(d.get("hidden", (256, 256))))


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, layer_norm: bool = False) -> nn.Sequential:
    """Linear -> [LayerNorm] -> ReLU for every hidden layer, then a final Linear."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers.append(nn.Linear(in_dim, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(nn.ReLU())
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Deterministic policy ``pi(s_n) -> a_n`` in ``[-1, 1]`` (MLP, ReLU, tanh output)."""

    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        self.net = mlp(state_dim, hidden, action_dim)

    def forward(self, state_n: Tensor) -> Tensor:
        return torch.tanh(self.net(state_n))


class Critic(nn.Module):
    """Twin Q networks ``Q1, Q2(s_n, a_n)``; LayerNorm after every hidden Linear (as in RLPD / HIL-SERL)."""

    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        self.q1_net = mlp(state_dim + action_dim, hidden, 1, layer_norm=True)
        self.q2_net = mlp(state_dim + action_dim, hidden, 1, layer_norm=True)

    def forward(self, state_n: Tensor, action_n: Tensor) -> tuple[Tensor, Tensor]:
        """Both Q values, each of shape ``[B]``."""
        x = torch.cat([state_n, action_n], dim=-1)
        return self.q1_net(x).squeeze(-1), self.q2_net(x).squeeze(-1)

    def q1(self, state_n: Tensor, action_n: Tensor) -> Tensor:
        """Only the first Q value (used by the actor loss), shape ``[B]``."""
        return self.q1_net(torch.cat([state_n, action_n], dim=-1)).squeeze(-1)


class Policy(nn.Module):
    """What the actor process runs: raw state -> raw action in ``[action_low, action_high]``.

    Buffers (part of ``state_dict``): ``obs_mean``, ``obs_std`` (``[state_dim]``), ``action_low``,
    ``action_high`` (``[action_dim]``). Defaults are the identity normalisation and the box [-1, 1].
    """

    obs_mean: Tensor
    obs_std: Tensor
    action_low: Tensor
    action_high: Tensor

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.actor = Actor(cfg.state_dim, cfg.action_dim, cfg.hidden)
        self.register_buffer("obs_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("obs_std", torch.ones(cfg.state_dim))
        self.register_buffer("action_low", -torch.ones(cfg.action_dim))
        self.register_buffer("action_high", torch.ones(cfg.action_dim))

    def normalize_state(self, state: Tensor) -> Tensor:
        """``(state - mean) / std`` (std already clamped to >= 1e-3)."""
        return (state - self.obs_mean) / self.obs_std

    def normalize_action(self, action: Tensor) -> Tensor:
        """Raw action in the bounds -> ``[-1, 1]`` (inverse of `unnormalize_action`)."""
        return 2.0 * (action - self.action_low) / (self.action_high - self.action_low) - 1.0

    def unnormalize_action(self, action_n: Tensor) -> Tensor:
        """``[-1, 1]`` -> raw action: ``low + (a_n + 1) / 2 * (high - low)``."""
        return self.action_low + 0.5 * (action_n + 1.0) * (self.action_high - self.action_low)

    def forward(self, state_raw: Tensor) -> Tensor:
        return self.unnormalize_action(self.actor(self.normalize_state(state_raw)))

    @torch.no_grad()
    def set_normalization(self, mean: Any, std: Any, action_low: Any, action_high: Any) -> None:
        """Copy statistics and bounds in place (array-likes of the right length); std clamped at 1e-3."""

        def as_t(x: Any, n: int, name: str) -> Tensor:
            t = torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(-1)
            if t.numel() != n:
                raise ValueError(f"{name}: expected {n} values, got {t.numel()}")
            return t

        low = as_t(action_low, self.cfg.action_dim, "action_low")
        high = as_t(action_high, self.cfg.action_dim, "action_high")
        if not bool((high > low).all()):
            raise ValueError("action_high must be strictly greater than action_low for every dimension")
        self.obs_mean.copy_(as_t(mean, self.cfg.state_dim, "mean"))
        self.obs_std.copy_(as_t(std, self.cfg.state_dim, "std").clamp_min(STD_EPS))
        self.action_low.copy_(low)
        self.action_high.copy_(high)


def compute_state_stats(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (float32) over ``states [N, state_dim]``; std is ``max(std, 1e-3)``."""
    x = np.asarray(states, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty [N, state_dim] array, got shape {x.shape}")
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), STD_EPS)
    return mean.astype(np.float32), std.astype(np.float32)


def policy_to_safetensors_bytes(policy: Policy) -> bytes:
    """Weights + normalisation buffers as safetensors bytes (the config rides along as metadata)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in policy.state_dict().items()}
    return st_save(tensors, metadata={"policy_config": json.dumps(policy.cfg.to_dict())})


def policy_from_safetensors_bytes(cfg: PolicyConfig, data: bytes) -> Policy:
    """Inverse of `policy_to_safetensors_bytes` (eval mode, no grad); strict: keys and shapes must match."""
    policy = Policy(cfg)
    policy.load_state_dict(st_load(data), strict=True)
    return policy.eval().requires_grad_(False)
