"""State-based networks: the deterministic actor, the twin critic and the deployable `Policy`.

Conventions used everywhere in the learner:

* States are normalised with the mean/std of the offline (human) data: ``s_n = (s - mean) / std``.
  The std is clamped from below, ``std = max(std, 1e-3)`` (not ``std + 1e-3``), so constant
  features (e.g. a fixed joint) do not blow up while ordinary features are left exactly unscaled.
* Actions live in the normalised box ``[-1, 1]`` inside the networks; the affine map
  ``a = low + (a_n + 1) / 2 * (high - low)`` converts to the robot's bounds.

The `Policy` (actor + normalisation buffers) is what the actor process runs. Its ``state_dict``
contains the buffers, so one safetensors blob carries weights *and* normalisation.

Camera policies (``PolicyConfig.cameras`` non-empty) add an `ImageEncoder` (a ResNet-10/18 trunk
shared by all cameras, see `learner/encoders.py`) to the `Policy`, and per-camera projection heads to
the `Actor` and the `Critic`: each network reads the trunk's feature maps through its own heads and
concatenates them with the normalised state vector. The trunk lives in the `Policy` (the actor
process needs it); the learner's critic reads the same trunk (DrQ-v2: one encoder, trained by the
critic loss only), so what travels to the actor is the trunk, the actor and the statistics, never
a critic part.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor, nn

from hilrl.learner.encoders import ENCODERS, CameraHeads, ImageEncoder, feature_map_shape
from hilrl.learner.residual import base_action_index, residual_normalization
from hilrl.learner.tensor_blob import decode, encode

STD_EPS = 1e-3  # lower clamp on the per-feature state std


@dataclass
class PolicyConfig:
    """Shape of the policy network; JSON-serialisable via `dataclasses.asdict` (sent in the handshake).

    ``cameras`` names the image features (uint8 ``image_shape = (H, W, 3)``, the same for every
    camera) in the order the encoder stacks them; empty for a state-only policy.
    """

    state_dim: int
    action_dim: int
    hidden: tuple[int, ...] = (256, 256)
    cameras: tuple[str, ...] = ()
    image_shape: tuple[int, ...] = ()
    encoder: str = "resnet10"
    image_feature_dim: int = 64
    residual_scale: float = 0.0  # > 0: residual policy (learner/residual.py), correction bound in action units
    base_action_index: int = -1  # residual policies: offset of the base action in the state vector
    chunk: int = 1  # > 1: action-chunked policy (learner/chunked.py): the actor outputs `chunk` actions at once

    def __post_init__(self) -> None:
        self.state_dim = int(self.state_dim)
        self.action_dim = int(self.action_dim)
        self.hidden = tuple(int(h) for h in self.hidden)
        self.cameras = tuple(str(c) for c in self.cameras)
        self.image_shape = tuple(int(n) for n in self.image_shape)
        self.image_feature_dim = int(self.image_feature_dim)
        self.residual_scale = float(self.residual_scale)
        self.base_action_index = int(self.base_action_index)
        self.chunk = int(self.chunk)
        if self.chunk < 1:
            raise ValueError(f"chunk must be at least 1 (1 = one action per step), got {self.chunk}")
        if self.chunk > 1 and self.residual_scale > 0:
            raise ValueError("action chunking (chunk > 1) and residual policies cannot be combined")
        if self.cameras:
            if len(self.image_shape) != 3 or self.image_shape[2] != 3:
                raise ValueError(f"cameras {list(self.cameras)} need image_shape (H, W, 3), got {self.image_shape}")
            if min(self.image_shape[:2]) < 32:
                raise ValueError(f"camera images must be at least 32x32 pixels, got {self.image_shape[:2]}")
            if self.encoder not in ENCODERS:
                raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {list(ENCODERS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        return cls(d["state_dim"], d["action_dim"], tuple(d.get("hidden", (256, 256))), tuple(d.get("cameras", ())),
                   tuple(d.get("image_shape", ())), d.get("encoder", "resnet10"), d.get("image_feature_dim", 64),
                   d.get("residual_scale", 0.0), d.get("base_action_index", -1), d.get("chunk", 1))

    @property
    def feature_map(self) -> tuple[int, int, int] | None:
        """``(C, h, w)`` of the encoder's output per camera; None for a state-only policy."""
        return feature_map_shape(self.image_shape[:2], self.encoder) if self.cameras else None


def policy_config_for(spec: Any, hidden: tuple[int, ...], encoder: str = "resnet10",
                      image_feature_dim: int = 64, residual_scale: float = 0.0) -> PolicyConfig:
    """The `PolicyConfig` of a `Spec`: its state vector, its action, and its uint8 camera images (if any).

    ``residual_scale > 0``: a residual policy over the spec's ``base_action`` feature (learner/residual.py).
    """
    images = spec.image_features
    shapes = {f.shape for f in images}
    if len(shapes) > 1:
        raise ValueError("every camera must have the same image shape for the shared encoder, got "
                         + ", ".join(f"{f.name}: {list(f.shape)}" for f in images))
    base_index = -1
    if residual_scale > 0:
        base_index = base_action_index(spec)
    return PolicyConfig(spec.state_dim, spec.action_dim, tuple(hidden), tuple(f.name for f in images),
                        next(iter(shapes)) if shapes else (), encoder, image_feature_dim, residual_scale, base_index)


def _camera_heads(cfg: PolicyConfig) -> CameraHeads | None:
    fmap = cfg.feature_map
    return None if fmap is None else CameraHeads(len(cfg.cameras), fmap, cfg.image_feature_dim)


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
    """Deterministic policy ``pi(s_n[, images]) -> a_n`` in ``[-1, 1]`` (MLP, ReLU, tanh output).

    With ``heads`` (camera policies) the MLP reads ``[s_n, heads(feature maps)]``.
    """

    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...] = (256, 256),
                 heads: CameraHeads | None = None) -> None:
        super().__init__()
        self.net = mlp(state_dim + (heads.out_dim if heads is not None else 0), hidden, action_dim)
        self.heads = heads

    def forward(self, state_n: Tensor, fmaps: Tensor | None = None) -> Tensor:
        return torch.tanh(self.net(_features(state_n, self.heads, fmaps)))


class ResidualActor(Actor):
    """``a_n = clamp(b_n + scale * tanh(delta(s_n[, images])), -1, 1)``, ``b_n = s_n[base_index : base_index + A]``.

    ``delta`` is the usual actor MLP (`hilrl.learner.networks.mlp`) with its last layer zeroed.
    """

    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...], scale: float, base_index: int,
                 heads: CameraHeads | None = None) -> None:
        super().__init__(state_dim, action_dim, hidden, heads)
        if not scale > 0:
            raise ValueError(f"residual scale must be > 0, got {scale}")
        if not 0 <= base_index <= state_dim - action_dim:
            raise ValueError(f"base action index {base_index} does not fit a {action_dim}-d action in a "
                             f"{state_dim}-d state")
        self.scale = float(scale)
        self.base_index = int(base_index)
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def base(self, state_n: Tensor) -> Tensor:
        """The base action (normalised units) carried in the normalised state."""
        return state_n[..., self.base_index: self.base_index + self.net[-1].out_features]

    def correction(self, state_n: Tensor, fmaps: Tensor | None = None) -> Tensor:
        """``scale * tanh(delta(s))``, always within ``[-scale, scale]``."""
        return self.scale * super().forward(state_n, fmaps)

    def forward(self, state_n: Tensor, fmaps: Tensor | None = None) -> Tensor:
        return (self.base(state_n) + self.correction(state_n, fmaps)).clamp(-1.0, 1.0)


class Critic(nn.Module):
    """Twin Q networks ``Q1, Q2(s_n, a_n)``; LayerNorm after every hidden Linear (as in RLPD / HIL-SERL).

    Camera critics have their own projection heads (shared by Q1 and Q2, as in DrQ-v2) over the
    encoder's feature maps.
    """

    def __init__(self, state_dim: int, action_dim: int, hidden: tuple[int, ...] = (256, 256),
                 heads: CameraHeads | None = None) -> None:
        super().__init__()
        in_dim = state_dim + action_dim + (heads.out_dim if heads is not None else 0)
        self.q1_net = mlp(in_dim, hidden, 1, layer_norm=True)
        self.q2_net = mlp(in_dim, hidden, 1, layer_norm=True)
        self.heads = heads

    def forward(self, state_n: Tensor, action_n: Tensor, fmaps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Both Q values, each of shape ``[B]``."""
        x = torch.cat([_features(state_n, self.heads, fmaps), action_n], dim=-1)
        return self.q1_net(x).squeeze(-1), self.q2_net(x).squeeze(-1)

    def q1(self, state_n: Tensor, action_n: Tensor, fmaps: Tensor | None = None) -> Tensor:
        """Only the first Q value (used by the actor loss), shape ``[B]``."""
        return self.q1_net(torch.cat([_features(state_n, self.heads, fmaps), action_n], dim=-1)).squeeze(-1)


def _features(state_n: Tensor, heads: CameraHeads | None, fmaps: Tensor | None) -> Tensor:
    """The network input: the normalised state, plus the projected camera features for camera networks."""
    if heads is None:
        return state_n
    if fmaps is None:
        raise ValueError("this network reads camera images: pass the encoder's feature maps")
    return torch.cat([state_n, heads(fmaps)], dim=-1)


def make_critic(cfg: PolicyConfig) -> Critic:
    """The twin critic that goes with a policy of this config (camera heads included)."""
    return Critic(cfg.state_dim, cfg.action_dim * cfg.chunk, cfg.hidden, _camera_heads(cfg))  # chunk: (s, a_t..a_t+h-1)


class Policy(nn.Module):
    """What the actor process runs: raw state -> raw action in ``[action_low, action_high]``.

    Buffers (part of ``state_dict``): ``obs_mean``, ``obs_std`` (``[state_dim]``), ``action_low``,
    ``action_high`` (``[action_dim]``). Defaults are the identity normalisation and the box [-1, 1].
    A camera policy also holds the image ``encoder`` and takes ``images`` (name -> uint8 ``[B, H, W, 3]``).
    """

    obs_mean: Tensor
    obs_std: Tensor
    action_low: Tensor
    action_high: Tensor

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder: ImageEncoder | None = ImageEncoder(cfg.encoder) if cfg.cameras else None
        if cfg.residual_scale > 0:  # frozen base (carried in the state) + bounded, zero-initialised correction
            self.actor: Actor = ResidualActor(cfg.state_dim, cfg.action_dim, cfg.hidden, cfg.residual_scale,
                                              cfg.base_action_index, _camera_heads(cfg))
        else:
            self.actor = Actor(cfg.state_dim, cfg.action_dim * cfg.chunk, cfg.hidden, _camera_heads(cfg))
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

    def stack_images(self, images: dict[str, Tensor]) -> Tensor:
        """The cameras of ``images`` (name -> ``[B, H, W, 3]`` uint8) stacked in config order: ``[B, K, H, W, 3]``."""
        missing = [c for c in self.cfg.cameras if c not in images]
        if missing:
            raise ValueError(f"camera policy: images {missing} are missing (expects {list(self.cfg.cameras)})")
        return torch.stack([images[c] for c in self.cfg.cameras], dim=1)

    def encode(self, images: dict[str, Tensor]) -> Tensor:
        """Encoder feature maps ``[B, K, C, h, w]`` of raw uint8 images (converted to float on their device)."""
        if self.encoder is None:
            raise ValueError("a state-only policy has no image encoder")
        return self.encoder(self.stack_images(images))

    def forward(self, state_raw: Tensor, images: dict[str, Tensor] | None = None) -> Tensor:
        fmaps = None
        if self.encoder is not None:
            if images is None:
                raise ValueError(f"camera policy: pass the images of {list(self.cfg.cameras)}")
            fmaps = self.encode(images)
        action_n = self.actor(self.normalize_state(state_raw), fmaps)
        if self.cfg.chunk > 1:  # a chunked policy: [B, chunk * A] -> [B, chunk, A], executed in order
            action_n = action_n.unflatten(-1, (self.cfg.chunk, self.cfg.action_dim))
        return self.unnormalize_action(action_n)

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
        if self.cfg.residual_scale > 0:  # the base-action slice is normalised like an action (residual.py)
            mean, std = residual_normalization(mean, std, low, high, self.cfg.base_action_index)
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
    """Weights + normalisation buffers as safetensors bytes (the config rides along as metadata).

    Exactly ``policy.state_dict()``: the actor (and, for a camera policy, the image encoder and the
    actor's camera heads) and the statistics; critics never travel. (The learner publishes the same bytes
    through `learner.weights.WeightPublisher`, into reused buffers.)
    """
    return bytes(encode(policy.state_dict(), policy_metadata(policy)))


def policy_metadata(policy: Policy) -> dict[str, str]:
    """The safetensors metadata of a policy's weights: its config (`load_policy_file` builds the policy from it)."""
    return {"policy_config": json.dumps(policy.cfg.to_dict())}


def policy_from_safetensors_bytes(cfg: PolicyConfig, data: bytes | bytearray) -> Policy:
    """Inverse of `policy_to_safetensors_bytes` (eval mode, no grad); strict: keys, shapes and dtypes must
    match. A ``bytearray`` is used in place (the policy's tensors are views into it)."""
    return policy_from_tensors(cfg, decode(data)[0])


def policy_from_tensors(cfg: PolicyConfig, tensors: dict[str, Tensor]) -> Policy:
    """A `Policy` whose state is ``tensors`` themselves (not copies), built without random initialisation:
    the modules are created on the meta device and the tensors assigned. Strict like `load_state_dict`."""
    with torch.device("meta"):
        policy = Policy(cfg)
    for name, want in policy.state_dict().items():
        have = tensors.get(name)
        if have is not None and have.dtype != want.dtype:
            raise ValueError(f"{name}: dtype {have.dtype}, expected {want.dtype}")
    policy.load_state_dict(tensors, strict=True, assign=True)
    for module_name, module in policy.named_modules():  # non-persistent buffers (constants) are not in the state
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_meta:
                module._buffers[name] = _constants(json.dumps(cfg.to_dict()))[f"{module_name}.{name}".lstrip(".")]
    return policy.eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _constants(cfg_json: str) -> dict[str, Tensor]:
    """The non-persistent buffers of a `Policy` of this config (e.g. the image encoder's ImageNet statistics)."""
    policy = Policy(PolicyConfig.from_dict(json.loads(cfg_json)))
    persistent = policy.state_dict()
    return {k: v for k, v in policy.named_buffers() if k not in persistent}


def load_policy_file(path: str | Path) -> Policy:
    """A policy published by the learner (`<output-dir>/policy.safetensors`); its config is in the metadata."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "policy_config" not in metadata:
        raise ValueError(f"{path} carries no policy_config metadata; is it a hilrl policy file?")
    cfg = PolicyConfig.from_dict(json.loads(metadata["policy_config"]))
    return policy_from_safetensors_bytes(cfg, bytearray(Path(path).read_bytes()))
