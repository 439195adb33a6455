"""The learner takes other people's data well (issue 16, item 5).

`SwoopExpert` (hardware/swoop_expert.py) is a second pick-cube expert that works differently from
`ScriptedExpert` (swooping approach, incremental gripper, correlated noise); `record_lerobot` writes its
episodes with lerobot's own `LeRobotDataset` writer. The CI check records such a dataset and trains the
real `hilrl learner --demos DATASET` with its defaults; the full check (two 20-episode datasets, 50
evaluation episodes, the default offline stage) is benchmarks/other_expert.py, results in
docs/other-expert.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, hilrl_status, run_hilrl, wait_until

from hilrl.hardware.expert import ScriptedExpert
from hilrl.hardware.sim import SimPickCube
from hilrl.hardware.swoop_expert import LEARNER_MAP, SwoopExpert, record_lerobot


def _noise_lag1(expert, obs: dict, clean: np.ndarray, n: int = 400) -> float:
    """Lag-1 autocorrelation of the expert's xyz noise, read off repeated actions on one observation."""
    noise = np.array([expert.act(obs)[:3] - clean for _ in range(n)])
    return float(np.mean([np.corrcoef(noise[:-1, i], noise[1:, i])[0, 1] for i in range(3)]))


def test_the_second_expert_succeeds_and_its_noise_is_correlated_unlike_the_first() -> None:
    with SimPickCube(seed=7) as env:
        wins = 0
        for _ in range(5):
            obs, done, expert = env.reset(), False, SwoopExpert(noise=0.2, seed=1)
            while not done:
                obs, _, terminated, truncated, info = env.step(expert.act(obs))
                done = terminated or truncated
            wins += int(info["success"])
        obs = env.reset()
    assert wins >= 4  # measured: 49/50 at noise 0.2 (benchmarks/other_expert.py)
    # far from the block, so the command is not clipped and the noise is what differs between calls
    far = {"agent_pos": obs["agent_pos"].copy(), "environment_state": obs["environment_state"].copy()}
    swoop = _noise_lag1(SwoopExpert(noise=0.2, seed=3), far, SwoopExpert().act(far)[:3])
    white = _noise_lag1(ScriptedExpert(noise=0.2, seed=3), far, ScriptedExpert().act(far)[:3])
    assert swoop > 0.7 and abs(white) < 0.2, (swoop, white)


EPISODES = 20  # dataset A of the full check (noise 0.2, seed 1), recorded again: the same episodes
EVAL_EPISODES = 20  # the first 20 of the full check's 50 evaluation positions
THRESHOLD = 0.55  # 11 of 20


@pytest.mark.e2e
def test_default_learner_learns_from_a_lerobot_dataset_of_the_second_expert(spawn, tmp_path: Path) -> None:
    """A 20-episode LeRobotDataset of the second expert, the real `hilrl learner --demos` with the default
    algorithm settings (the whole default offline stage, 1 torch thread as in the full check), then
    `hilrl eval` on 20 episodes: the offline policy must win at least 11 (55 %).

    How the threshold was chosen: the full check (benchmarks/other_expert.py, docs/other-expert.json) measured
    76 % (38 / 50) for this configuration with the defaults of commit 9e9bf10 (alpha 0.5, 5000 updates). With a
    true success of 76 %, 20 episodes give <= 10 wins with probability 1.0 % (binomial), so 11 / 20 fails a
    healthy learner about once in a hundred runs, while main's earlier defaults (alpha 2.5: 12 %, ~2 / 20) fail
    by far. It guards the level reached, not the issue's goal (>= 85 % on 50 episodes), which the defaults do
    not reach yet on this data; raise THRESHOLD when they do. Fewer offline updates are not a cheaper proxy:
    3000 updates (alpha 0.5) gave 8 % on the same data, so the test runs the whole default offline stage.
    Cost: ~105 s of CPU (measured: 114 s user+sys for this file, one core busy at a time), i.e. about 2 min on
    an idle 2-core machine, over the issue's ~1.5 min target; 7 min wall here under a load of ~10.
    """
    dataset = tmp_path / "swoop"
    recorded = record_lerobot(dataset, episodes=EPISODES, noise=0.2, seed=1)
    assert recorded["episodes"] == EPISODES and recorded["successes"] >= EPISODES - 2
    port = free_port()
    learner = spawn("learner", "--port", str(port), "--output-dir", str(tmp_path / "out"), "--demos", str(dataset),
                    *LEARNER_MAP, "--torch-threads", "1", name="learner")
    wait_until(lambda: (s := hilrl_status(f"127.0.0.1:{port}")) and s["stage"] == "online", 300,
               "the offline stage on the LeRobotDataset", diagnose=lambda: learner.stderr[-2000:])
    learner.stop()
    r = run_hilrl("eval", "--checkpoint", str(tmp_path / "out"), "--episodes", str(EVAL_EPISODES), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    success = json.loads(r.stdout.strip().splitlines()[-1])["success_rate"]
    assert success >= THRESHOLD, f"offline policy success {success:.2f} < {THRESHOLD} on the second expert's data"
