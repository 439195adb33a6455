"""Residual RL on a LeRobot ACT base (issue 18, item 2): the pre-registered study of docs/residual.md.

Per seed (``--seeds``), each with its own data and its own base, in ``--work-dir``/seed{S}-demos{N}/:

1. ``--demos`` scripted-expert demonstrations on the sim (``hilrl record --seed SEED --demo-noise 0.1``),
   exported with ``hilrl dataset export`` (the sim's ``agent_pos`` goes out as ``observation.state``);
2. a small ACT trained on them by LeRobot's own ``lerobot-train`` (``--seed SEED``; architecture and budget
   below, pre-registered in docs/residual.md), state + environment state, no images;
3. the base's success on the 50 fixed block positions of ``hilrl eval`` (seed 10000): the actor's
   ``ResidualBaseEnv`` with ``lerobot:PATH`` and an untrained residual policy, which is exactly the base
   (tests/test_lerobot_base.py), through ``hilrl.actor.evaluate.evaluate``, as ``hilrl eval`` runs it;
4. with ``--residual-steps`` > 0: the residual, through the real processes: ``hilrl learner --residual
   --demo-episodes N`` and ``hilrl actor --env sim --fps 10 --seed SEED --residual-base lerobot:PATH
   --takeover-after 0`` until the learner holds ``--residual-steps`` autonomous steps and has made as many
   online updates, then ``--curve-points`` of its published weight versions scored on the same 50 positions
   (the last one is the result).

Every phase writes its own JSON next to its files and is skipped when that JSON exists, so an interrupted
run resumes where it stopped (a half-trained base is retrained; a half-run residual learner is resumed with
``--resume``). ``--output`` gets one object per (seed, demos) after each phase.

    MUJOCO_GL=egl python benchmarks/residual_lerobot_study.py --seeds 0 1 2 --demos 20 --train-steps 2000 \
        --residual-steps 8000 --work-dir runs/act-study --output docs/residual-lerobot-study.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
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
from hilrl.learner.networks import Policy, load_policy_file, policy_config_for  # noqa: E402
from hilrl.learner.td3 import TD3, TD3Config  # noqa: E402

EVAL_SEED = 10_000  # hilrl eval's default: the same 50 block positions for base and residual
LOSS = re.compile(r" step:\S+ .*?loss:([0-9.]+)")  # lerobot-train's log line, every --log_freq steps


def evaluate_on_base(model: Path, episodes: int, policy: Policy | None = None) -> dict:
    """``policy`` (a residual policy; None: the untrained one, exactly the base) over the base on ``episodes``
    fixed positions."""
    sim = SimPickCube(seed=EVAL_SEED)
    base = LeRobotBase(model, sim.spec)
    env = ResidualBaseEnv(sim, base, base.reset)
    if policy is None:
        spec = env.spec
        td3 = TD3(policy_config_for(spec, (32, 32), residual_scale=0.1), TD3Config(), torch.device("cpu"), seed=0)
        td3.set_normalization(np.zeros(spec.state_dim), np.ones(spec.state_dim), spec.action.low, spec.action.high)
        policy = td3.policy
    try:
        return evaluate(policy, env, episodes, seed=EVAL_SEED, progress=False)
    finally:
        env.close()


def _phase(path: Path, make) -> dict:
    """The JSON at ``path``; made (and written) by ``make()`` when it is not there yet: the unit of resuming."""
    if path.is_file():
        return json.loads(path.read_text())
    t0 = time.monotonic()
    result = make()
    result["seconds"] = round(time.monotonic() - t0, 1)
    path.write_text(json.dumps(result, indent=1))
    return result


def _hilrl(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hilrl.deploy.cli", *args], stdout=open(log, "ab"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _status(address: str) -> dict | None:
    r = subprocess.run([sys.executable, "-m", "hilrl.deploy.cli", "status", "--learner", address, "--timeout-s", "10"],
                       capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_residual(out: Path, model: Path, seed: int, demos: int, args: argparse.Namespace) -> dict:
    """Learner + actor as separate processes until ``--residual-steps`` autonomous steps, then the curve."""
    run_dir, port = out / "residual", _free_port()
    learner_args = ["--residual", "--residual-scale", str(args.scale), "--demo-episodes", str(demos),
                    "--keep-weight-versions", "100000", "--torch-threads", "1", "--seed", str(seed),
                    *shlex.split(args.learner_args)]
    resume = ["--resume"] if run_dir.exists() else []
    learner = _hilrl("learner", "--port", str(port), "--output-dir", str(run_dir), *learner_args, *resume,
                     log=out / "learner.log")
    actor = _hilrl("actor", "--learner", f"127.0.0.1:{port}", "--env", "sim", "--fps", str(args.actor_fps),
                   "--seed", str(seed),
                   "--residual-base", f"lerobot:{model}", "--takeover-after", "0", "--demo-noise",
                   str(args.demo_noise), "--state-dir", str(out / "actor-state"), log=out / "actor.log")
    t0 = time.monotonic()
    try:
        while True:
            time.sleep(15)
            if learner.poll() is not None or actor.poll() is not None:
                raise RuntimeError(f"learner or actor exited early; see {out}/learner.log and actor.log")
            status = _status(f"127.0.0.1:{port}")
            if (status and status["stage"] == "online" and status["buffers"]["policy"]["size"] >= args.residual_steps
                    and status["learner_step"] - status["offline_steps"] >= args.residual_steps):
                break  # as many autonomous steps as pre-registered, and at least as many online updates
    finally:
        for proc in (actor, learner):  # the actor first: its last batches reach the learner
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(300)
    train_s = time.monotonic() - t0
    files = sorted((run_dir / "weights").glob("v*.safetensors"))
    picks = sorted({round(i * (len(files) - 1) / max(1, args.curve_points - 1)) for i in range(args.curve_points)})
    curve = []
    for i in picks:
        r = evaluate_on_base(model, args.eval_episodes, load_policy_file(files[i]))
        curve.append({"version": int(files[i].stem.removeprefix("v")), "success_rate": r["success_rate"],
                      "result": r})
        print(json.dumps({"seed": seed, "version": curve[-1]["version"], "success": r["success_rate"]}), flush=True)
    return {"learner_args": learner_args, "actor_fps": args.actor_fps,
            "autonomous_steps": status["buffers"]["policy"]["size"], "learner_step": status["learner_step"],
            "online_updates": status["learner_step"] - status["offline_steps"], "weight_versions": len(files),
            "curve": curve, "final_success_rate": curve[-1]["success_rate"], "train_seconds": round(train_s, 1)}


def run(seed: int, demos: int, args: argparse.Namespace, work: Path) -> dict:
    out = work / f"seed{seed}-demos{demos}"
    out.mkdir(parents=True, exist_ok=True)

    def data() -> dict:
        for stale in ("demos.zarr", "dataset"):  # a half-made dataset from an interrupted run
            shutil.rmtree(out / stale, ignore_errors=True)
        return make_dataset(out, demos, seed, args.demo_noise)

    recorded = _phase(out / "data.json", data)
    arch = {**SMALL, "chunk_size": args.chunk, "n_action_steps": args.n_action_steps}

    def train() -> dict:
        shutil.rmtree(out / "train", ignore_errors=True)  # lerobot-train refuses an existing output dir
        model = train_act(out / "dataset", out / "train", args.train_steps, seed, args.batch_size, arch, args.lr,
                          log=out / "train.log")
        every = max(1, args.train_steps // 20)  # train_act's --log_freq (lerobot prints "1K" for 1000..1999)
        losses = [((i + 1) * every, float(v)) for i, v in enumerate(LOSS.findall((out / "train.log").read_text()))]
        return {"model": str(model), "loss_curve": losses}

    trained = _phase(out / "train.json", train)
    model = Path(trained["model"])
    base = _phase(out / "base.json", lambda: {"result": evaluate_on_base(model, args.eval_episodes)})
    result = {"seed": seed, "demos": demos, "demo_success_rate": recorded["success_rate"],
              "demo_steps": recorded["steps"], "train_steps": args.train_steps, "batch_size": args.batch_size,
              "lr": args.lr, "arch": arch, "loss_curve": trained["loss_curve"], "base": base["result"],
              "seconds": {"data": recorded["seconds"], "train": trained["seconds"], "eval": base["seconds"]},
              "model": str(model)}
    if args.residual_steps > 0:
        residual = _phase(out / "residual.json", lambda: run_residual(out, model, seed, demos, args))
        result["residual"] = residual
        result["gain_points"] = round(100 * (residual["final_success_rate"] - base["result"]["success_rate"]), 1)
        result["seconds"]["residual"] = residual["seconds"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pre-registered: 0 1 2")
    p.add_argument("--demos", type=int, nargs="+", default=[20], help="demonstrations per base (several: a sweep)")
    p.add_argument("--demo-noise", type=float, default=0.1, help="the scripted human's xyz noise, action units")
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--chunk", type=int, default=10, help="ACT chunk_size")
    p.add_argument("--n-action-steps", type=int, default=10, help="ACT n_action_steps (executed per chunk)")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--residual-steps", type=int, default=0,
                   help="autonomous actor steps of the residual phase (pre-registered: 8000; 0 = bases only)")
    p.add_argument("--scale", type=float, default=0.1, help="the learner's --residual-scale")
    p.add_argument("--actor-fps", type=int, default=10, help="the actor's control rate (10: the real arm's)")
    p.add_argument("--learner-args", default="", help="more hilrl learner options (the study: none, main's defaults)")
    p.add_argument("--curve-points", type=int, default=6, help="published weight versions scored, first to last")
    p.add_argument("--work-dir", type=Path, default=Path("runs/residual-lerobot-study"),
                   help="datasets, models, runs and each phase's JSON; rerun with the same one to resume")
    p.add_argument("--output", type=Path, required=True, help="JSON file: one object per (seed, demos)")
    args = p.parse_args()
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    results = []
    for seed in args.seeds:
        for demos in args.demos:
            r = run(seed, demos, args, args.work_dir) | {"commit": commit}
            results.append(r)
            print(json.dumps({k: r[k] for k in ("seed", "demos", "seconds")} | {
                "base_success": r["base"]["success_rate"], "gain_points": r.get("gain_points")}), flush=True)
            args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
