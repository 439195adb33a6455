"""Residual action fine-tuning: a frozen base policy plus a small, bounded, learned correction.

    final = clamp(base(s) + scale * tanh(delta(s, base(s))), -1, 1)        (normalised action units)

The base action travels *inside the observation*: the actor computes ``base(s)`` every tick (the
scripted expert, or one of our own policy checkpoints, see `hilrl.actor.residual_base`) and adds it
as the float32 feature ``base_action`` (shape ``(action_dim,)``), so every stored transition carries
``base(s)`` and ``base(s')``. The learner therefore never runs the base: `ResidualActor` (in
`hilrl.learner.networks`, next to the plain `Actor`) reads it from the state vector, and TD3's
target ``pi(s')`` is ``clamp(base(s') + scale * tanh(delta(s', base(s'))))`` with no change to the
update rule. The critic sees the final action; the correction network reads the whole (normalised)
state, the base action included.

Normalisation: the ``base_action`` slice of the state is normalised with the action bounds
(``mean = (low + high) / 2``, ``std = (high - low) / 2``), so that slice *is* the base action in the
networks' ``[-1, 1]`` action units (see `residual_normalization`). ``scale`` is in those units too: with
the sim's ``[-1, 1]^3 x [0, 2]`` box, 0.1 is 0.1 action units (2.5 mm per step) on every channel.

The correction network's last Linear starts at zero, so an untrained residual policy is exactly the
base (up to one affine round trip, ~1e-7). Only the correction (and the normalisation buffers) are
in the `Policy`'s ``state_dict``, so only they are published to the actor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BASE_ACTION = "base_action"  # the observation feature the actor adds in residual mode


def base_action_index(spec: Any) -> int:
    """Offset of the ``base_action`` feature in the spec's state vector; a clear error when it is not there."""
    offset = 0
    for f in spec.state_features:
        if f.name == BASE_ACTION:
            if f.shape != (spec.action_dim,) or f.dtype != "float32":
                raise ValueError(f"residual mode: observation {BASE_ACTION!r} must be float32[{spec.action_dim}] "
                                 f"(the action's shape), got {f.describe()}")
            return offset
        offset += f.size
    raise ValueError(f"residual mode needs the observation feature {BASE_ACTION!r} (the base policy's action), "
                     f"but the actor's spec has {list(spec.observation_names)}: start the actor with "
                     f"--residual-base expert|checkpoint:DIR|lerobot:DIR")


def residual_normalization(mean: Any, std: Any, action_low: Any, action_high: Any, base_index: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """State mean/std with the base-action slice replaced by the action box's centre and half-range."""
    mean = np.array(mean, dtype=np.float32).reshape(-1)
    std = np.array(std, dtype=np.float32).reshape(-1)
    low = np.asarray(action_low, dtype=np.float32).reshape(-1)
    high = np.asarray(action_high, dtype=np.float32).reshape(-1)
    sl = slice(base_index, base_index + low.size)
    mean[sl] = (low + high) / 2
    std[sl] = (high - low) / 2
    return mean, std



def residual_mismatch(spec: Any, residual: bool) -> str | None:
    """Why an actor's spec does not fit the learner's residual setting (None when it does)."""
    has_base = BASE_ACTION in spec.observation_names
    if residual and not has_base:
        return (f"the learner runs --residual but the actor sends no {BASE_ACTION!r} observation; start the actor "
                f"with --residual-base expert|checkpoint:PATH|lerobot:PATH")
    if has_base and not residual:
        return (f"the actor runs a residual base (observation {BASE_ACTION!r}) but the learner was started without "
                f"--residual; restart the learner with --residual (or the actor without --residual-base)")
    if residual:
        try:
            base_action_index(spec)
        except ValueError as exc:
            return str(exc)
    return None
