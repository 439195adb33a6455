"""Evaluate a policy on the sim: no takeover, no exploration noise."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from hilrl.actor.loop import PolicyRunner
from hilrl.learner.networks import Policy


def evaluate(policy: Policy, env, episodes: int, seed: int, progress: bool = True) -> dict:
    """Run `episodes` deterministic episodes; success rate, mean length and per-episode outcomes."""
    runner = PolicyRunner(env.spec, noise=0.0, rng=np.random.default_rng(seed))
    runner.policy = policy
    rng = np.random.default_rng(seed)
    outcomes, lengths, returns = [], [], []
    for _ in tqdm(range(episodes), desc="evaluating", unit="ep", disable=not progress):
        obs = env.reset(seed=int(rng.integers(2**31 - 1)))
        runner.drop_plan()  # chunked policies: no action chunk carries over from the last episode
        success, steps, done, total = False, 0, False, 0.0
        while not done:
            obs, reward, terminated, truncated, info = env.step(runner.act(obs, explore=False))
            success = success or bool(info.get("success", False))
            total += reward
            steps += 1
            done = terminated or truncated
        outcomes.append(success)
        lengths.append(steps)
        returns.append(total)
    return {"episodes": episodes, "success_rate": float(np.mean(outcomes)), "mean_return": float(np.mean(returns)),
            "mean_length": float(np.mean(lengths)), "successes": int(np.sum(outcomes))}
