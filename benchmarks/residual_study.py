"""Residual action fine-tuning study: can a bounded correction fix a miscalibrated base policy?

Task: the sim pick-cube with a random block position (hardware/sim.py). Base: the scripted expert
(hardware/expert.py), noise-free, with a fixed xyz bias the arm does not have (``--bias``, action
units; the default ``0.37 0.37 0`` makes its closed loop settle ~1.6 cm off the block, so it often never
aligns closely enough to descend, or grasps off-centre). Residual: ``final = clamp(base + scale *
tanh(delta(s, base)))`` (learner/residual.py, ``--scale`` in action units), trained online with pure TD3
(BC weight 0, ``--critic-warmup`` critic-only updates first) on the task's sparse reward.

The loop is synchronous and in-process (no gRPC): the project's `SimPickCube`, the actor's
`ResidualBaseEnv` (it adds ``base_action`` to every observation, exactly as ``hilrl actor --residual-base
expert`` does), the learner's `TD3` with a residual `PolicyConfig`, and a plain numpy ring buffer (all
data is the policy's own; there is no human here). Exploration: Gaussian noise of ``--noise`` x the
half-range on the final action. One TD3 update per environment step after ``--start-steps``.

Measured per seed, on the same ``--eval-episodes`` block positions, with no noise: the base alone (the
untrained residual, which is exactly the base) and the trained residual. Failure = no lift within 100
steps. Grasp error = xy distance (mm) between the gripper's pinch point and the block centre at the first
observation with the gripper commanded closed (set-point > 5 % of closed), or at the last step of an
episode in which it never closes.

    python benchmarks/residual_study.py --seeds 0 1       # prints a markdown table (docs/residual.md)
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hilrl.actor.residual_base import ResidualBaseEnv  # noqa: E402
from hilrl.buffers.spec import state_vector  # noqa: E402
from hilrl.hardware.expert import ScriptedExpert  # noqa: E402
from hilrl.hardware.sim import GRIPPER, GRIPPER_CLOSED, TCP, SimPickCube  # noqa: E402
from hilrl.learner.networks import compute_state_stats, policy_config_for  # noqa: E402
from hilrl.learner.td3 import TD3, TD3Config  # noqa: E402

EVAL_SEED = 10_000


def grasp_error_mm(obs: dict[str, np.ndarray]) -> float:
    return 1000.0 * float(np.linalg.norm(obs["agent_pos"][TCP][:2] - obs["environment_state"][:2]))


def evaluate(env: ResidualBaseEnv, td3: TD3, episodes: int) -> tuple[float, float]:
    """(failure rate, mean grasp error in mm) over ``episodes`` fixed block positions, no noise."""
    rng = np.random.default_rng(EVAL_SEED)
    failures, errors = 0, []
    for _ in range(episodes):
        obs = env.reset(seed=int(rng.integers(2**31 - 1)))
        error, success, done = None, False, False
        while not done:
            with torch.no_grad():
                action = td3.policy(torch.from_numpy(state_vector(obs, env.spec))[None])[0].numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            success = success or reward > 0
            if error is None and obs["agent_pos"][GRIPPER] > 0.05 * GRIPPER_CLOSED:
                error = grasp_error_mm(obs)
            done = terminated or truncated
        failures += not success
        errors.append(grasp_error_mm(obs) if error is None else error)
    return failures / episodes, float(np.mean(errors))


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    expert = ScriptedExpert(noise=0.0, bias=tuple(args.bias))
    env = ResidualBaseEnv(SimPickCube(seed=seed), expert.act, expert.reset)
    spec = env.spec
    low, high = np.asarray(spec.action.low, np.float32), np.asarray(spec.action.high, np.float32)
    half = (high - low) / 2
    cfg = policy_config_for(spec, (256, 256), residual_scale=args.scale)
    td3 = TD3(cfg, TD3Config(), torch.device("cpu"), seed=seed)

    n, S, A = args.train_steps, spec.state_dim, spec.action_dim
    buf = {"state": np.zeros((n, S), np.float32), "action": np.zeros((n, A), np.float32),
           "reward": np.zeros(n, np.float32), "next_state": np.zeros((n, S), np.float32),
           "done": np.zeros(n, np.float32)}
    t0 = time.perf_counter()
    obs, size, episodes, train_successes = env.reset(seed=int(rng.integers(2**31 - 1))), 0, 0, 0
    base_fail, base_err = None, None
    for step in range(n):
        if step == args.start_steps:  # statistics of the first data (the base's own states), then evaluate
            mean, std = compute_state_stats(buf["state"][:size])
            td3.set_normalization(mean, std, low, high)
            base_fail, base_err = evaluate(env, td3, args.eval_episodes)
            obs = env.reset(seed=int(rng.integers(2**31 - 1)))
        state = state_vector(obs, spec)
        with torch.no_grad():
            action = td3.policy(torch.from_numpy(state)[None])[0].numpy()
        action = np.clip(action + rng.normal(0.0, args.noise, A).astype(np.float32) * half, low, high)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buf["state"][size], buf["action"][size], buf["reward"][size] = state, action, reward
        buf["next_state"][size], buf["done"][size] = state_vector(next_obs, spec), float(terminated)
        size += 1  # noqa: SIM113  (also read before the update below)
        obs = next_obs
        if terminated or truncated:
            episodes += 1
            train_successes += reward > 0
            obs = env.reset(seed=int(rng.integers(2**31 - 1)))
        if step >= args.start_steps:
            idx = rng.integers(0, size, args.batch_size)
            td3.update({k: torch.from_numpy(v[idx]) for k, v in buf.items()}, bc_weight=0.0,
                       update_actor=step >= args.start_steps + args.critic_warmup)
    res_fail, res_err = evaluate(env, td3, args.eval_episodes)
    return {"seed": seed, "base_fail": base_fail, "base_err": base_err, "res_fail": res_fail, "res_err": res_err,
            "train_episodes": episodes, "train_success": train_successes / max(episodes, 1),
            "minutes": (time.perf_counter() - t0) / 60}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--bias", type=float, nargs=3, default=[0.37, 0.37, 0.0], help="expert xyz bias, action units")
    p.add_argument("--scale", type=float, default=0.1, help="residual bound, normalised action units")
    p.add_argument("--train-steps", type=int, default=8000, help="environment steps per seed (incl. start steps)")
    p.add_argument("--start-steps", type=int, default=1000, help="steps of the untrained residual before updates")
    p.add_argument("--critic-warmup", type=int, default=1000, help="first updates train only the critic")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--noise", type=float, default=0.1, help="exploration noise std, fraction of the half-range")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--torch-threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)
    print(f"bias {args.bias}, scale {args.scale}, {args.train_steps} steps/seed, {args.eval_episodes} eval episodes",
          flush=True)
    rows = []
    for seed in args.seeds:
        r = run_seed(seed, args)
        rows.append(r)
        print(f"seed {seed}: base fail {r['base_fail']:.0%} err {r['base_err']:.1f} mm -> residual fail "
              f"{r['res_fail']:.0%} err {r['res_err']:.1f} mm ({r['train_episodes']} training episodes, "
              f"{r['train_success']:.0%} solved while exploring, {r['minutes']:.1f} min)", flush=True)
    print("\n| seed | base failure | residual failure | base grasp error (mm) | residual grasp error (mm) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['seed']} | {r['base_fail']:.0%} | {r['res_fail']:.0%} | {r['base_err']:.1f} | "
              f"{r['res_err']:.1f} |")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("base_fail", "res_fail", "base_err", "res_err")}
    print(f"| mean | {mean['base_fail']:.0%} | {mean['res_fail']:.0%} | {mean['base_err']:.1f} | "
          f"{mean['res_err']:.1f} |")


if __name__ == "__main__":
    main()
