"""The learned success detector: trained on rendered sim frames with ground-truth labels, saved as safetensors,
and the actor-side gate that turns its verdicts into the sparse reward (the human's buttons always win)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hilrl.actor.success import SuccessDetectorConfig, SuccessGate
from hilrl.hardware.success_frames import render_labelled_episodes
from hilrl.learner.success_net import DetectorSpec, SuccessDetector, SuccessNet, precision_recall, train_detector


@pytest.fixture(scope="module")
def sim_frames() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Rendered pick-cube frames: 10 training episodes and 4 held-out ones (other seeds)."""
    torch.set_num_threads(1)
    return render_labelled_episodes(10, seed=1), render_labelled_episodes(4, seed=2)


@pytest.fixture(scope="module")
def trained(sim_frames) -> SuccessDetector:
    train, _ = sim_frames
    return train_detector(train["images"], train["labels"], seed=0)


def test_frames_are_real_renders_with_ground_truth_labels(sim_frames) -> None:
    train, test = sim_frames
    for d in (train, test):
        assert d["images"].dtype == np.uint8 and d["images"].shape[1:] == (64, 64, 3)
        assert len(d["images"]) == len(d["labels"]) == len(d["episode"])
        assert 0 < d["labels"].sum() < len(d["labels"])  # both classes
        assert d["images"].std() > 10  # a rendered scene, not a blank frame
    # a lift episode: the label switches on once the block is up, after some frames without it
    lift = next(e for e in np.unique(train["episode"]) if train["kind"][train["episode"] == e][0] == 0)
    labels = train["labels"][train["episode"] == lift]
    assert not labels[0] and labels[-1]
    lift_m = train["lift"][train["episode"] == lift]
    np.testing.assert_array_equal(labels, lift_m > 0.1)  # the env's own sparse success criterion
    frames = train["images"][train["episode"] == lift]
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 1  # the arm moved in the picture


def test_detector_judges_held_out_episodes(sim_frames, trained: SuccessDetector) -> None:
    _, test = sim_frames
    prob = trained.probabilities(test["images"])
    assert prob.shape == (len(test["labels"]),) and np.all((prob >= 0) & (prob <= 1))
    y = test["labels"]
    auc = (prob[y][:, None] > prob[~y][None, :]).mean()  # P(a success frame scores above a non-success one)
    assert auc >= 0.85, auc  # 0.5 for a detector that has learnt nothing
    assert np.mean(prob[y]) > np.mean(prob[~y]) + 0.3
    m = precision_recall(prob > 0.5, y)
    assert m["recall"] >= 0.5 and m["tp"] + m["fp"] < len(y) / 2, m  # finds successes, does not say yes to all


def test_save_load_round_trip_and_bad_files(trained: SuccessDetector, sim_frames, tmp_path: Path) -> None:
    _, test = sim_frames
    trained.save(tmp_path / "det.safetensors")
    back = SuccessDetector.load(tmp_path / "det.safetensors")
    assert back.spec == trained.spec
    np.testing.assert_array_equal(back.probabilities(test["images"][:20]), trained.probabilities(test["images"][:20]))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a hilrl success detector"):
        SuccessDetector.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="benchmarks/success_detector.py"):
        SuccessDetector.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="both classes"):
        train_detector(test["images"][:4], np.zeros(4, bool), epochs=1)


def constant_detector(p: float) -> SuccessDetector:
    """A real SuccessNet whose weights are zero and whose output bias gives P(success) = p for any frame."""
    net = SuccessNet(DetectorSpec(camera="front"))
    with torch.no_grad():
        for param in net.parameters():
            param.zero_()
        net.head[-1].bias.fill_(math.log(p / (1 - p)))
    return SuccessDetector(net)


def set_probability(det: SuccessDetector, p: float) -> None:
    with torch.no_grad():
        det.net.head[-1].bias.fill_(math.log(p / (1 - p)))


def test_gate_needs_consecutive_frames_and_sets_the_sparse_reward() -> None:
    det = constant_detector(0.9)
    gate = SuccessGate(det, consecutive=2)
    obs = {"front": np.zeros((128, 128, 3), np.uint8)}
    gate.check_spec(("agent_pos", "front"))
    with pytest.raises(ValueError, match="--success.camera"):
        gate.check_spec(("agent_pos", "wrist"))
    gate.reset()
    assert gate.judge(obs, reward=0.0, terminated=False) == (0.0, False)  # one frame is not enough
    assert gate.last_probability == pytest.approx(0.9, abs=1e-6)
    assert gate.judge(obs, reward=0.0, terminated=False) == (1.0, True)  # the second in a row ends it: success
    gate.reset()
    set_probability(det, 0.2)
    assert gate.judge(obs, reward=1.0, terminated=False) == (0.0, False)  # the env's reward is not used
    set_probability(det, 0.9)
    assert gate.judge(obs, reward=0.0, terminated=False) == (0.0, False)
    set_probability(det, 0.2)
    assert gate.judge(obs, reward=0.0, terminated=False) == (0.0, False)  # the streak broke
    assert gate.judge(obs, reward=0.0, terminated=True) == (0.0, True)  # env terminal (out of bounds): a failure
    gate.reset()
    set_probability(det, 0.9)
    assert gate.judge(obs, reward=0.0, terminated=True) == (1.0, True)  # an env terminal: the last frame decides


def test_human_buttons_always_override_the_detector() -> None:
    obs = {"front": np.zeros((64, 64, 3), np.uint8)}
    sure = SuccessGate(constant_detector(0.99), consecutive=1)
    assert sure.judge(obs, 0.0, False, human_end="failure") == (0.0, True)  # detector says success, human: no
    never = SuccessGate(constant_detector(0.01), consecutive=1)
    assert never.judge(obs, 0.0, False, human_end="success") == (1.0, True)  # detector says no, human: success
    assert never.judge(obs, 0.0, False, human_end="rerecord") == (0.0, False)  # re-record passes through
    assert sure.judge(obs, 0.0, False) == (1.0, True)


def test_gate_from_config(trained: SuccessDetector, tmp_path: Path) -> None:
    assert SuccessGate.from_config(SuccessDetectorConfig()) is None  # no detector: the env's reward as before
    trained.save(tmp_path / "d.safetensors")
    gate = SuccessGate.from_config(SuccessDetectorConfig(detector=tmp_path / "d.safetensors", threshold=0.8,
                                                         consecutive=3))
    assert gate is not None and gate.threshold == 0.8 and gate.consecutive == 3 and gate.camera == "front"


def test_gate_on_rendered_episodes(sim_frames, trained: SuccessDetector) -> None:
    """The gate over held-out episodes as the actor would call it: no success declared before the block is up."""
    _, test = sim_frames
    gate = SuccessGate(trained, consecutive=2)
    fired = 0
    for ep in np.unique(test["episode"]):
        rows = np.flatnonzero(test["episode"] == ep)
        gate.reset()
        for t, row in enumerate(rows):
            reward, terminated = gate.judge({"front": test["images"][row]}, 0.0, False)
            if terminated:
                assert reward == 1.0
                assert test["labels"][rows[: t + 1]].any(), f"episode {ep}: success declared before the lift"
                fired += 1
                break
    assert fired >= 1
