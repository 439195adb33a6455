"""A learned success detector: a tiny image classifier that judges, frame by frame, whether the task is done.

On a real arm nobody computes a reward: every autonomous episode's outcome has to be judged. The
detector looks at one camera frame (uint8 HxWx3, resized to ``image_size``) and gives the probability
that the task is solved in it. On the actor, `SuccessGate` turns those probabilities into the sparse
reward and the episode end; the human's success/failure buttons always override it.

lerobot 0.4.4 ships a reward classifier (``lerobot.policies.sac.reward_model.Classifier``), but it
builds its encoder with ``transformers.AutoModel.from_pretrained("helper2424/resnet10")``: it needs the
``transformers`` package and the Hugging Face hub, neither of which a robot host (or this build) can be
assumed to have. This one is small (about 0.1 M parameters), trains from scratch on a CPU in a minute
and its weights are safetensors with the configuration in the metadata (never pickle).

Training data for the sim: `render_labelled_episodes` drives gym-hil's Panda pick-cube with the
scripted expert, renders the front camera with shadows off, and labels every frame with the
environment's own sparse success criterion (the block lifted more than 0.1 m).
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
from hilrl.buffers.options import opt

log = logging.getLogger(__name__)

FORMAT = "hilrl-success-detector"
KIND_CYCLE = (0, 1, 0, 1, 2)  # rendered episode kinds in turn: lift, drop, lift, drop, fumble


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

    def predict(self, frames: np.ndarray) -> np.ndarray:
        """Success verdicts (probability above the spec's threshold)."""
        return self.probabilities(frames) > self.spec.threshold

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


# ---------------------------------------------------------------------- actor integration


@dataclass
class SuccessDetectorConfig:
    """Actor options of the learned success detector (embed in ActorConfig as ``success``)."""

    detector: Path | None = opt(None, "success detector weights (safetensors, benchmarks/success_detector.py "
                                      "--output); it ends episodes and sets the sparse reward; none = the env's")
    threshold: float | None = opt(None, "P(success) above which a frame counts as success; none = the detector's own")
    consecutive: int = opt(2, "frames in a row judged success before the episode ends as a success")
    camera: str = opt("", "observation key of the camera the detector watches; empty = the one it was trained on")


class SuccessGate:
    """Per-episode judge the control loop calls once per step, right after ``env.step``.

    The episode ends as a success (reward 1, terminated) once `consecutive` frames in a row are judged
    success. Otherwise the reward is 0: with a detector, the environment's reward is not used (a real
    arm has none); when the environment ends the episode itself, the reward is the verdict on that last
    frame alone. A human verdict ("success"/"failure" from the buttons) always wins; a re-record passes
    through untouched, and truncation (the step limit) is the loop's business.
    """

    def __init__(self, detector: SuccessDetector, threshold: float | None = None, consecutive: int = 2,
                 camera: str = "") -> None:
        if consecutive < 1:
            raise ValueError(f"consecutive must be at least 1, got {consecutive}")
        self.detector = detector
        self.threshold = detector.spec.threshold if threshold is None else float(threshold)
        self.consecutive = int(consecutive)
        self.camera = camera or detector.spec.camera
        self.streak = 0
        self.last_probability = 0.0

    @classmethod
    def from_config(cls, cfg: SuccessDetectorConfig) -> SuccessGate | None:
        if cfg.detector is None:
            return None
        return cls(SuccessDetector.load(cfg.detector), cfg.threshold, cfg.consecutive, cfg.camera)

    def check_spec(self, observation_names: tuple[str, ...]) -> None:
        """Refuse, before the first episode, an environment without the detector's camera."""
        if self.camera not in observation_names:
            raise ValueError(f"the success detector watches camera {self.camera!r}, but the observations have "
                             f"{list(observation_names)}; pass --success.camera NAME or enable that camera")

    def reset(self) -> None:
        """Call at every episode start."""
        self.streak = 0
        self.last_probability = 0.0

    def judge(self, next_obs: dict[str, np.ndarray], reward: float, terminated: bool,
              human_end: str | None = None) -> tuple[float, bool]:
        """(reward, terminated) of the step that produced `next_obs`."""
        if human_end in ("success", "failure"):  # the human's buttons always override the detector
            self.streak = 0
            return float(human_end == "success"), True
        if human_end:  # any other verdict, e.g. "rerecord": the loop discards the episode
            return reward, terminated
        self.last_probability = float(self.detector.probabilities(next_obs[self.camera]))
        self.streak = self.streak + 1 if self.last_probability > self.threshold else 0
        if self.streak >= self.consecutive:
            return 1.0, True
        if terminated:  # the env ended the episode itself (e.g. the sim's own success check, block out of bounds):
            return float(self.last_probability > self.threshold), True  # the last frame alone decides
        return 0.0, False


# ---------------------------------------------------------------------- sim data


def render_labelled_episodes(episodes: int, seed: int, image_size: int = 64, camera: str = "front",
                             max_steps: int = 40, after_success: int = 10) -> dict[str, np.ndarray]:
    """Frames of gym-hil's pick-cube with ground-truth success labels (block lifted > 0.1 m: the env's reward).

    Episodes cycle through `KIND_CYCLE`: *lift* (the expert picks the block, then keeps it up for `after_success`
    steps), *drop* (picks it, then opens the gripper: the block falls, so the arm is up without it) or
    *fumble* (a very noisy expert for at most 25 steps, which mostly fails). Frames are rendered after
    every step, shadows off.
    Returns ``images`` uint8 [N, S, S, 3], ``labels`` bool [N], ``episode`` int64 [N], ``kind`` int64 [N]
    (0 lift, 1 drop, 2 fumble) and ``lift`` float32 [N] (block height above its start, m; label = lift > 0.1).
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium as gym
    import mujoco
    from gym_hil.wrappers.hil_wrappers import DEFAULT_EE_STEP_SIZE, EEActionWrapper

    from hilrl.hardware.expert import ScriptedExpert
    from hilrl.hardware.sim import ENV_ID

    if image_size > 128:
        raise ValueError(f"image_size {image_size}: gym-hil's offscreen buffer is 128x128")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = gym.make(ENV_ID, random_block_position=True, image_obs=False, disable_env_checker=True)
        env = EEActionWrapper(base, ee_action_step_size=DEFAULT_EE_STEP_SIZE, use_gripper=True)
    sim = env.unwrapped
    renderer = mujoco.Renderer(sim.model, image_size, image_size)
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    labels: list[bool] = []
    episode_ids: list[int] = []
    kinds: list[int] = []
    lifts: list[float] = []
    state = np.random.get_state()
    try:
        for ep in range(episodes):
            kind = KIND_CYCLE[ep % len(KIND_CYCLE)]
            expert = ScriptedExpert(noise=1.0 if kind == 2 else 0.1, seed=int(rng.integers(2**31 - 1)))
            np.random.seed(int(rng.integers(2**31 - 1)))  # gym-hil samples the block position from np.random
            obs, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
            z_init = float(sim.data.sensor("block_pos").data[2])
            succeeded_at = None
            for t in range(max_steps if kind != 2 else min(max_steps, 25)):
                o = {k: np.asarray(obs[k], np.float32) for k in ("agent_pos", "environment_state")}
                action = expert.act(o)
                if kind == 1 and succeeded_at is not None:
                    action = np.array([0.0, 0.0, 0.0, 0.0], np.float32)  # open: drop the block
                obs, reward, terminated, _, _ = env.step(action)
                renderer.update_scene(sim.data, camera=camera)
                renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                images.append(renderer.render().copy())
                labels.append(bool(reward > 0))
                lifts.append(float(sim.data.sensor("block_pos").data[2] - z_init))
                episode_ids.append(ep)
                kinds.append(kind)
                if reward > 0 and succeeded_at is None:
                    succeeded_at = t
                if succeeded_at is not None and t - succeeded_at >= after_success + (4 if kind == 1 else 0):
                    break
                if terminated and reward <= 0:  # block out of bounds
                    break
    finally:
        np.random.set_state(state)
        renderer.close()
        env.close()
    return {"images": np.stack(images), "labels": np.asarray(labels), "episode": np.asarray(episode_ids, np.int64),
            "kind": np.asarray(kinds, np.int64), "lift": np.asarray(lifts, np.float32)}
