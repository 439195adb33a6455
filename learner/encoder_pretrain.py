"""Pretrain a camera policy's image encoder by behaviour cloning on the demonstrations (no hub weights needed).

The CPU route freezes the encoder (``--algo.freeze-encoder``, features cached with
``--algo.feature-views``), so its filters must already see what matters: a randomly initialised
ResNet does not. Hub weights (ImageNet ResNet-10) cannot be downloaded everywhere, so hilrl trains
its own: a `Policy` (encoder + camera heads + actor MLP) learns to reproduce the human actions of the
demonstrations from the cameras and the proprioceptive state, with DrQ shifts on the images; only the
encoder's trunk is kept, as a safetensors file with torchvision ResNet key names, which the learner
loads with ``--algo.encoder-weights FILE``.

The targets are the demonstrated actions and nothing else: no simulator state, no block position,
no auxiliary loss on privileged information (docs/camera-policy.md).
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hilrl.buffers.durable import atomic_path
from hilrl.buffers.spec import state_vector
from hilrl.learner.encoders import load_trunk_weights, random_shift
from hilrl.learner.networks import Policy, compute_state_stats, policy_config_for

log = logging.getLogger(__name__)


def pretrain_encoder(spec: Any, buffer: Any, out: str | Path, steps: int = 2000, batch_size: int = 64,
                     lr: float = 3e-4, encoder: str = "resnet10", pad: int = 4, seed: int = 0,
                     device: str | torch.device = "cpu", held_out: Any | None = None,
                     lock: Any = None, stop: Any = None) -> dict[str, float]:
    """Behaviour-clone the demonstrations in ``buffer`` (a `ReplayBuffer`) for ``steps`` Adam steps and write
    the trained trunk to ``out`` (safetensors). Returns the first and last BC losses and the seconds taken;
    with ``held_out`` (another `ReplayBuffer` of demonstrations) also the BC loss on all of it, unshifted.
    ``lock`` (the learner's, while actors may still append) is held around every read of ``buffer``; a set
    ``stop`` event ends it early with ``stopped`` in the result and no file written."""
    if not spec.image_features:
        raise ValueError("encoder pretraining needs a spec with camera images")
    if len(buffer) == 0:
        raise ValueError("encoder pretraining needs demonstrations (the buffer is empty)")
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = Policy(policy_config_for(spec, (256, 256), encoder))
    lock = lock if lock is not None else nullcontext()
    with lock:
        states = buffer.valid_slice(tuple(f.name for f in spec.state_features))
    mean, std = compute_state_stats(state_vector(states, spec))
    policy.set_normalization(mean, std, spec.action.low, spec.action.high)
    policy = policy.to(device).train()
    opt = torch.optim.Adam(list(policy.encoder.parameters()) + list(policy.actor.parameters()), lr=lr)
    started, first, loss_value = time.monotonic(), float("nan"), float("nan")
    cameras = tuple(f.name for f in spec.image_features)
    for step in range(steps):
        if stop is not None and stop.is_set():
            return {"stopped": True, "steps": step, "seconds": time.monotonic() - started}
        with lock:
            batch = buffer.gather(buffer.sample_indices(batch_size, rng))
        obs = batch["obs"]
        state = torch.as_tensor(state_vector(obs, spec), device=device)
        images = {c: random_shift(torch.as_tensor(obs[c]).to(device), pad, gen) for c in cameras}
        target = policy.normalize_action(torch.as_tensor(batch["action"], device=device)).clamp(-1.0, 1.0)
        pred = policy.actor(policy.normalize_state(state), policy.encode(images))
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        if step == 0:
            first = loss_value
        if step % 200 == 0:
            log.info("encoder pretraining: step %d/%d, BC loss %.4f", step, steps, loss_value)
    seconds = time.monotonic() - started
    trunk = {k: v.detach().to("cpu").contiguous() for k, v in policy.encoder.trunk.state_dict().items()}
    with atomic_path(Path(out)) as tmp:
        save_file(trunk, tmp)
    result = {"first_loss": first, "last_loss": loss_value, "seconds": seconds}
    if held_out is not None:
        result["held_out_loss"] = bc_loss(policy.eval(), spec, held_out, device)
    return result


def pretrain_learner_encoder(td3: Any, cfg: Any, spec: Any, human: Any, out: Path, device: torch.device,
                             lock: Any, stop: Any = None) -> bool:
    """The learner's step before its offline stage (``cfg`` a `LearnerConfig`): a camera policy with a frozen
    encoder and no ``--algo.encoder-weights`` gets its trunk behaviour-cloned on the human buffer for
    ``--encoder-pretrain-steps`` (a frozen random encoder does not see the block: docs/camera-policy.md),
    written to ``out`` and loaded into ``td3``. A resumed run restores it with the rest of the policy.
    False only when ``stop`` (a `threading.Event`) was set before the pretraining finished."""
    encoder = td3.policy.encoder
    if encoder is None or not cfg.algo.freeze_encoder or cfg.algo.encoder_weights:
        return True
    if cfg.encoder_pretrain_steps <= 0 or len(human) == 0:
        why = "--encoder-pretrain-steps 0" if cfg.encoder_pretrain_steps <= 0 else "no demonstrations to learn from"
        log.warning("frozen image encoder without pretraining (%s): its features stay those of a random "
                    "initialisation", why)
        return True
    log.info("encoder pretraining: %d behaviour-cloning steps on %d human transitions, then frozen",
             cfg.encoder_pretrain_steps, len(human))
    result = pretrain_encoder(spec, human, out, steps=cfg.encoder_pretrain_steps, encoder=cfg.encoder,
                              pad=cfg.algo.image_pad, seed=cfg.seed or 0, device=device, lock=lock, stop=stop)
    if result.get("stopped"):
        log.info("encoder pretraining stopped at step %d of %d", result["steps"], cfg.encoder_pretrain_steps)
        return False
    load_trunk_weights(encoder.trunk, out)
    log.info("encoder pretraining done in %.0f s (BC loss %.3f -> %.3f); trunk in %s",
             result["seconds"], result["first_loss"], result["last_loss"], out)
    return True


@torch.no_grad()
def bc_loss(policy: Policy, spec: Any, buffer: Any, device: torch.device, chunk: int = 64) -> float:
    """Mean squared error (normalised actions) of ``policy`` on every valid transition of ``buffer``."""
    obs, actions = buffer.valid_slice(), buffer.action[buffer.sampleable()]
    cameras = tuple(f.name for f in spec.image_features)
    total = 0.0
    for start in range(0, len(actions), chunk):
        part = {k: v[start:start + chunk] for k, v in obs.items()}
        state = torch.as_tensor(state_vector(part, spec), device=device)
        images = {c: torch.as_tensor(part[c]).to(device) for c in cameras}
        target = policy.normalize_action(torch.as_tensor(actions[start:start + chunk], device=device)).clamp(-1, 1)
        pred = policy.actor(policy.normalize_state(state), policy.encode(images))
        total += float(F.mse_loss(pred, target, reduction="sum")) / target.shape[-1]
    return total / len(actions)
