"""Demonstration recordings: exact round trip, format checks, and seeding a real learner from one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import free_port, hilrl_status, run_hilrl, wait_until

from hilrl.buffers.assembler import Step
from hilrl.buffers.recording import RecordingError, StepRecorder, read_steps
from hilrl.buffers.spec import Feature, Spec

SPEC = Spec(observation=(Feature("x", "float32", (2,)), Feature("cam", "uint8", (4, 4, 3))),
            action=Feature("action", "float32", (1,), (-1,), (1,)))


def make_steps(n_episodes: int, length: int) -> list[Step]:
    rng = np.random.default_rng(0)
    out = []
    for ep in range(n_episodes):
        for t in range(length):
            last = t == length - 1
            o = {"x": rng.normal(size=2).astype(np.float32), "cam": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)}
            f = {"x": rng.normal(size=2).astype(np.float32), "cam": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)}
            out.append(Step(o, rng.normal(size=1).astype(np.float32), float(last), last and ep % 2 == 0,
                            last and ep % 2 == 1, bool(t % 2), ep, t, f if last else None))
    return out


def test_round_trip_is_exact_across_chunks(tmp_path: Path) -> None:
    steps = make_steps(3, 7)
    with StepRecorder(tmp_path / "r.zarr", SPEC, chunk_steps=4) as rec:
        for s in steps:
            rec.add(s)
    spec, back = read_steps(tmp_path / "r.zarr")
    back = list(back)
    assert spec == SPEC and len(back) == len(steps)
    for a, b in zip(steps, back, strict=True):
        assert (a.reward, a.terminated, a.truncated, a.is_intervention, a.episode, a.step) == (
            b.reward, b.terminated, b.truncated, b.is_intervention, b.episode, b.step)
        assert a.obs["cam"].tobytes() == b.obs["cam"].tobytes() and b.obs["cam"].dtype == np.uint8
        np.testing.assert_array_equal(a.obs["x"], b.obs["x"])
        np.testing.assert_array_equal(a.action, b.action)
        assert (a.final_obs is None) == (b.final_obs is None)
        if a.final_obs is not None:
            assert a.final_obs["cam"].tobytes() == b.final_obs["cam"].tobytes()


def test_refuses_to_overwrite_and_rejects_foreign_or_newer_files(tmp_path: Path) -> None:
    StepRecorder(tmp_path / "r.zarr", SPEC).close()
    with pytest.raises(FileExistsError):
        StepRecorder(tmp_path / "r.zarr", SPEC)
    zarr.open_group(str(tmp_path / "r.zarr"), mode="a").attrs["version"] = 99
    with pytest.raises(RecordingError, match="version 99 is not supported"):
        read_steps(tmp_path / "r.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(RecordingError, match="not a hilrl step recording"):
        read_steps(tmp_path / "other.zarr")
    with pytest.raises(RecordingError, match="no recording there"):
        read_steps(tmp_path / "missing.zarr")


def test_learner_seeded_from_recorded_demos_trains_without_any_actor(spawn, tmp_path: Path) -> None:
    demos = tmp_path / "demos.zarr"
    r = run_hilrl("record", "--output", str(demos), "--episodes", "3", "--seed", "0", timeout=120)
    assert r.returncode == 0, r.stderr
    recorded = json.loads(r.stdout.strip().splitlines()[-1])
    assert recorded["episodes"] == 3 and recorded["success_rate"] == 1.0
    port = free_port()
    learner = spawn("learner", "--port", str(port), "--output-dir", str(tmp_path / "out"), "--demos", str(demos),
                    "--demo-episodes", "3", "--offline-steps", "30", "--batch-size", "32", "--hidden", "32,32",
                    "--torch-threads", "1", name="learner")
    status = wait_until(lambda: (s := hilrl_status(f"127.0.0.1:{port}")) and s["stage"] == "online" and s,
                        120, "offline training from the seeded demos", diagnose=lambda: learner.stderr[-2000:])
    assert status["buffers"]["human"]["size"] == recorded["steps"]
    assert status["demo_episodes"] == 3 and status["weight_version"] == 1 and status["actors"] == []
    wait_until(lambda: (tmp_path / "out" / "policy.safetensors").exists(), 30, "the v1 policy file")  # file thread


def test_learner_names_a_bad_demos_file(tmp_path: Path) -> None:
    r = run_hilrl("learner", "--port", str(free_port()), "--output-dir", str(tmp_path / "o"),
                  "--demos", str(tmp_path / "nothing.zarr"))
    assert r.returncode != 0 and "--demos" in r.stderr and "no recording there" in r.stderr
