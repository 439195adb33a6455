"""`hilrl plot-q` on a real learner checkpoint: the PNG, and Q values equal to a direct critic evaluation."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Proc, free_port, run_hilrl, wait_until
from safetensors.torch import load_file

from hilrl.buffers.recording import read_steps
from hilrl.buffers.spec import state_vector
from hilrl.deploy.plot_q import load_checkpoint, q_figure, q_series, read_recording_episodes, read_store_episodes
from hilrl.learner.networks import Critic

RECORDING = Path(__file__).parent / "data" / "sim-pickcube-8ep.zarr"


@pytest.fixture(scope="module")
def learner_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real learner run seeded with the 8-episode recording; stopped, so its final checkpoint exists."""
    out = tmp_path_factory.mktemp("plotq")
    learner = Proc(["learner", "--port", str(free_port()), "--output-dir", str(out / "run"), "--demos", str(RECORDING),
                    "--demo-episodes", "8", "--offline-steps", "200", "--batch-size", "64", "--hidden", "32,32",
                    "--torch-threads", "1", "--plot-q-every", "100"], out, "learner")
    try:
        wait_until(lambda: (out / "run" / "policy.safetensors").exists(), 120, "offline training and weights v1",
                   interval=0.5, diagnose=lambda: learner.stderr[-2000:])
    finally:
        learner.stop()
    assert list((out / "run" / "checkpoints").glob("step-*/DONE")), learner.stderr[-2000:]
    return out / "run"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", data[16:24])


def test_plot_q_writes_a_png_from_a_real_checkpoint_and_recording(learner_run: Path, tmp_path: Path) -> None:
    png = tmp_path / "q.png"
    r = run_hilrl("plot-q", "--checkpoint", str(learner_run), "--recording", str(RECORDING), "--episodes", "3",
                  "--output", str(png), timeout=120)
    assert r.returncode == 0, r.stderr
    width, height = png_size(png)
    assert width >= 800 and height >= 300 and png.stat().st_size > 20_000
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert [e["episode"] for e in summary["episodes"]] == ["ep 5", "ep 6", "ep 7"]
    assert all(e["success"] for e in summary["episodes"])
    assert [e["interventions"] for e in summary["episodes"]] == [20, 17, 28]  # takeovers, as recorded

    # the same checkpoint on the learner's own store: every seeded step is human data there
    r = run_hilrl("plot-q", "--checkpoint", str(learner_run), "--store", str(learner_run / "store"),
                  "--output", str(tmp_path / "store.png"), timeout=120)
    assert r.returncode == 0, r.stderr
    stored = json.loads(r.stdout.strip().splitlines()[-1])["episodes"]
    assert len(stored) == 8 and all(e["interventions"] == e["steps"] for e in stored)
    assert [e["q_last"] for e in stored[-3:]] == [e["q_last"] for e in summary["episodes"]]


def test_q_series_equals_a_direct_critic_evaluation(learner_run: Path) -> None:
    policy, critic, _ = load_checkpoint(learner_run)
    _, episodes = read_recording_episodes(RECORDING)
    assert len(episodes) == 8
    ours = q_series(policy, critic, episodes[5])

    # direct: the checkpoint's critic weights and policy statistics, the recording's raw steps
    ckpt = sorted((learner_run / "checkpoints").glob("step-*/DONE"))[-1].parent
    p = load_file(ckpt / "policy.safetensors")
    direct = Critic(policy.cfg.state_dim, policy.cfg.action_dim, policy.cfg.hidden)
    direct.load_state_dict(load_file(ckpt / "critic.safetensors"))
    spec, steps = read_steps(RECORDING)
    steps = [s for s in steps if s.episode == 5]
    s = (torch.from_numpy(np.stack([state_vector(x.obs, spec) for x in steps])) - p["obs_mean"]) / p["obs_std"]
    a = torch.from_numpy(np.stack([x.action for x in steps]))
    a = (2 * (a - p["action_low"]) / (p["action_high"] - p["action_low"]) - 1).clamp(-1, 1)
    with torch.no_grad():
        expected = direct.q1_net(torch.cat([s, a], -1)).squeeze(-1).numpy()
    assert len(ours["q_data"]) == len(steps) == 45
    np.testing.assert_allclose(ours["q_data"], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours["q_data"], ours["q_pi"])  # the policy's own action is scored separately
    assert np.ptp(expected) > 1e-3  # a trained critic, not a constant


def test_figure_has_one_panel_per_episode_and_the_store_reader_drops_nothing(learner_run: Path) -> None:
    policy, critic, _ = load_checkpoint(learner_run)
    _, from_store = read_store_episodes(learner_run / "store")
    _, from_recording = read_recording_episodes(RECORDING)
    for a, b in zip(from_store, from_recording, strict=True):
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.actions, b.actions)
    _, tail = read_store_episodes(learner_run / "store", tail_rows=100)  # ep 7 (53 steps) and 6 (42); 5 is cut
    assert [len(e.rewards) for e in tail] == [42, 53]
    fig = q_figure(policy, critic, from_recording[:5])
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_ylabel() == "Q"]
    assert len(visible) == 5
    assert any(ax.patches for ax in visible)  # intervention spans are shaded


def test_plot_q_names_bad_input(learner_run: Path, tmp_path: Path) -> None:
    r = run_hilrl("plot-q", "--checkpoint", str(learner_run), "--output", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "exactly one of --store" in r.stderr
    r = run_hilrl("plot-q", "--checkpoint", str(tmp_path), "--recording", str(RECORDING),
                  "--output", str(tmp_path / "x.png"))
    assert r.returncode != 0 and "no complete checkpoint" in r.stderr


def test_learner_hook_logs_the_figure_to_tensorboard(learner_run: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from hilrl.learner.q_figure import log_q_figure

    policy, critic, step = load_checkpoint(learner_run)
    critic.train()
    writer = SummaryWriter(str(tmp_path / "tb"))
    lock = threading.Lock()
    assert log_q_figure(writer, policy, critic, learner_run / "store", step, episodes=2, lock=lock)
    assert not lock.locked()
    assert not log_q_figure(writer, policy, critic, learner_run / "missing", step + 1)  # skipped, no exception
    writer.close()
    assert critic.training and not policy.training  # the hook leaves the modules' modes as it found them
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    (image,) = events.Images("critic/q_trajectories")
    assert image.step == step and image.width >= 400 and image.height >= 200


def test_the_learner_itself_logs_the_figure_every_n_updates(learner_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(learner_run / "tensorboard")).Reload()
    steps = [image.step for image in events.Images("critic/q_trajectories")]
    assert steps[:2] == [100, 200], steps  # --plot-q-every 100 during the 200 offline updates
