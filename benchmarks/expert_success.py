"""Sim throughput and scripted-expert success rates on SimPickCube.

Usage: ``python benchmarks/expert_success.py [--episodes 100] [--seed 0]``

Prints the raw sim speed (steps/s with random actions) and, over N seeded episodes each, the expert's
success rate and mean episode length with xyz noise 0, 0.1 and 0.3, and when it takes over
(noise 0) from a state reached by 20-40 random actions, or by 10-30 steps of a clumsy agent (the
expert with noise 1.0 and a random gripper channel, which tends to push, half-grasp or drop the block).
Takeover episodes whose prefix already ended the episode (block pushed out of bounds) are counted
separately and left out of the rate.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from hilrl.hardware.expert import ScriptedExpert
from hilrl.hardware.sim import SimPickCube

Prefix = Callable[[SimPickCube, dict[str, np.ndarray], np.random.Generator], tuple[dict, bool]]


def random_prefix(env: SimPickCube, obs: dict, rng: np.random.Generator) -> tuple[dict, bool]:
    """20-40 uniformly random actions; returns (obs, episode_ended)."""
    for _ in range(int(rng.integers(20, 41))):
        obs, _, terminated, truncated, _ = env.step(rng.uniform(env.spec.action.low, env.spec.action.high))
        if terminated or truncated:
            return obs, True
    return obs, False


def clumsy_prefix(env: SimPickCube, obs: dict, rng: np.random.Generator) -> tuple[dict, bool]:
    """10-30 steps of a very noisy expert with a random gripper channel; returns (obs, episode_ended)."""
    clumsy = ScriptedExpert(noise=1.0, seed=int(rng.integers(2**31)))
    for _ in range(int(rng.integers(10, 31))):
        action = clumsy.act(obs)
        action[3] = rng.uniform(0.0, 2.0)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return obs, True
    return obs, False


def steps_per_second(env: SimPickCube, steps: int = 500) -> float:
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(env.spec.action.low, env.spec.action.high))
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def finish_with_expert(env: SimPickCube, expert: ScriptedExpert, obs: dict) -> tuple[bool, int]:
    """Let the expert run the rest of the episode; returns (success, expert steps)."""
    expert.reset()
    steps, done, info = 0, False, {"success": False}
    while not done:
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        steps += 1
        done = terminated or truncated
    return bool(info["success"]), steps


def evaluate(env: SimPickCube, episodes: int, noise: float, seed: int, prefix: Prefix | None = None) -> str:
    expert = ScriptedExpert(noise=noise, seed=seed)
    rng = np.random.default_rng(seed)
    successes, lengths, skipped = 0, [], 0
    for i in range(episodes):
        obs = env.reset(seed=seed * 100_000 + i)
        if prefix is not None:
            obs, ended = prefix(env, obs, rng)
            if ended:
                skipped += 1
                continue
        success, steps = finish_with_expert(env, expert, obs)
        successes += success
        lengths.append(steps)
    n = episodes - skipped
    extra = f", {skipped} ended before takeover" if prefix is not None else ""
    return f"{successes}/{n} = {successes / max(n, 1):6.1%}  mean expert steps {np.mean(lengths):5.1f}{extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    env = SimPickCube(seed=args.seed)
    print(f"sim: {steps_per_second(env):.0f} steps/s (random actions, one process)")
    for noise in (0.0, 0.1, 0.3):
        print(f"expert noise {noise:.1f}:          {evaluate(env, args.episodes, noise, args.seed)}")
    print(f"takeover after random:    {evaluate(env, args.episodes, 0.0, args.seed, random_prefix)}")
    print(f"takeover after clumsy:    {evaluate(env, args.episodes, 0.0, args.seed, clumsy_prefix)}")
    env.close()


if __name__ == "__main__":
    main()
