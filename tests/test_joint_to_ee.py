"""Joint-space demonstrations -> end-effector deltas, with real placo kinematics through lerobot's RobotKinematics.

tests/data/so101_like.urdf stands in for the SO-101 URDF (not available offline): lerobot's motor names,
SO-101-like link lengths, a ``gripper_frame_link`` frame. The round trip runs the converted actions through
the SO arm's real lerobot processor steps (over a fake follower) and checks they command the leader's pose.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, hilrl_status, wait_until
from fakes import FakeFollower

from hilrl.buffers.joint_to_ee import (
    EEReport,
    KinematicsError,
    ee_positions,
    gripper_commands,
    joint_to_ee,
    load_kinematics,
)
from hilrl.buffers.lerobot_io import LeRobotImportError, LeRobotMapping, read_demos
from hilrl.buffers.recording import read_steps
from hilrl.hardware.cameras import CameraSpec
from hilrl.hardware.so_arm import ArmConfig, SOArm, spec_from_features

os.environ["HF_HUB_OFFLINE"] = "1"
URDF = Path(__file__).parent / "data" / "so101_like.urdf"
MOTORS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
PURPOSE, ALTERNATIVE = "test import", "train a joint-mode actor"


@pytest.fixture(scope="module")
def kin():
    return load_kinematics(URDF, "gripper_frame_link", MOTORS, PURPOSE, ALTERNATIVE)


def leader_trajectory(n: int = 30) -> np.ndarray:
    """(n + 1, 6) joint positions: the arm sweeps and turns its wrist while the gripper closes, holds, opens."""
    s = np.linspace(0.0, 1.0, n + 1)[:, None]
    start, end = np.array([0.0, -50, 70, 50, 0, 0]), np.array([25.0, -45, 50, 60, 20, 0])
    traj = start + (end - start) * s
    traj[:, 5] = np.interp(s[:, 0], [0, 0.2, 0.5, 0.7, 1], [60, 60, 10, 10, 80])
    return traj


# ------------------------------------------------------------------------------------ (1) lerobot round trip
def test_converted_actions_drive_lerobots_ee_pipeline_to_the_leader_pose(kin, monkeypatch) -> None:
    traj = leader_trajectory()
    q, a = traj[:-1].copy(), traj[1:]  # measured joints, the leader's joint targets (one step ahead)
    q[:, :5] += np.random.default_rng(1).normal(0.0, 0.5, (len(q), 5))  # the follower lags and jitters
    conv = joint_to_ee(q, a, kin, ee_step_m=0.01)
    assert not conv.clipped.any() and 0.2 < np.abs(conv.raw).max() < 1.0  # real motion, never clipped
    assert set(conv.actions[:, 3].tolist()) == {0.0, 1.0, 2.0}  # opening, holding and closing all occur

    monkeypatch.setattr("hilrl.hardware.so_arm.port_exists", lambda port: True)
    robot = FakeFollower()
    cfg = ArmConfig(port="/dev/ttyACM0", action_mode="ee", ee_step_m=0.01)
    errors_mm = []
    with SOArm(cfg, robot=robot, kinematics=kin) as arm:  # the actor's own lerobot processor steps
        arm.reset()
        for q_t, a_t, action in zip(q, a, conv.actions, strict=True):
            robot.q = {k: float(v) for k, v in zip(robot.observation_features, q_t, strict=True)}
            arm.observe()  # the arm measures q_t (the leader moved the follower there)
            arm.step(action)
            sent = np.array([robot.sent[-1][k] for k in arm.joint_keys])
            errors_mm.append(1000 * np.linalg.norm(ee_positions(kin, sent)[0] - ee_positions(kin, a_t)[0]))
            gripper = sent[5]  # lerobot's discrete gripper: full close, full open, or stay
            expected = {2.0: 0.0, 0.0: 100.0, 1.0: q_t[5]}[float(action[3])]
            assert gripper == pytest.approx(expected)
            assert np.sign(gripper - q_t[5]) == np.sign(np.round(a_t[5] - q_t[5], 6))  # same direction as leader
    assert max(errors_mm) < 1.0, errors_mm  # IK reaches the leader's end-effector position to well under a mm


# ------------------------------------------------------------------------------------ (2) gripper rule
def test_gripper_closes_opens_and_holds_inside_the_dead_band() -> None:
    measured = np.full(8, 50.0)
    target = np.array([40.0, 60.0, 51.0, 49.0, 52.01, 47.99, 50.0, 0.0])
    np.testing.assert_array_equal(gripper_commands(measured, target, dead_band=2.0), [2, 0, 1, 1, 0, 2, 1, 2])
    np.testing.assert_array_equal(gripper_commands(measured, target, dead_band=0.5), [2, 0, 0, 2, 0, 2, 1, 2])
    np.testing.assert_array_equal(gripper_commands(measured, target, dead_band=20.0), [1, 1, 1, 1, 1, 1, 1, 2])


# ------------------------------------------------------------------------------------ (3) clipping
def test_clipped_steps_are_clipped_per_axis_counted_and_reported(kin) -> None:
    traj = leader_trajectory(20)
    q, a = traj[:-1].copy(), traj[1:].copy()
    a[[2, 6]] += [15.0, 10, 0, 0, 0, 0]  # two fast jerks of the leader: several cm in one step
    conv = joint_to_ee(q, a, kin, ee_step_m=0.01)
    motion = ee_positions(kin, a) - ee_positions(kin, q)
    np.testing.assert_array_equal(conv.clipped, np.abs(motion).max(axis=1) > 0.01)
    assert conv.clipped.tolist().count(True) == 2 and conv.clipped[[2, 6]].all()
    np.testing.assert_allclose(conv.actions[:, :3], np.clip(motion / 0.01, -1, 1), atol=1e-6)
    assert np.abs(conv.actions[2, :3]).max() == 1.0  # the direction's sign survives the clip

    report = EEReport(0.01)
    report.add(conv)
    summary = report.summary()
    assert (summary["steps"], summary["clipped_steps"], summary["clipped_fraction"]) == (20, 2, 0.1)
    assert summary["fitting_ee_step_m"] > 0.01
    assert "2 of 20 converted steps" in report.warning() and f"ee_step_m={summary['fitting_ee_step_m']}" in (
        report.warning())
    refit = EEReport(summary["fitting_ee_step_m"])  # the suggested step leaves at most 1 % clipped: no warning
    refit.add(joint_to_ee(q, a, kin, ee_step_m=summary["fitting_ee_step_m"]))
    assert refit.clipped <= 1 and refit.warning() is None


# ------------------------------------------------------------------------------------ (4) the real CLI
def write_joint_dataset(root: Path, camera: bool) -> tuple[np.ndarray, np.ndarray]:
    """A joint-space dataset as lerobot-record writes one (lerobot's LeRobotDataset.create, motor names):
    2 episodes of 6 frames, one step with a clipped (too fast) motion; returns (q, a)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    names = [f"{m}.pos" for m in MOTORS]
    features = {"observation.state": {"dtype": "float32", "shape": (6,), "names": names},
                "action": {"dtype": "float32", "shape": (6,), "names": names}}
    if camera:
        features["observation.images.front"] = {"dtype": "image", "shape": (128, 128, 3),
                                                "names": ["height", "width", "channels"]}
    ds = LeRobotDataset.create(f"user/{root.name}", fps=30, features=features, root=root,
                               robot_type="so101_follower", use_videos=False)
    traj = leader_trajectory(24)[:13].astype(np.float32)  # 12 steps
    q, a = traj[:-1].copy(), traj[1:].copy()
    a[4] += [20.0, 0, 0, 0, 0, 0]  # one clipped step
    rng = np.random.default_rng(0)
    for ep in (range(0, 6), range(6, 12)):
        for t in ep:
            frame = {"observation.state": q[t], "action": a[t], "task": "pick"}
            if camera:
                frame["observation.images.front"] = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    return q, a


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("lr") / "so101_joint"
    return (root, *write_joint_dataset(root, camera=True))


def test_dataset_import_to_ee_through_the_cli_matches_the_pure_function(kin, recorded, tmp_path, capsys) -> None:
    from hilrl.deploy.cli import main  # the `hilrl` command, in-process (one torch import for the module)

    root, q, a = recorded
    out = tmp_path / "ee.zarr"
    assert main(["dataset", "import", "--dataset", str(root), "--output", str(out), "--map.to-ee",
                 "--map.urdf", str(URDF), "--map.state", "observation.state=joint_pos",
                 "--map.cameras", "observation.images.front=front", "--map.reward", "none", "--map.done", "none"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = joint_to_ee(q.astype(np.float64), a.astype(np.float64), kin, ee_step_m=0.01)
    assert info["ee_conversion"]["clipped_steps"] == int(expected.clipped.sum()) == 1
    spec, steps = read_steps(out)
    arm_spec = spec_from_features(FakeFollower.observation_features, FakeFollower.action_features,
                                  [CameraSpec("front", 0)], "ee")
    assert spec == arm_spec  # what an ee-mode SO-101 actor with a front camera sends: joint state + camera
    steps = list(steps)
    np.testing.assert_array_equal(np.stack([s.action for s in steps]), expected.actions)
    np.testing.assert_array_equal(np.stack([s.obs["joint_pos"] for s in steps]), q)  # observation unchanged
    assert [s.episode for s in steps if s.final_obs is not None] == [0, 1]

    # the learner's path (hilrl learner --demos ROOT --demo-map.to-ee ...) against the actor's spec
    from hilrl.deploy.configtools import parse_config
    from hilrl.learner.config import LearnerConfig

    cfg = parse_config(LearnerConfig, ["--demos", str(root), "--demo-map.to-ee", "--demo-map.urdf", str(URDF),
                                       "--demo-map.ee-step-m", "0.02", "--demo-map.target-frame",
                                       "gripper_frame_link", "--demo-map.state", "observation.state=joint_pos",
                                       "--demo-map.cameras", "observation.images.front=front",
                                       "--demo-map.reward", "none", "--demo-map.done", "none"], "hilrl learner", "")
    assert cfg.demo_map.to_ee and cfg.demo_map.ee_step_m == 0.02
    spec2, steps2 = read_demos(root, cfg.demo_map, like=arm_spec)
    coarse = joint_to_ee(q.astype(np.float64), a.astype(np.float64), kin, ee_step_m=0.02)
    assert spec2 == arm_spec
    np.testing.assert_array_equal(np.stack([s.action for s in steps2]), coarse.actions)
    plain = LeRobotMapping(state=("observation.state=joint_pos",), cameras=("observation.images.front=front",),
                           reward=None, done=None)
    with pytest.raises(LeRobotImportError, match="--demo-map.to-ee --demo-map.urdf"):  # the refusal names the fix
        read_demos(root, plain, like=arm_spec)


# ------------------------------------------------------------------------------------ (5) errors
def test_missing_urdf_placo_or_wrong_names_say_what_to_do(kin, recorded, tmp_path, monkeypatch) -> None:
    from hilrl.deploy.cli import main

    root, _, _ = recorded
    base = ["dataset", "import", "--dataset", str(root), "--output", str(tmp_path / "x.zarr"), "--map.to-ee",
            "--map.reward", "none", "--map.done", "none"]
    with pytest.raises(SystemExit) as no_urdf:
        main(base)
    assert "needs the SO-101 URDF (urdf=None" in str(no_urdf.value) and "SO-ARM100" in str(no_urdf.value)
    assert "--map.urdf PATH" in str(no_urdf.value)
    with pytest.raises(SystemExit, match=r"urdf='nope/so101.urdf' is not a file"):
        main([*base, "--map.urdf", "nope/so101.urdf"])
    with pytest.raises(SystemExit, match=r"frame 'tool0'.*not found"):
        main([*base, "--map.urdf", str(URDF), "--map.target-frame", "tool0"])
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "placo", None)  # an environment without placo: importing it fails
        with pytest.raises(SystemExit, match=r"needs placo: pip install -e '\.\[kinematics\]'"):
            main([*base, "--map.urdf", str(URDF)])
    assert not (tmp_path / "x.zarr").exists()  # refused before anything was written
    with pytest.raises(KinematicsError, match="has no joint 'elbow', 'wrist'; it has shoulder_pan, shoulder_lift"):
        load_kinematics(URDF, "gripper_frame_link", ["shoulder_pan", "elbow", "wrist", "gripper"], PURPOSE,
                        ALTERNATIVE)
    with pytest.raises(LeRobotImportError, match="missing feature 'observation.joints'"):
        read_demos(root, LeRobotMapping(to_ee=True, urdf=str(URDF), joint_state="observation.joints", reward=None,
                                        done=None))
    with pytest.raises(ValueError, match="ee_step_m must be > 0"):
        joint_to_ee(np.zeros(6), np.zeros(6), kin, ee_step_m=0.0)


def test_learner_process_seeds_ee_demos_from_a_joint_space_dataset(spawn, tmp_path) -> None:
    """hilrl learner --demos ROOT --demo-map.to-ee ...: a real learner adopts the ee spec and trains on them."""
    q, a = write_joint_dataset(tmp_path / "so101_state", camera=False)
    port = free_port()
    learner = spawn("learner", "--port", str(port), "--output-dir", str(tmp_path / "out"), "--demos",
                    str(tmp_path / "so101_state"), "--demo-map.to-ee", "--demo-map.urdf", str(URDF),
                    "--demo-map.state", "observation.state=joint_pos", "--demo-map.reward", "none",
                    "--demo-map.done", "none", "--demo-episodes", "2", "--offline-steps", "10", "--batch-size", "8",
                    "--hidden", "16,16", "--torch-threads", "1", name="learner")
    status = wait_until(lambda: (s := hilrl_status(f"127.0.0.1:{port}")) and s["stage"] == "online" and s,
                        120, "offline training on converted demos", diagnose=lambda: learner.stderr[-2000:])
    assert status["buffers"]["human"]["size"] == len(q) and status["demo_episodes"] == 2
    spec = json.loads((tmp_path / "out" / "spec.json").read_text())
    arm = spec_from_features(FakeFollower.observation_features, FakeFollower.action_features, [], "ee")
    assert spec == arm.to_dict()  # an ee-mode SO-101 actor (no camera) is accepted as it is
    assert '"clipped_steps": 1' in learner.stderr  # the clip accounting is logged
