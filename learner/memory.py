"""How large the replay buffers of a spec may be on this machine (`--human-capacity` / `--policy-capacity`).

The learner core asks `size_buffers` once, when it adopts a spec; a spec whose buffers would not fit is
refused with `BuffersTooLarge`, whose text says which capacities to set.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hilrl.buffers.replay import default_frame_capacity, dual_buffer_nbytes
from hilrl.buffers.spec import Spec

log = logging.getLogger(__name__)

STATE_CAPACITIES = (200_000, 500_000)  # human, policy: the state-spec defaults
CAMERA_MEMORY_SHARE = 0.4  # of available memory, for camera-spec buffers with automatic capacities


class BuffersTooLarge(Exception):
    """The replay buffers for a spec would not fit in this machine's memory; the text says what to set."""


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def buffer_capacities(spec: Spec, human: int | None, policy: int | None, available: int | None,
                      cached_bytes_per_frame: int = 0) -> tuple[int, int]:
    """--human-capacity / --policy-capacity, where None (auto) is 200k / 500k for state specs, and for camera
    specs what fits in 40 % of available memory, 2:5 like the state defaults (never more than those), counting
    the feature cache's bytes per frame (learner/features.py) when it is on."""
    if not spec.image_features or available is None:
        return (STATE_CAPACITIES[0] if human is None else human, STATE_CAPACITIES[1] if policy is None else policy)
    per = dual_buffer_nbytes(spec, 1000, 1000) / 2000  # bytes per transition of capacity
    per += cached_bytes_per_frame * default_frame_capacity(1000) / 1000
    budget = CAMERA_MEMORY_SHARE * available - per * ((human or 0) + (policy or 0))
    fits = max(2, int(budget / per) - 2)  # - 2: each ring rounds its frame slack up
    auto_human = min(STATE_CAPACITIES[0], max(1, fits * 2 // 7))
    auto_policy = min(STATE_CAPACITIES[1], max(1, fits - auto_human if human is None else fits))
    return (auto_human if human is None else human, auto_policy if policy is None else policy)


def size_buffers(spec: Spec, human: int | None, policy: int | None, cached_bytes_per_frame: int = 0) -> tuple[int, int]:
    """The (human, policy) capacities for `spec` (see `buffer_capacities`; None: automatic), checked against
    the memory available now; raises BuffersTooLarge when they would take more than 90 % of it."""
    have = available_memory()
    human_capacity, policy_capacity = buffer_capacities(spec, human, policy, have, cached_bytes_per_frame)
    need = dual_buffer_nbytes(spec, human_capacity, policy_capacity)
    if human is None or policy is None:
        log.info("buffer capacities: human %d, policy %d transitions (%.1f GiB; automatic for %s specs)",
                 human_capacity, policy_capacity, need / 2**30, "camera" if spec.image_features else "state")
    if have is not None and need > 0.9 * have:
        per = need / (human_capacity + policy_capacity)
        fits = int(0.6 * have / per)
        raise BuffersTooLarge(
            f"the replay buffers for this observation spec ({per / 1e3:.1f} kB per transition) need "
            f"{need / 2**30:.1f} GiB for --human-capacity {human_capacity} + --policy-capacity "
            f"{policy_capacity}, but only {have / 2**30:.1f} GiB of memory is available; start the "
            f"learner with capacities that add up to about {fits} transitions or fewer "
            f"(e.g. --human-capacity {fits // 3} --policy-capacity {fits - fits // 3})")
    return human_capacity, policy_capacity
