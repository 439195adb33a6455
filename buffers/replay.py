"""Preallocated ring replay storage and the dual human/policy buffer on top of it.

Each slot holds one complete transition (s, a, r, s', terminated) with every observation feature
in its own dtype (uint8 images stay uint8). Slots of a discarded episode stop being sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hilrl.buffers.spec import Spec


@dataclass
class Transition:
    """One complete transition, as the learner stores it."""

    obs: dict[str, np.ndarray]
    action: np.ndarray
    reward: float
    next_obs: dict[str, np.ndarray]
    terminated: bool
    truncated: bool
    episode_key: int
    is_intervention: bool


class ReplayBuffer:
    """A fixed-capacity ring of transitions; the oldest is overwritten when full."""

    def __init__(self, spec: Spec, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.spec = spec
        self.capacity = capacity
        self.obs = {f.name: np.zeros((capacity, *f.shape), dtype=f.dtype) for f in spec.observation}
        self.next_obs = {f.name: np.zeros((capacity, *f.shape), dtype=f.dtype) for f in spec.observation}
        self.action = np.zeros((capacity, spec.action_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.bool_)
        self.truncated = np.zeros(capacity, dtype=np.bool_)
        self.is_intervention = np.zeros(capacity, dtype=np.bool_)
        self.episode_key = np.full(capacity, -1, dtype=np.int64)
        self.valid = np.zeros(capacity, dtype=np.bool_)
        self._next = 0
        self._size = 0
        self.added = 0

    def __len__(self) -> int:
        return self._size

    def add(self, t: Transition) -> None:
        i = self._next
        if self.valid[i]:
            self._size -= 1
        for name in self.obs:
            self.obs[name][i] = t.obs[name]
            self.next_obs[name][i] = t.next_obs[name]
        self.action[i] = t.action
        self.reward[i] = t.reward
        self.terminated[i] = t.terminated
        self.truncated[i] = t.truncated
        self.is_intervention[i] = t.is_intervention
        self.episode_key[i] = t.episode_key
        self.valid[i] = True
        self._size += 1
        self.added += 1
        self._next = (i + 1) % self.capacity

    def discard_episode(self, episode_key: int) -> int:
        """Stop sampling every stored step of an episode; returns how many were removed."""
        hit = self.valid & (self.episode_key == episode_key)
        n = int(hit.sum())
        self.valid[hit] = False
        self._size -= n
        return n

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self._size == 0:
            raise ValueError("cannot sample from an empty buffer")
        if self._size == min(self.added, self.capacity):  # nothing discarded: every filled slot is valid
            return rng.integers(0, self._size, size=n)
        return rng.choice(np.flatnonzero(self.valid), size=n, replace=True)

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
        return {
            "obs": {k: v[idx] for k, v in self.obs.items()},
            "next_obs": {k: v[idx] for k, v in self.next_obs.items()},
            "action": self.action[idx],
            "reward": self.reward[idx],
            "terminated": self.terminated[idx],
        }

    def valid_slice(self) -> dict[str, np.ndarray]:
        """Every sampleable transition's observation features (for statistics)."""
        idx = np.flatnonzero(self.valid)
        return {k: v[idx] for k, v in self.obs.items()}

    def bytes_per_transition(self) -> float:
        arrays = [*self.obs.values(), *self.next_obs.values(), self.action, self.reward, self.terminated,
                  self.truncated, self.is_intervention, self.episode_key, self.valid]
        return sum(a.nbytes for a in arrays) / self.capacity


class DualBuffer:
    """Human (demos + interventions) and policy (autonomous) storage, sampled at a fixed mix."""

    def __init__(self, spec: Spec, human_capacity: int, policy_capacity: int) -> None:
        self.human = ReplayBuffer(spec, human_capacity)
        self.policy = ReplayBuffer(spec, policy_capacity)

    def add(self, t: Transition) -> None:
        (self.human if t.is_intervention else self.policy).add(t)

    def discard_episode(self, episode_key: int) -> int:
        return self.human.discard_episode(episode_key) + self.policy.discard_episode(episode_key)

    def split(self, batch_size: int, human_ratio: float) -> tuple[int, int]:
        """How many samples each side gives; an empty side gives none and the other fills the batch."""
        if len(self.human) == 0 and len(self.policy) == 0:
            raise ValueError("both buffers are empty")
        if len(self.policy) == 0:
            return batch_size, 0
        if len(self.human) == 0:
            return 0, batch_size
        n_human = int(round(batch_size * human_ratio))
        return n_human, batch_size - n_human

    def sample(self, batch_size: int, human_ratio: float, rng: np.random.Generator) -> dict:
        """A minibatch whose "human" entry marks (1.0) the rows drawn from the human buffer."""
        n_human, n_policy = self.split(batch_size, human_ratio)
        parts = []
        for buffer, n, flag in ((self.human, n_human, 1.0), (self.policy, n_policy, 0.0)):
            if n:
                part = buffer.gather(buffer.sample_indices(n, rng))
                part["human"] = np.full(n, flag, dtype=np.float32)
                parts.append(part)
        return concat_batches(parts)


def concat_batches(parts: list[dict]) -> dict:
    if len(parts) == 1:
        return parts[0]
    out: dict = {}
    for key, value in parts[0].items():
        if isinstance(value, dict):
            out[key] = {k: np.concatenate([p[key][k] for p in parts]) for k in value}
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out
