"""The learner's real training loop builds every online minibatch 50/50, also at an update-to-data ratio > 1.

The Trainer runs in its own thread exactly as in `hilrl learner` (stages, sampling, updates, publishing);
steps arrive through `LearnerCore.ingest`, the path the gRPC service uses. `TD3.update` is wrapped to
count the rows of each minibatch marked human; the update itself still runs.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ingest, wait_until

from hilrl.buffers.assembler import Step
from hilrl.buffers.spec import Feature, Spec
from hilrl.learner import td3 as td3_module
from hilrl.learner.config import LearnerConfig
from hilrl.learner.core import ONLINE, WAITING, LearnerCore
from hilrl.learner.training import Trainer

SPEC = Spec(observation=(Feature("agent_pos", "float32", (5,)), Feature("environment_state", "float32", (3,))),
            action=Feature("action", "float32", (2,), (-1.0, 0.0), (1.0, 2.0)))
BATCH = 32


class Feeder:
    """Episodes of synthetic steps, sent the way an actor's batches arrive (one seq per episode)."""

    def __init__(self, core: LearnerCore) -> None:
        self.core, self.seq, self.episode = core, 0, 0
        self.rng = np.random.default_rng(0)

    def obs(self) -> dict[str, np.ndarray]:
        return {"agent_pos": self.rng.normal(size=5).astype(np.float32),
                "environment_state": self.rng.normal(size=3).astype(np.float32)}

    def episode_of(self, human: list[bool]) -> None:
        """One episode, step t executed by the human iff human[t]; truncated after the last step."""
        steps, n = [], len(human)
        for t, is_human in enumerate(human):
            last = t == n - 1
            steps.append(Step(self.obs(), np.array([0.1 * t % 1, 1.0], np.float32), float(last and is_human),
                              False, last, is_human, self.episode, t, self.obs() if last else None))
        self.seq += 1
        self.episode += 1
        assert ingest(self.core, "actor-0", [(self.seq, steps)], 0)[0] is False


@pytest.fixture
def learner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Start a learner core + Trainer thread; yields (core, feeder, human rows of each online minibatch)."""
    shares: list[tuple[int, int]] = []  # (human rows, batch rows) of every update in the online stage
    original = td3_module.TD3.update
    holder: dict[str, LearnerCore] = {}

    def counting_update(self, batch, *args, **kwargs):
        if holder["core"].stage == ONLINE:
            human = batch["human"].detach().cpu().numpy()
            assert set(np.unique(human).tolist()) <= {0.0, 1.0}
            shares.append((int(human.sum()), len(human)))
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(td3_module.TD3, "update", counting_update)
    started: list[tuple[threading.Thread, threading.Event]] = []

    def start(demo_episodes: int, utd_ratio: float) -> tuple[LearnerCore, Feeder]:
        cfg = LearnerConfig(output_dir=tmp_path / "learner", device="cpu", torch_threads=1, seed=0,
                            demo_episodes=demo_episodes, offline_steps=0, utd_ratio=utd_ratio, batch_size=BATCH,
                            hidden=(16, 16), publish_every=1000, checkpoint_every=100_000, log_every=1000)
        core = LearnerCore(cfg)
        core.open()
        core.hello("actor-0", SPEC)
        holder["core"] = core
        stop = threading.Event()
        thread = threading.Thread(target=Trainer(core).run, args=(stop,), daemon=True)
        thread.start()
        started.append((thread, stop))
        return core, Feeder(core)

    yield start, shares
    for thread, stop in started:
        stop.set()
        thread.join(30)


def settle(core: LearnerCore, shares: list, expected: int) -> None:
    """Wait until `expected` online updates were made, then check that no more follow."""
    wait_until(lambda: len(shares) >= expected, 60, f"{expected} online updates", interval=0.05,
               diagnose=lambda: f"{len(shares)} done, status {core.status()}")
    time.sleep(0.5)
    assert len(shares) == expected, "the trainer made more updates than utd_ratio x received transitions"


@pytest.mark.parametrize("utd_ratio", [1, 3])
def test_every_online_minibatch_is_half_human_half_policy_at_any_utd(learner, utd_ratio: int) -> None:
    start, shares = learner
    core, feed = start(demo_episodes=1, utd_ratio=utd_ratio)
    feed.episode_of([True] * 6)  # a demonstration: offline stage (0 steps), weights v1, online
    wait_until(lambda: core.stage == ONLINE, 60, "the online stage", interval=0.05)
    feed.episode_of([False] * 5 + [True] * 5)  # a policy episode with a takeover
    feed.episode_of([False] * 7)  # an autonomous episode
    settle(core, shares, utd_ratio * 17)
    assert core.status()["buffers"]["human"]["size"] == 11 and core.status()["buffers"]["policy"]["size"] == 12
    assert set(shares) == {(BATCH // 2, BATCH)}, "a minibatch was not exactly 50/50"


def test_with_one_side_empty_the_other_fills_the_whole_minibatch(learner, caplog) -> None:
    caplog.set_level("INFO", logger="hilrl.learner.training")
    start, shares = learner
    core, feed = start(demo_episodes=1, utd_ratio=2)
    feed.episode_of([True] * 6)
    wait_until(lambda: core.stage == ONLINE, 60, "the online stage", interval=0.05)
    feed.episode_of([True] * 4)  # human data only: the policy buffer is still empty
    settle(core, shares, 2 * 4)
    assert set(shares) == {(BATCH, BATCH)}, "with no policy data every row must come from the human buffer"
    feed.episode_of([False] * 3)  # the first autonomous steps: from now on exactly half and half
    settle(core, shares, 2 * 7)
    assert set(shares[8:]) == {(BATCH // 2, BATCH)}
    said = [r.getMessage() for r in caplog.records if "buffer" in r.getMessage() and "minibatches" in r.getMessage()]
    assert said == ["the policy buffer is empty: minibatches come wholly from the human buffer until it has data",
                    "both buffers hold data: minibatches are 50% human / 50% policy again"], said


def test_without_demos_online_minibatches_are_all_policy_until_a_takeover(learner) -> None:
    start, shares = learner
    core, feed = start(demo_episodes=0, utd_ratio=2)
    feed.episode_of([False] * 5)  # no demos needed: the first data starts training
    wait_until(lambda: core.stage == ONLINE, 60, "the online stage", interval=0.05)
    feed.episode_of([False] * 4)
    settle(core, shares, 2 * 4)
    assert set(shares) == {(0, BATCH)}, "with an empty human buffer every row must come from the policy one"
    feed.episode_of([False] * 2 + [True] * 3)
    settle(core, shares, 2 * 9)
    assert set(shares[8:]) == {(BATCH // 2, BATCH)}


def test_without_demos_the_learner_starts_after_the_first_complete_episode(learner) -> None:
    """--demo-episodes 0 (a joint-space residual session): normalisation from a whole episode, not a first batch."""
    start, _ = learner
    core, feed = start(demo_episodes=0, utd_ratio=1)
    partial = [Step(feed.obs(), np.zeros(2, np.float32), 0.0, False, False, False, 0, t) for t in range(6)]
    assert ingest(core, "actor-0", [(1, partial)])[0] is False  # an episode still going
    time.sleep(5.0)  # the trainer is built and polling by then (a regression starts it here)
    assert core.stage == WAITING and len(core.buffers.policy) > 0
    feed.seq, feed.episode = 1, 1
    feed.episode_of([False] * 4)  # the first complete episode
    wait_until(lambda: core.stage == ONLINE, 60, "the online stage", interval=0.05)


def test_wandb_offline_run_mirrors_the_tensorboard_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--wandb-project with --wandb-mode offline: a real W&B run under the output dir (no network here)."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = LearnerConfig(output_dir=tmp_path / "learner", device="cpu", torch_threads=1, seed=0, demo_episodes=1,
                        offline_steps=20, batch_size=BATCH, hidden=(16, 16), log_every=5, publish_every=1000,
                        checkpoint_every=100_000, wandb_project="hilrl-test", wandb_mode="offline")
    core = LearnerCore(cfg)
    core.open()
    core.hello("actor-0", SPEC)
    stop = threading.Event()
    thread = threading.Thread(target=Trainer(core).run, args=(stop,), daemon=True)
    thread.start()
    try:
        Feeder(core).episode_of([True] * 6)
        wait_until(lambda: core.stage == ONLINE, 120, "the end of the offline stage", interval=0.05)
    finally:
        stop.set()
        thread.join(180)  # W&B's service finishing the run: seconds, more on a loaded machine
    assert not thread.is_alive(), "the trainer did not finish (W&B run still closing?)"
    runs = list((tmp_path / "learner" / "wandb").glob(f"offline-run-*-hilrl-{core.run_id}"))
    assert len(runs) == 1, list((tmp_path / "learner" / "wandb").iterdir())
    (log_file,) = runs[0].glob("*.wandb")
    assert log_file.stat().st_size > 0
    assert b"train/critic_loss" in log_file.read_bytes()  # a TensorBoard scalar, also sent to the W&B run
