"""Gathered replay batches → torch tensors on the training device.

`to_torch(batch, device)` keeps the batch's structure (nested observation dicts included) and
every dtype (uint8 images travel as uint8, 4x fewer bytes than float32; convert on the device).
For a CUDA device the host arrays are staged in pinned (page-locked) memory and copied with
``non_blocking=True``, so the copy is an asynchronous DMA that overlaps with the host preparing the
next batch; the caching host allocator keeps each pinned block alive until its copy is done. On
the CPU the arrays are wrapped without a copy (`torch.from_numpy`).

Only this module imports torch in `hilrl.buffers`; importing the rest of the package stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class TransferPlan:
    """How host arrays reach one device."""

    device: torch.device
    pin_memory: bool
    non_blocking: bool


def transfer_plan(device: torch.device | str, pin_memory: bool | None = None) -> TransferPlan:
    """Pinned memory + asynchronous copies for CUDA (when CUDA is really available), plain otherwise.

    `pin_memory` forces the choice (True without CUDA fails in `torch`, except in tests that stub it).
    """
    device = torch.device(device)
    if pin_memory is None:
        pin_memory = device.type == "cuda" and torch.cuda.is_available()
    return TransferPlan(device, pin_memory, non_blocking=pin_memory)


def array_to_tensor(array: np.ndarray, plan: TransferPlan) -> torch.Tensor:
    """One host array as a tensor on `plan.device` (same dtype, same values)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if plan.pin_memory:
        tensor = tensor.pin_memory()
    return tensor.to(plan.device, non_blocking=plan.non_blocking)


def to_torch(batch: dict[str, Any], device: torch.device | str, pin_memory: bool | None = None) -> dict[str, Any]:
    """A gathered batch (``ReplayBuffer.gather`` / ``DualBuffer.sample``) as tensors on `device`.

    Returns the same keys and nesting: ``{"obs": {name: tensor}, "next_obs": {...}, "action",
    "reward", "terminated" (bool), "human" (when present)}``. On CUDA the copies are asynchronous
    on the current stream, so kernels launched afterwards on that stream see the data.
    """
    plan = transfer_plan(device, pin_memory)
    return _convert(batch, plan)


def state_tensor(obs: dict[str, torch.Tensor], spec: Any) -> torch.Tensor:
    """The state vector ``[B, state_dim]`` (float32) of a batch of observation tensors, on their device.

    The torch twin of `hilrl.buffers.spec.state_vector`: the non-image features of `spec`, in spec
    order, flattened and concatenated.
    """
    parts = [obs[f.name].reshape(len(obs[f.name]), f.size).to(torch.float32) for f in spec.state_features]
    return torch.cat(parts, dim=-1)


def _convert(value: Any, plan: TransferPlan) -> Any:
    if isinstance(value, dict):
        return {k: _convert(v, plan) for k, v in value.items()}
    return array_to_tensor(np.asarray(value), plan)
