"""Does a smaller encoder-pretraining batch hurt? Held-out BC loss and seconds per step by batch size (issue 17).

    MUJOCO_GL=egl python benchmarks/pretrain_batch.py --runs 16:100 64:100 16:400

Scripted camera demonstrations as in benchmarks/camera_study.py (``--demos`` for training, ``--held-out``
more from another expert seed and other block positions); for each ``BATCH:STEPS`` the encoder is pretrained
by behaviour cloning (`pretrain_encoder`, the same seed) and its policy's BC loss (normalised actions, mean
squared error) is measured on every held-out transition. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from camera_study import Clock, record_demos

from hilrl.actor.config import ActorConfig
from hilrl.buffers.replay import DualBuffer
from hilrl.hardware.expert import ScriptedExpert
from hilrl.hardware.sim import SimPickCube
from hilrl.learner.encoder_pretrain import pretrain_encoder


def demos(seed: int, episodes: int) -> tuple[object, DualBuffer]:
    with SimPickCube(seed=seed, cameras=True) as env:
        buffers = DualBuffer(env.spec, 100 * episodes + 1, 1)
        record_demos(env, ScriptedExpert(noise=ActorConfig().demo_noise, seed=seed + 6000), episodes, buffers, Clock())
        return env.spec, buffers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["16:100", "64:100"], help="BATCH:STEPS per run")
    p.add_argument("--demos", type=int, default=15)
    p.add_argument("--held-out", type=int, default=5)
    p.add_argument("--seed", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(1)
    spec, train = demos(args.seed, args.demos)
    _, held = demos(args.seed + 50_000, args.held_out)
    print(json.dumps({"train_transitions": len(train.human), "held_out_transitions": len(held.human),
                      "load": round(os.getloadavg()[0], 1)}), flush=True)
    for run in args.runs:
        batch, steps = (int(v) for v in run.split(":"))
        with tempfile.TemporaryDirectory() as tmp:
            r = pretrain_encoder(spec, train.human, Path(tmp) / "enc.safetensors", steps=steps, batch_size=batch,
                                 seed=args.seed, held_out=held.human)
        print(json.dumps({"batch": batch, "steps": steps, "s_per_step": round(r["seconds"] / steps, 2),
                          "train_loss_first": round(r["first_loss"], 4), "train_loss_last": round(r["last_loss"], 4),
                          "held_out_loss": round(r["held_out_loss"], 4), "load": round(os.getloadavg()[0], 1)}),
              flush=True)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
