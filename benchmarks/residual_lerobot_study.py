"""Residual RL on a LeRobot ACT base (issue 18, item 2): the base part, and the pilot that sizes it.

Per seed (``--seeds``), each with its own data and its own base:

1. ``--demos`` scripted-expert demonstrations on the sim (``hilrl record --seed SEED --demo-noise 0.1``),
   exported with ``hilrl dataset export`` (state renamed ``observation.state``, see benchmarks/lerobot_act.py);
2. a small ACT trained on them by LeRobot's own ``lerobot-train`` (``--seed SEED``; architecture and budget
   below, pre-registered in docs/residual.md), state + environment state, no images;
3. the base's success on the 50 fixed block positions of ``hilrl eval`` (seed 10000): the actor's
   ``ResidualBaseEnv`` with ``lerobot:PATH`` and an untrained residual policy, which is exactly the base
   (tests/test_lerobot_base.py), through ``hilrl.actor.evaluate.evaluate``, as ``hilrl eval`` runs it.

The residual phase (``hilrl learner --residual`` + ``hilrl actor --residual-base lerobot:PATH``, then
``hilrl eval --checkpoint RUN --residual-base lerobot:PATH`` on the same positions) is for a later session,
with the learning defaults settled then. One JSON object per seed goes to ``--output``.

    MUJOCO_GL=egl python benchmarks/residual_lerobot_study.py --seeds 0 --demos 5 10 20 --output pilot.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # lerobot-train too: the machine is shared

import numpy as np  # noqa: E402
import torch  # noqa: E402
from lerobot_act import SMALL, make_dataset, train_act  # noqa: E402

from hilrl.actor.evaluate import evaluate  # noqa: E402
from hilrl.actor.lerobot_base import LeRobotBase  # noqa: E402
from hilrl.actor.residual_base import ResidualBaseEnv  # noqa: E402
from hilrl.hardware.sim import SimPickCube  # noqa: E402
from hilrl.learner.networks import policy_config_for  # noqa: E402
from hilrl.learner.td3 import TD3, TD3Config  # noqa: E402

EVAL_SEED = 10_000  # hilrl eval's default: the same 50 block positions for base and residual
LOSS = re.compile(r" step:\S+ .*?loss:([0-9.]+)")  # lerobot-train's log line, every --log_freq steps


def evaluate_base(model: Path, episodes: int) -> dict:
    """The base alone on ``episodes`` fixed positions: the untrained residual policy executes exactly it."""
    sim = SimPickCube(seed=EVAL_SEED)
    base = LeRobotBase(model, sim.spec)
    env = ResidualBaseEnv(sim, base, base.reset)
    spec = env.spec
    td3 = TD3(policy_config_for(spec, (32, 32), residual_scale=0.1), TD3Config(), torch.device("cpu"), seed=0)
    td3.set_normalization(np.zeros(spec.state_dim), np.ones(spec.state_dim), spec.action.low, spec.action.high)
    try:
        return evaluate(td3.policy, env, episodes, seed=EVAL_SEED, progress=False)
    finally:
        env.close()


def run(seed: int, demos: int, args: argparse.Namespace, work: Path) -> dict:
    out = work / f"seed{seed}-demos{demos}"
    out.mkdir(parents=True)
    t0 = time.monotonic()
    recorded = make_dataset(out, demos, seed, args.demo_noise)
    t1 = time.monotonic()
    arch = {**SMALL, "chunk_size": args.chunk, "n_action_steps": args.n_action_steps}
    model = train_act(out / "dataset", out / "train", args.train_steps, seed, args.batch_size, arch, args.lr,
                      log=out / "train.log")
    t2 = time.monotonic()
    every = max(1, args.train_steps // 20)  # train_act's --log_freq (lerobot prints "1K" for 1000..1999)
    losses = [((i + 1) * every, float(v)) for i, v in enumerate(LOSS.findall((out / "train.log").read_text()))]
    result = evaluate_base(model, args.eval_episodes)
    t3 = time.monotonic()
    return {"seed": seed, "demos": demos, "demo_success_rate": recorded["success_rate"],
            "demo_steps": recorded["steps"], "train_steps": args.train_steps, "batch_size": args.batch_size,
            "lr": args.lr, "arch": arch, "loss_curve": losses, "base": result,
            "seconds": {"data": round(t1 - t0, 1), "train": round(t2 - t1, 1), "eval": round(t3 - t2, 1)},
            "model": str(model) if args.keep else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--demos", type=int, nargs="+", default=[10], help="demonstrations per base (several: a sweep)")
    p.add_argument("--demo-noise", type=float, default=0.1, help="the scripted human's xyz noise, action units")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--chunk", type=int, default=10, help="ACT chunk_size")
    p.add_argument("--n-action-steps", type=int, default=10, help="ACT n_action_steps (executed per chunk)")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--work-dir", type=Path, default=None, help="keep datasets and models here (default: a temp dir)")
    p.add_argument("--output", type=Path, required=True, help="JSON file: one object per (seed, demos)")
    args = p.parse_args()
    torch.set_num_threads(1)
    args.keep = args.work_dir is not None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for seed in args.seeds:
            for demos in args.demos:
                r = run(seed, demos, args, work)
                results.append(r)
                print(json.dumps({k: r[k] for k in ("seed", "demos", "seconds")} | {
                    "base_success": r["base"]["success_rate"], "final_loss": r["loss_curve"][-1:]}), flush=True)
                args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
