"""Evaluate a policy on the sim: no takeover, no exploration noise."""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from hilrl.actor.loop import Decision, run_episode
from hilrl.actor.policy_runner import PolicyRunner
from hilrl.hardware.arm import Env
from hilrl.learner.networks import Policy


def evaluate(policy: Policy, env: Env, episodes: int, seed: int, progress: bool = True) -> dict:
    """Run `episodes` deterministic episodes; success rate, mean length and per-episode outcomes."""
    runner = PolicyRunner(env.spec, noise=0.0, rng=np.random.default_rng(seed))
    runner.policy = policy
    rng = np.random.default_rng(seed)
    outcomes, lengths, returns = [], [], []
    for _ in tqdm(range(episodes), desc="evaluating", unit="ep", disable=not progress):
        obs = env.reset(seed=int(rng.integers(2**31 - 1)))
        runner.drop_plan()  # chunked policies: no action chunk carries over from the last episode
        result = run_episode(env, obs, lambda o, t: Decision(runner.act(o, explore=False)))
        outcomes.append(result.success)
        lengths.append(result.steps)
        returns.append(result.total_reward)
    return {"episodes": episodes, "success_rate": float(np.mean(outcomes)), "mean_return": float(np.mean(returns)),
            "mean_length": float(np.mean(lengths)), "successes": int(np.sum(outcomes))}
