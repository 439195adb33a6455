"""The learned success detector: a tiny image classifier that judges, frame by frame, whether the task is done.

On a real arm nobody computes a reward: every autonomous episode's outcome has to be judged. The
detector looks at one camera frame (uint8 HxWx3, resized to ``image_size``) and gives the probability
that the task is solved in it. The actor's `SuccessGate` (actor/success.py) turns those probabilities
into the sparse reward and the episode end; the learner itself never runs it. This module holds the
network, its file format and its training (`train_detector`, used by benchmarks/success_detector.py);
`hilrl.hardware.success_frames` renders labelled sim frames to train it on.

lerobot 0.4.4 ships a reward classifier (``lerobot.policies.sac.reward_model.Classifier``), but it
builds its encoder with ``transformers.AutoModel.from_pretrained("helper2424/resnet10")``: it needs the
``transformers`` package and the Hugging Face hub, neither of which a robot host (or this build) can be
assumed to have. This one is small (about 0.1 M parameters), trains from scratch on a CPU in a minute
and its weights are safetensors with the configuration in the metadata (never pickle).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from hilrl.buffers.durable import atomic_path

log = logging.getLogger(__name__)

FORMAT = "hilrl-success-detector"


# ---------------------------------------------------------------------- model


@dataclass(frozen=True)
class DetectorSpec:
    """Shape of the classifier; saved in the weights' metadata."""

    camera: str = "front"  # observation key of the camera it watches
    image_size: int = 64  # frames are resized (area) to image_size x image_size
    channels: tuple[int, ...] = (16, 32, 64)  # conv widths; each conv halves the resolution
    hidden: int = 64
    threshold: float = 0.5  # probability above which a frame counts as success


class SuccessNet(nn.Module):
    """uint8 frames [B, H, W, 3] -> success logits [B]: strided convs, 4x4 average pool, one hidden layer."""

    def __init__(self, spec: DetectorSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        in_ch = 3
        for i, ch in enumerate(spec.channels):
            k = 5 if i == 0 else 3
            layers += [nn.Conv2d(in_ch, ch, k, stride=2, padding=k // 2), nn.ReLU()]
            in_ch = ch
        self.convs = nn.Sequential(*layers)
        # a coarse 4x4 grid keeps *where* things are (the cue is the block's height) with few weights;
        # flattening the full 8x8 map instead overfitted to arm poses (more false successes, measured)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(in_ch * 16, spec.hidden),
                                  nn.ReLU(), nn.Linear(spec.hidden, 1))

    def preprocess(self, frames: Tensor) -> Tensor:
        """uint8 [B, H, W, 3] -> float [B, 3, S, S] in [-0.5, 0.5]."""
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [B, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        x = frames.permute(0, 3, 1, 2).float() / 255.0 - 0.5
        size = self.spec.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="area")
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Preprocessed frames [B, 3, S, S] -> logits [B]."""
        return self.head(self.convs(x)).squeeze(-1)


class SuccessDetector:
    """The trained classifier plus its spec: `probabilities(frames)`, `save`, `load`."""

    def __init__(self, net: SuccessNet) -> None:
        self.net = net.eval().requires_grad_(False)
        self.spec = net.spec

    @torch.no_grad()
    def probabilities(self, frames: np.ndarray, batch: int = 256) -> np.ndarray:
        """P(success) of each frame: uint8 [N, H, W, 3] (or one frame [H, W, 3]) -> float32 [N] (or a float)."""
        frames = np.asarray(frames)
        single = frames.ndim == 3
        x = torch.from_numpy(np.ascontiguousarray(frames[None] if single else frames))
        out = torch.cat([torch.sigmoid(self.net(self.net.preprocess(x[i:i + batch])))
                         for i in range(0, len(x), batch)]) if len(x) else torch.zeros(0)
        p = out.numpy().astype(np.float32)
        return p[0] if single else p

    def save(self, path: str | os.PathLike[str]) -> None:
        meta = {"format": FORMAT, "spec": json.dumps(asdict(self.spec))}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_path(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SuccessDetector:
        """Weights written by `save` (a local safetensors file; the spec comes from its metadata)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no success detector at {path}: train one with benchmarks/success_detector.py "
                                    "--output PATH")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a hilrl success detector (metadata format {meta.get('format')!r})")
        d = json.loads(meta["spec"])
        spec = DetectorSpec(**{**d, "channels": tuple(d["channels"])})
        net = SuccessNet(spec)
        net.load_state_dict(load_file(str(path)), strict=True)
        return cls(net)


# ---------------------------------------------------------------------- training


def random_shift(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """DrQ augmentation: replicate-pad by `pad` pixels, crop back at a random offset per image."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train_detector(frames: np.ndarray, labels: np.ndarray, spec: DetectorSpec | None = None, epochs: int = 30,
                   batch_size: int = 64, lr: float = 3e-3, pad: int = 0, seed: int = 0,
                   balance: float = 0.0) -> SuccessDetector:
    """Train from uint8 frames [N, H, W, 3] and boolean success labels [N] (BCE, Adam, DrQ random shift).

    ``pad`` > 0 adds DrQ's random shift (it cost precision here: the cue is the block's height in the frame).
    ``balance`` weighs the positives by (negatives/positives) ** balance: 0 = plain BCE, 1 = balanced classes
    (more recall, less precision).
    """
    spec = spec or DetectorSpec()
    labels = np.asarray(labels, dtype=bool)
    if len(frames) != len(labels) or len(frames) == 0:
        raise ValueError(f"need as many labels as frames, at least one: {len(frames)} frames, {len(labels)} labels")
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        raise ValueError(f"the training frames need both classes: {positives} success of {len(labels)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SuccessNet(spec)
    gen = torch.Generator().manual_seed(seed)
    x_all = net.preprocess(torch.from_numpy(np.ascontiguousarray(frames)))  # resized once
    y_all = torch.from_numpy(labels.astype(np.float32))
    pos_weight = torch.tensor(((len(labels) - positives) / positives) ** balance)
    opt_ = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            logits = net(random_shift(x_all[idx], pad, gen))
            loss = F.binary_cross_entropy_with_logits(logits, y_all[idx], pos_weight=pos_weight)
            opt_.zero_grad(set_to_none=True)
            loss.backward()
            opt_.step()
            total += float(loss.detach()) * len(idx)
        log.info("success detector epoch %d/%d: loss %.4f", epoch + 1, epochs, total / len(order))
    return SuccessDetector(net)


def precision_recall(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 and accuracy of boolean verdicts against ground truth (counts included)."""
    p, y = np.asarray(predicted, bool), np.asarray(labels, bool)
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": float((p == y).mean()) if len(y) else 0.0,
            "tp": tp, "fp": fp, "fn": fn, "tn": int((~p & ~y).sum())}
