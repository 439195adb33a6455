"""Evaluate a policy on the sim: no takeover, no exploration noise."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from hilrl.actor.loop import Decision, run_episode
from hilrl.actor.policy_runner import PolicyRunner
from hilrl.buffers.spec import state_vector
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


@torch.no_grad()
def evaluate_batched(policy: Policy, envs: Sequence[Env], episodes: int, seed: int) -> dict:
    """`evaluate`'s episodes (the same block positions, from the same ``seed``) on ``len(envs)`` envs stepped
    together: one policy forward (one encoder pass) per step for every running episode, which is what costs
    with cameras. A finished env starts the next episode at once. One-step policies only (no chunks)."""
    if policy.cfg.chunk > 1:
        raise ValueError("evaluate_batched: chunked policies are evaluated with evaluate()")
    spec = envs[0].spec
    runner = PolicyRunner(spec, noise=0.0, rng=np.random.default_rng(seed))  # its clamp (NaN -> hold)
    rng = np.random.default_rng(seed)
    seeds = [int(rng.integers(2**31 - 1)) for _ in range(episodes)]  # evaluate's seed stream
    outcomes, lengths, returns = np.zeros(episodes, bool), np.zeros(episodes), np.zeros(episodes)
    running: dict[int, tuple[int, dict]] = {}  # env index -> (episode, observation)
    started = 0
    for i, env in enumerate(envs[:episodes]):
        running[i], started = (started, env.reset(seed=seeds[started])), started + 1
    while running:
        order = sorted(running)
        obs = [running[i][1] for i in order]
        state = torch.from_numpy(np.stack([state_vector(o, spec) for o in obs]))
        images = {f.name: torch.from_numpy(np.stack([o[f.name] for o in obs])) for f in spec.image_features}
        actions = policy(state, images or None).numpy()
        for i, action in zip(order, actions, strict=True):
            episode = running[i][0]
            next_obs, reward, terminated, truncated, info = envs[i].step(runner.clamp(action))
            outcomes[episode] |= bool(info.get("success", False))
            lengths[episode] += 1
            returns[episode] += reward
            if not (terminated or truncated):
                running[i] = (episode, next_obs)
            elif started < episodes:
                running[i], started = (started, envs[i].reset(seed=seeds[started])), started + 1
            else:
                del running[i]
    return {"episodes": episodes, "success_rate": float(np.mean(outcomes)), "mean_return": float(np.mean(returns)),
            "mean_length": float(np.mean(lengths)), "successes": int(np.sum(outcomes))}
