"""The learned success detector on the actor: `SuccessGate` turns its per-frame verdicts into the reward.

On a real arm nobody computes a reward: every autonomous episode's outcome has to be judged. The
detector (`hilrl.learner.success_net.SuccessDetector`, a tiny image classifier) gives, for one camera
frame, the probability that the task is solved in it; the gate ends the episode as a success once
enough frames in a row say so, and the human's success/failure buttons always override it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hilrl.buffers.options import opt
from hilrl.learner.success_net import SuccessDetector


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
