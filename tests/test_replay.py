"""Recorded sim transitions replayed through the real actor -> gRPC -> learner path (runs in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import free_port, hilrl_status, wait_until

from hilrl.buffers.recording import read_steps
from hilrl.buffers.store import BufferStore

RECORDING = Path(__file__).parent / "data" / "sim-pickcube-8ep.zarr"


def test_replayed_recording_lands_in_the_learner_exactly(spawn, tmp_path: Path) -> None:
    spec, recorded = read_steps(RECORDING)
    recorded = list(recorded)
    human = sum(s.is_intervention for s in recorded)
    assert 0 < human < len(recorded)  # the recording holds demonstrations, takeovers and autonomous steps

    port, out = free_port(), tmp_path / "learner"
    learner = spawn("learner", "--port", str(port), "--output-dir", str(out), "--demo-episodes", "1000",
                    "--torch-threads", "1", name="learner")
    actor = spawn("actor", "--learner", f"127.0.0.1:{port}", "--env", f"replay:{RECORDING}", "--fps", "0",
                  "--state-dir", str(tmp_path / "actor"), name="actor")
    assert actor.wait(180) == 0, actor.stderr[-3000:]
    summary = json.loads(actor.stdout.strip().splitlines()[-1])
    assert summary["steps"] == len(recorded) and summary["unacked"] == 0
    assert summary["interventions"] == human

    # acknowledged = in the learner's ingest log; the writer stores them and fills the buffers right after
    status = wait_until(lambda: (s := hilrl_status(f"127.0.0.1:{port}")) and s["ingest_backlog_batches"] == 0 and s,
                        30, "status with an empty ingest backlog", diagnose=lambda: learner.stderr)
    assert status["buffers"]["human"]["size"] == human
    assert status["buffers"]["policy"]["size"] == len(recorded) - human
    assert status["actors"][0]["transitions_received"] == len(recorded)
    assert learner.stop() == 0

    stored = [step for _, step in BufferStore(out / "store", spec).replay()]
    assert len(stored) == len(recorded)
    episode_map: dict[int, int] = {}
    for got, want in zip(stored, recorded, strict=True):
        assert episode_map.setdefault(want.episode, got.episode) == got.episode  # renumbered, never merged
        assert (got.step, got.reward, got.terminated, got.truncated, got.is_intervention) == (
            want.step, want.reward, want.terminated, want.truncated, want.is_intervention)
        np.testing.assert_array_equal(got.action, want.action)
        for name in spec.observation_names:
            assert got.obs[name].tobytes() == want.obs[name].tobytes()
        assert (got.final_obs is None) == (want.final_obs is None)
        if want.final_obs is not None:
            for name in spec.observation_names:
                assert got.final_obs[name].tobytes() == want.final_obs[name].tobytes()
