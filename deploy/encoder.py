"""`hilrl encoder`: pretrain a camera policy's image encoder on demonstrations (behaviour cloning).

The CPU route for camera policies (the learner's defaults) freezes the encoder and caches its features;
its filters must see what matters first. The learner pretrains it on its demos by itself
(``--encoder-pretrain-steps``); this command does the same ahead of time, on the demonstrations the learner
will be seeded with (a `hilrl record` file or a LeRobotDataset), and writes the trunk for
``--algo.encoder-weights FILE`` (docs/camera-policy.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hilrl.buffers.lerobot_io import LeRobotMapping, read_demos
from hilrl.buffers.replay import EpisodeAssembler, ReplayBuffer
from hilrl.deploy.configtools import opt


@dataclass
class EncoderConfig:
    demos: Path = opt(Path("demos.zarr"), "demonstrations: a `hilrl record` file or a LeRobotDataset root")
    demo_map: LeRobotMapping = field(default_factory=LeRobotMapping,
                                     metadata={"help": "--demos LeRobotDataset feature mapping (dataset -> hilrl)"})
    output: Path = opt(Path("encoder.safetensors"), "trunk weights to write (for --algo.encoder-weights)")
    steps: int = opt(2000, "behaviour-cloning Adam steps")
    batch_size: int = opt(64, "minibatch size")
    encoder: Literal["resnet10", "resnet18", "convnet"] = opt("convnet", "the learner's --encoder")
    image_pad: int = opt(4, "DrQ random-shift pixels during pretraining (0 = none)")
    seed: int = opt(0, "random seed")
    device: str = opt("cpu", "torch device (cpu, cuda)")
    torch_threads: int = opt(0, "CPU threads for torch (0 = torch's default)")


def run_encoder(cfg: EncoderConfig) -> int:
    import torch

    from hilrl.learner.encoder_pretrain import pretrain_encoder

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    spec, steps = read_demos(cfg.demos, cfg.demo_map)
    steps = list(steps)
    if not spec.image_features:
        raise SystemExit(f"--demos {cfg.demos}: no camera images in its spec; nothing to pretrain")
    buffer, assembler = ReplayBuffer(spec, max(2, len(steps))), EpisodeAssembler()
    for step in steps:
        for transition in assembler.add("demos", step)[0]:
            buffer.add(transition)
    result = pretrain_encoder(spec, buffer, cfg.output, steps=cfg.steps, batch_size=cfg.batch_size,
                              encoder=cfg.encoder, pad=cfg.image_pad, seed=cfg.seed, device=cfg.device)
    print(json.dumps({"output": str(cfg.output), "transitions": len(buffer), **result}))
    return 0
