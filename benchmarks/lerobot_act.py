"""A LeRobot ACT policy trained with LeRobot's own training code on hilrl's scripted sim demonstrations.

The pipeline a user would run, step by step:

1. ``hilrl record``: scripted-expert demonstrations on the sim (``--demo-noise`` noisy execution);
2. ``hilrl dataset export``: a local LeRobotDataset (``observation.state`` = the sim's ``agent_pos``, as
   LeRobot 0.4.4's ACT needs, ``observation.environment_state``, ``action``; no images);
3. ``lerobot-train --policy.type=act``: the ``pretrained_model`` directory that ``hilrl actor
   --residual-base lerobot:PATH`` loads (its default mapping reads ``observation.state`` from ``agent_pos``).

``--tiny`` makes the few-kilobyte policy the CI test loads (tests/data/lerobot_act_tiny, a handful of
training steps: it tests the plumbing, not the skill):

    python benchmarks/lerobot_act.py --tiny --output tests/data/lerobot_act_tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = {"dim_model": 32, "dim_feedforward": 64, "n_heads": 2, "n_encoder_layers": 1, "n_decoder_layers": 1,
        "chunk_size": 5, "n_action_steps": 5, "use_vae": "false"}
SMALL = {"dim_model": 128, "dim_feedforward": 512, "n_heads": 4, "n_encoder_layers": 2, "n_decoder_layers": 1,
         "chunk_size": 10, "n_action_steps": 10, "use_vae": "false"}


def _env() -> dict[str, str]:
    return dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"), HF_HUB_OFFLINE="1")


def _run(cmd: list[str], what: str, log: Path | None = None) -> str:
    """Run ``cmd``; its stdout. ``log``: stdout and stderr also go there as they come (progress of long runs)."""
    if log is None:
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env())
        out, err = r.stdout, r.stderr
    else:
        with open(log, "w") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, env=_env())
        out = err = log.read_text()
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {r.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return out


def make_dataset(out: Path, episodes: int, seed: int, demo_noise: float) -> dict:
    """``out``/demos.zarr (as recorded) and ``out``/dataset (exported: ``agent_pos`` is ``observation.state``)."""
    hilrl = [sys.executable, "-m", "hilrl.deploy.cli"]
    rec = json.loads(_run([*hilrl, "record", "--output", str(out / "demos.zarr"), "--episodes", str(episodes),
                           "--seed", str(seed), "--demo-noise", str(demo_noise)], "hilrl record").splitlines()[-1])
    _run([*hilrl, "dataset", "export", "--recording", str(out / "demos.zarr"), "--output",
          str(out / "dataset")], "hilrl dataset export")
    return rec


def train_act(dataset: Path, out: Path, steps: int, seed: int, batch_size: int, arch: dict, lr: float = 1e-4,
              log: Path | None = None) -> Path:
    """``lerobot-train`` (LeRobot's own script) on ``dataset``; the ``pretrained_model`` directory it wrote."""
    cmd = [sys.executable, "-m", "lerobot.scripts.lerobot_train", f"--dataset.repo_id=local/{dataset.name}",
           f"--dataset.root={dataset}", "--policy.type=act", "--policy.device=cpu", "--policy.push_to_hub=false",
           *(f"--policy.{k}={v}" for k, v in arch.items()), f"--policy.optimizer_lr={lr}",
           f"--steps={steps}", f"--batch_size={batch_size}", f"--save_freq={steps}", "--eval_freq=0",
           f"--log_freq={max(1, steps // 20)}", "--num_workers=0", "--wandb.enable=false", f"--seed={seed}",
           f"--output_dir={out}"]
    _run(cmd, "lerobot-train", log)
    model = out / "checkpoints" / "last" / "pretrained_model"
    if not (model / "model.safetensors").exists():
        raise RuntimeError(f"lerobot-train wrote no {model}")
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, required=True, help="pretrained_model directory to create")
    p.add_argument("--tiny", action="store_true", help="the CI policy: 4 demos, a tiny ACT, 5 training steps")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.output.exists():
        raise SystemExit(f"{args.output} exists; choose a new --output")
    episodes, steps, arch, batch = (4, 5, TINY, 8) if args.tiny else (args.episodes, args.steps, SMALL, 64)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_dataset(work, episodes, args.seed, 0.1)
        model = train_act(work / "dataset", work / "train", steps, args.seed, batch, arch)
        shutil.copytree(model, args.output, ignore=shutil.ignore_patterns("train_config.json"))
    print(json.dumps({"output": str(args.output), "episodes": episodes, "steps": steps,
                      "seconds": round(time.monotonic() - t0, 1)}))


if __name__ == "__main__":
    main()
