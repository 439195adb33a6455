"""How the arm executes the gripper command, measured on trained offline policies (issue 16, item 5).

    # a learner's offline policy (e.g. benchmarks/other_expert.py's output directory), hilrl eval's positions
    MUJOCO_GL=egl python benchmarks/gripper_execution.py checkpoint /tmp/hilrl-other-expert/learner-X-A \\
        --variants continuous band:0.25 states --episodes 50
    # the learning study's offline start (docs/learning-study.md, condition (a) at online step 0)
    MUJOCO_GL=egl python benchmarks/gripper_execution.py study --seeds 100 101 102 --variants continuous states

The gripper channel is incremental (hardware/sim.py): anything below 1 opens a little every step. A variant
is how `SimPickCube.step` executes it (`hilrl.hardware.arm.executed_gripper`): ``continuous`` (the command
as it is), ``band:D`` (continuous, but within D of 1 it holds exactly) or ``states`` (the gamepad's three
states: open / hold / close). Every variant evaluates the *same* policy on the same block positions, so the
differences are paired. Training never touches the sim's gripper execution here: the study's demos
(`ScriptedExpert`) command exactly 0 or 2, which every variant executes unchanged.

``study`` repeats the study's offline stage (benchmarks/learning_study.py `run`, condition a, up to its first
evaluation: the same demos, seeds, settings and update loop) and evaluates on its held-out positions
(``Regime.eval_seed``, ``Regime.start_episodes`` episodes). The trained policy is kept under ``--work`` and
reused. One JSON line per (policy, variant) is printed and appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from hilrl.actor.evaluate import evaluate
from hilrl.hardware.perturb import make_sim
from hilrl.hardware.sim import SimPickCube
from hilrl.learner.networks import load_policy_file, policy_to_safetensors_bytes
from hilrl.learner.rundir import resolve_policy_file


def set_variant(variant: str) -> None:
    mode, _, band = variant.partition(":")
    SimPickCube.gripper_mode = "continuous" if mode == "band" else mode
    SimPickCube.gripper_hold_band = float(band) if mode == "band" else 0.0


def score(policy, variants: list[str], episodes: int, seed: int, label: str, out: Path | None) -> None:
    for variant in variants:
        set_variant(variant)
        started = time.monotonic()
        env = make_sim(seed=0)
        try:
            r = evaluate(policy, env, episodes, seed=seed, progress=False)
        finally:
            env.close()
        line = {"policy": label, "variant": variant, "episodes": episodes, "eval_seed": seed,
                "success_rate": r["success_rate"], "successes": r["successes"], "mean_length": r["mean_length"],
                "wall_s": round(time.monotonic() - started, 1), "load": os.getloadavg()[0]}
        print(json.dumps(line), flush=True)
        if out is not None:
            with out.open("a") as f:
                f.write(json.dumps(line) + "\n")


def study_policy(seed: int, work: Path):
    """The study's condition (a) policy at online step 0 (learning_study.run's offline stage), cached."""
    sys.path.insert(0, str(Path(__file__).parent))
    from learning_study import Regime, algorithm, offline_start
    from sample_efficiency import Settings as LoopSettings

    from hilrl.actor.config import ActorConfig

    path = work / f"study-a-seed{seed}.safetensors"
    if path.exists():
        return load_policy_file(path)
    regime, algo, actor = Regime(), algorithm("a", Regime()), ActorConfig()
    loop = LoopSettings(demos=regime.demos, demo_noise=actor.demo_noise, exploration_noise=actor.exploration_noise,
                        takeover_after=actor.takeover_after, batch_size=algo["batch_size"])
    _, _, td3, _ = offline_start("a", seed, algo, loop)
    work.mkdir(parents=True, exist_ok=True)
    path.write_bytes(policy_to_safetensors_bytes(td3.policy))
    return load_policy_file(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["checkpoint", "study"])
    p.add_argument("paths", nargs="*", type=Path, help="checkpoint: learner output directories or policy files")
    p.add_argument("--seeds", nargs="+", type=int, default=[100, 101, 102], help="study: the study seeds")
    p.add_argument("--variants", nargs="+", default=["continuous", "states"])
    p.add_argument("--episodes", type=int, help="default: 50 (checkpoint), the study's start episodes (study)")
    p.add_argument("--eval-seed", type=int, help="default: hilrl eval's 10000 (checkpoint), the study's (study)")
    p.add_argument("--work", type=Path, default=Path("/tmp/hilrl-gripper-execution"))
    p.add_argument("--out", type=Path, help="append the JSON lines here")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.what == "checkpoint":
        for path in args.paths:
            policy = load_policy_file(resolve_policy_file(path))
            score(policy, args.variants, args.episodes or 50, args.eval_seed or 10_000, str(path), args.out)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from learning_study import Regime

    regime = Regime()
    for seed in args.seeds:
        score(study_policy(seed, args.work), args.variants, args.episodes or regime.start_episodes,
              args.eval_seed or regime.eval_seed, f"study-a-seed{seed}", args.out)


if __name__ == "__main__":
    main()
