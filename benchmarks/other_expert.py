"""Does `hilrl learner --demos DATASET` with its defaults learn from someone else's data? (issue 16, item 5)

    MUJOCO_GL=egl python benchmarks/other_expert.py --label main-defaults --out docs/other-expert.json

1. The second scripted expert (`hilrl.hardware.swoop_expert.SwoopExpert`: a swooping approach, incremental
   gripper, Ornstein-Uhlenbeck noise) is measured on its own: ``--expert-episodes`` episodes per noise level.
2. Two 20-episode datasets are recorded with it through lerobot's own ``LeRobotDataset`` writer
   (`record_lerobot`; state + environment state, no images, no hilrl metadata): A (noise 0.2, seed 1) and
   B (noise 0.3, seed 2). They are kept under ``--work`` and reused by later calls.
3. For each dataset, the real command line: ``hilrl learner --demos DATASET`` with no algorithm flag (only the
   feature mapping of docs/datasets.md, a free port, an output directory and ``--torch-threads 1``) runs until
   ``hilrl status`` reports the online stage (the offline stage is over and its policy published), is stopped,
   and ``hilrl eval --episodes 50`` scores the published policy (block positions from eval's default seed).

``--learner-args`` adds flags for a labelled non-default comparison. Results go under ``--label`` into the
``--out`` JSON (other labels already there are kept), with the commit, the learner's defaults as the run saw
them, the extra flags, timings and every number.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from hilrl.hardware.swoop_expert import LEARNER_MAP, SwoopExpert, record_lerobot

DATASETS = {"A": {"noise": 0.2, "seed": 1}, "B": {"noise": 0.3, "seed": 2}}
EPISODES = 20


def hilrl(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, MUJOCO_GL="egl")
    return subprocess.run([sys.executable, "-m", "hilrl.deploy.cli", *args], capture_output=True, text=True,
                          env=env, **kwargs)


def expert_success(noise: float, episodes: int, seed: int = 0) -> dict:
    """The expert on its own: success rate and mean length over `episodes` seeded episodes."""
    from hilrl.hardware.sim import SimPickCube

    env, expert = SimPickCube(seed=seed), SwoopExpert(noise=noise, seed=seed + 1)
    wins, lengths = 0, []
    for _ in range(episodes):
        obs, done, steps, success = env.reset(), False, 0, False
        expert.reset()
        while not done:
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            done, steps, success = terminated or truncated, steps + 1, success or info["success"]
        wins, lengths = wins + int(success), [*lengths, steps]
    env.close()
    return {"noise": noise, "episodes": episodes, "success_rate": wins / episodes,
            "mean_length": float(np.mean(lengths))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_success(dataset: Path, out_dir: Path, episodes: int = 50, extra: tuple[str, ...] = (),
                    timeout_s: float = 1800) -> dict:
    """`hilrl learner --demos dataset` (defaults) until it goes online, then `hilrl eval --episodes N`."""
    port = _free_port()
    started = time.monotonic()
    log = open(out_dir.with_suffix(".log"), "w")  # noqa: SIM115 (closed below)
    learner = subprocess.Popen([sys.executable, "-m", "hilrl.deploy.cli", "learner", "--port", str(port),
                                "--output-dir", str(out_dir), "--demos", str(dataset), *LEARNER_MAP,
                                "--torch-threads", "1", *extra], stdout=log, stderr=subprocess.STDOUT,
                               env=dict(os.environ, MUJOCO_GL="egl"))
    try:
        while True:
            time.sleep(5)
            if learner.poll() is not None:
                raise SystemExit(f"the learner exited ({learner.returncode}); see {log.name}")
            if time.monotonic() - started > timeout_s:
                raise SystemExit(f"the offline stage did not finish in {timeout_s:.0f}s; see {log.name}")
            r = hilrl("status", "--learner", f"127.0.0.1:{port}", "--timeout-s", "5")
            if r.returncode == 0 and (status := json.loads(r.stdout))["stage"] == "online":
                break
    finally:
        learner.terminate()
        learner.wait()
        log.close()
    offline_s = time.monotonic() - started
    r = hilrl("eval", "--checkpoint", str(out_dir), "--episodes", str(episodes))
    if r.returncode != 0:
        raise SystemExit(f"hilrl eval failed: {r.stderr[-2000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    return {"success_rate": result["success_rate"], "successes": result["successes"], "episodes": episodes,
            "offline_steps": status["offline_steps"], "offline_wall_s": round(offline_s, 1),
            "eval_wall_s": round(time.monotonic() - started - offline_s, 1)}


def learner_defaults() -> dict:
    from hilrl.learner.config import LearnerConfig

    cfg = asdict(LearnerConfig())
    keep = ("offline_steps", "online_bc_weight", "online_bc_decay_steps", "critic_warmup_steps", "utd_ratio",
            "batch_size", "human_ratio", "hidden", "algo")
    return {k: cfg[k] for k in keep if k in cfg}


def commit() -> str:
    r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=Path(__file__).parent).stdout.strip()
    return r.stdout.strip() + ("-dirty" if dirty else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", required=True, help="name of this measurement in --out (e.g. main-defaults)")
    p.add_argument("--out", type=Path, default=Path("docs/other-expert.json"))
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hilrl-other-expert",
                   help="datasets (reused) and learner output directories")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--expert-episodes", type=int, default=50, help="0 skips the expert's own measurement")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--learner-args", nargs=argparse.REMAINDER, default=[],
                   help="extra learner flags for a labelled non-default comparison (last on the line)")
    args = p.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    entry: dict = {"commit": commit(), "learner_defaults": learner_defaults(), "learner_args": args.learner_args,
                   "datasets": {}}
    if args.expert_episodes:
        data["expert"] = [expert_success(d["noise"], args.expert_episodes) for d in DATASETS.values()]
        print("expert on its own:", data["expert"], flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        ds = args.work / f"swoop-{name}"
        if not (ds / "meta" / "info.json").exists():
            data.setdefault("recorded", {})[name] = record_lerobot(ds, EPISODES, **DATASETS[name])
        out = args.work / f"learner-{args.label}-{name}"
        if out.exists():
            raise SystemExit(f"{out} exists; remove it or choose another --label")
        entry["datasets"][name] = {**DATASETS[name], **offline_success(ds, out, args.eval_episodes,
                                                                      tuple(args.learner_args))}
        print(name, entry["datasets"][name], flush=True)
        data[args.label] = entry
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
