"""Replay storage throughput and memory: the compact layout against a naive full-copy layout.

Observations: two 128x128x3 uint8 cameras + an 18-d float32 state; action 4-d. Both layouts get the
same stream of transitions (episodes of `--episode-length` steps, each next observation being the
following step's observation, as the assembler produces them), once untimed (filling and wrapping
both rings, so every page is touched) and once timed: the numbers are steady state.

Run: ``python benchmarks/buffer_throughput.py [--capacity 4000] [--inserts 10000] [--seconds 2]``.
Prints insert rate (transitions/s), sample rate (batches/s: `sample_indices` + `gather`, batch 256)
and bytes per transition against the raw observation size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hilrl.buffers.frames import observation_nbytes
from hilrl.buffers.replay import ReplayBuffer, Transition
from hilrl.buffers.spec import Feature, Spec

SPEC = Spec(observation=(Feature("front", "uint8", (128, 128, 3)), Feature("wrist", "uint8", (128, 128, 3)),
                         Feature("state", "float32", (18,))),
            action=Feature("action", "float32", (4,), (-1,) * 4, (1,) * 4))


class NaiveReplayBuffer:
    """The full-copy layout (obs and next_obs each stored in full per slot), for comparison."""

    def __init__(self, spec: Spec, capacity: int) -> None:
        self.capacity = capacity
        self.obs = {f.name: np.zeros((capacity, *f.shape), f.dtype) for f in spec.observation}
        self.next_obs = {f.name: np.zeros((capacity, *f.shape), f.dtype) for f in spec.observation}
        self.action = np.zeros((capacity, spec.action_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.flags = np.zeros((capacity, 4), np.bool_)  # terminated, truncated, intervention, valid
        self.episode_key = np.zeros(capacity, np.int64)
        self.added = 0

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    def add(self, t: Transition) -> None:
        i = self.added % self.capacity
        for name in self.obs:
            self.obs[name][i] = t.obs[name]
            self.next_obs[name][i] = t.next_obs[name]
        self.action[i] = t.action
        self.reward[i] = t.reward
        self.flags[i] = (t.terminated, t.truncated, t.is_intervention, True)
        self.episode_key[i] = t.episode_key
        self.added += 1

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, len(self), size=n)

    def gather(self, idx: np.ndarray) -> dict:
        return {"obs": {k: v[idx] for k, v in self.obs.items()},
                "next_obs": {k: v[idx] for k, v in self.next_obs.items()},
                "action": self.action[idx], "reward": self.reward[idx], "terminated": self.flags[idx, 0]}

    def bytes_per_transition(self) -> float:
        arrays = [*self.obs.values(), *self.next_obs.values(), self.action, self.reward, self.flags, self.episode_key]
        return sum(a.nbytes for a in arrays) / self.capacity


def make_stream(n: int, episode_length: int, rng: np.random.Generator, pool_size: int = 97) -> list[Transition]:
    """`n` transitions of consecutive episodes; observations drawn from a pool of random frames."""
    pool = [{"front": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
             "wrist": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
             "state": rng.normal(size=18).astype(np.float32)} for _ in range(pool_size)]
    out: list[Transition] = []
    k = 0
    while len(out) < n:
        episode = len(out) // episode_length
        obs = [pool[(k + j) % pool_size] for j in range(episode_length + 1)]  # a new object per step
        obs = [dict(o) for o in obs]  # distinct dicts (like decoded messages), shared arrays (memory)
        k += episode_length + 1
        for t in range(episode_length):
            last = t == episode_length - 1
            out.append(Transition(obs[t], rng.uniform(-1, 1, 4).astype(np.float32), float(last), obs[t + 1],
                                  last, False, episode, False))
    return out[:n]


def insert_rate(buffer, stream: list[Transition]) -> float:
    """Transitions/s of the second pass over `stream` (the first fills and wraps: every page touched)."""
    for t in stream:
        buffer.add(t)
    start = time.perf_counter()
    for t in stream:
        buffer.add(t)
    return len(stream) / (time.perf_counter() - start)


def sample_rate(buffer, batch: int, seconds: float, rng: np.random.Generator) -> float:
    buffer.gather(buffer.sample_indices(batch, rng))
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        buffer.gather(buffer.sample_indices(batch, rng))
        n += 1
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity", type=int, default=4000, help="transitions per buffer")
    parser.add_argument("--inserts", type=int, default=10000, help="transitions in the stream; it is "
                        "inserted twice, the second time timed (keep it >= 1.25 x capacity so both rings wrap)")
    parser.add_argument("--episode-length", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=2.0, help="sampling time per layout")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    stream = make_stream(args.inserts, args.episode_length, rng)
    raw = observation_nbytes(SPEC)
    print(f"spec: 2 x uint8[128,128,3] + float32[18]; raw observation {raw} B, obs+next_obs {2 * raw} B; "
          f"capacity {args.capacity}, {len(stream)} timed inserts, episodes of {args.episode_length}")
    print(f"{'layout':8} {'insert/s':>10} {'batches/s':>10} {'B/transition':>13} {'/ obs':>6} {'/ obs+next':>11}"
          f" {'frames/tr':>10}")
    for name, layout in (("naive", NaiveReplayBuffer), ("compact", ReplayBuffer)):
        buffer = layout(SPEC, args.capacity)
        ins = insert_rate(buffer, stream)
        smp = sample_rate(buffer, args.batch, args.seconds, np.random.default_rng(1))
        bpt = buffer.bytes_per_transition()
        frames = buffer.frames_per_transition() if isinstance(buffer, ReplayBuffer) else 2.0
        print(f"{name:8} {ins:10.0f} {smp:10.1f} {bpt:13.0f} {bpt / raw:6.2f} {bpt / (2 * raw):11.2f} {frames:10.3f}")
        del buffer


if __name__ == "__main__":
    main()
