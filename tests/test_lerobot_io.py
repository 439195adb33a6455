"""LeRobotDataset import/export, fully offline: exact round trips, lerobot's own datasets, mapping errors,
and a learner seeded from a LeRobotDataset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, hilrl_status, run_hilrl, wait_until

from hilrl.buffers.assembler import Step
from hilrl.buffers.lerobot_export import episodes_from_items, export_lerobot
from hilrl.buffers.lerobot_io import LeRobotImportError, LeRobotMapping, import_lerobot
from hilrl.buffers.recording import StepRecorder, read_steps
from hilrl.buffers.replay import DualBuffer, EpisodeAssembler
from hilrl.buffers.spec import Feature, Spec
from hilrl.buffers.store import BufferStore

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach the hub
SPEC = Spec(observation=(Feature("state", "float32", (3,)), Feature("front", "uint8", (16, 16, 3))),
            action=Feature("action", "float32", (2,), (-1, -1), (1, 1)))
DATA = Path(__file__).parent / "data" / "sim-pickcube-8ep.zarr"


def obs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    smooth = np.linspace(0, 255, 16, dtype=np.float32)[None, :, None] * rng.random(3, dtype=np.float32)
    img = (smooth + rng.integers(0, 40, (16, 16, 3))).clip(0, 255).astype(np.uint8)
    return {"state": rng.normal(size=3).astype(np.float32), "front": img}


def episodes(n: int, seed: int = 0) -> list[Step]:
    """Episodes with takeovers, ending terminated (even) or truncated (odd)."""
    rng = np.random.default_rng(seed)
    out = []
    for ep in range(n):
        length = 4 + ep % 3
        for t in range(length):
            last = t == length - 1
            out.append(Step(obs(rng), rng.uniform(-1, 1, 2).astype(np.float32), float(last and ep % 2 == 0),
                            last and ep % 2 == 0, last and ep % 2 == 1, 1 <= t <= 2, ep, t,
                            obs(rng) if last else None))
    return out


def assert_same_steps(a: list[Step], b: list[Step]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.reward, x.terminated, x.truncated, x.is_intervention, x.step) == (
            y.reward, y.terminated, y.truncated, y.is_intervention, y.step)
        assert x.action.tobytes() == y.action.tobytes()
        for name in x.obs:
            assert x.obs[name].dtype == y.obs[name].dtype and x.obs[name].tobytes() == y.obs[name].tobytes()
        assert (x.final_obs is None) == (y.final_obs is None)
        for name in x.final_obs or {}:
            assert x.final_obs[name].tobytes() == y.final_obs[name].tobytes()


def test_export_then_import_gives_identical_steps_and_lerobot_reads_the_export(tmp_path: Path, capsys) -> None:
    steps = episodes(4)
    with StepRecorder(tmp_path / "r.zarr", SPEC) as rec:
        for s in steps:
            rec.add(s)
    from hilrl.deploy.cli import main  # the `hilrl` command, in-process (no second torch import)

    assert main(["dataset", "export", "--recording", str(tmp_path / "r.zarr"), "--output", str(tmp_path / "ds"),
                 "--fps", "10", "--task", "pick the cube"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 4
    assert main(["dataset", "import", "--dataset", str(tmp_path / "ds"), "--output", str(tmp_path / "back.zarr")]) == 0
    spec, back = read_steps(tmp_path / "back.zarr")
    assert spec == SPEC  # names, uint8 HWC images and the action bounds (from meta/hilrl.json)
    assert_same_steps(steps, list(back))

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/ds", root=tmp_path / "ds")
    assert ds.fps == 10 and ds.num_episodes == 4 and len(ds) == len(steps) + 4  # + one final frame per episode
    assert ds.features["observation.images.front"]["dtype"] == "image" and ds[0]["task"] == "pick the cube"
    assert [k for k in ds.meta.camera_keys] == ["observation.images.front"]


@pytest.mark.parametrize("own", ["agent_pos", "joint_pos"])
def test_the_robot_state_is_exported_as_observation_state_and_imported_back(tmp_path: Path, own: str) -> None:
    """LeRobot's conventional names: the sim's agent_pos (an arm's joint_pos) becomes observation.state, so a
    policy lerobot-train trains on the export reads the real arm's name; the import gives our names back."""
    spec = Spec(observation=(Feature(own, "float32", (3,)), Feature("environment_state", "float32", (2,)),
                             Feature("front", "uint8", (16, 16, 3))), action=SPEC.action)
    rng = np.random.default_rng(0)

    def o() -> dict[str, np.ndarray]:
        return {own: rng.normal(size=3).astype(np.float32), "environment_state": rng.normal(size=2).astype(
            np.float32), "front": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)}

    steps = [Step(o(), rng.uniform(-1, 1, 2).astype(np.float32), 0.0, False, t == 2, False, 0, t,
                  o() if t == 2 else None) for t in range(3)]
    export_lerobot([steps], spec, tmp_path / "ds")
    info = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())["features"]
    assert "observation.state" in info and f"observation.{own}" not in info
    assert "observation.environment_state" in info and "observation.images.front" in info
    back_spec, back = import_lerobot(tmp_path / "ds")
    assert back_spec == spec
    assert_same_steps(steps, list(back))


def test_exporting_one_side_of_the_store_gives_that_buffers_transitions(tmp_path: Path) -> None:
    store = BufferStore(tmp_path / "store", SPEC)
    a, b = episodes(3, seed=1), episodes(2, seed=2)
    store.append("arm-a", 1, a[:7])
    store.append("arm-b", 1, b)
    store.append("arm-a", 2, a[7:])
    buffers, asm = DualBuffer(SPEC, 100, 100), EpisodeAssembler()
    for source, item in store.replay():
        for t in asm.add(source, item)[0]:
            buffers.add(t)
    from hilrl.buffers.store import read_store

    for side, buffer in (("human", buffers.human), ("policy", buffers.policy)):
        spec, items, discarded = read_store(tmp_path / "store")
        export_lerobot(episodes_from_items(items, side, discarded), spec, tmp_path / side)
        _, back = import_lerobot(tmp_path / side)
        got = []
        asm = EpisodeAssembler()
        for step in back:
            got += asm.add("x", step)[0]
        held = buffer.gather(buffer.sampleable())
        mine = sorted((t.obs["front"].tobytes(), t.next_obs["front"].tobytes(), t.obs["state"].tobytes(),
                       t.action.tobytes(), t.reward, t.terminated) for t in got)
        theirs = sorted((held["obs"]["front"][i].tobytes(), held["next_obs"]["front"][i].tobytes(),
                         held["obs"]["state"][i].tobytes(), held["action"][i].tobytes(), float(held["reward"][i]),
                         bool(held["terminated"][i])) for i in range(len(buffer)))
        assert len(got) == len(buffer) > 0 and mine == theirs  # the same transitions (export order: by run)
        assert all(t.is_intervention == (side == "human") for t in got)


@pytest.fixture(scope="module")
def lerobot_made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """A dataset written with lerobot's own LeRobotDataset.create API and lerobot's usual feature names."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("lr") / "so101_pick"
    features = {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": [f"j{i}.pos" for i in range(6)]},
        "observation.images.front": {"dtype": "image", "shape": (24, 32, 3),
                                     "names": ["height", "width", "channels"]},
        "action": {"dtype": "float32", "shape": (6,), "names": [f"j{i}.pos" for i in range(6)]},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }
    ds = LeRobotDataset.create("user/so101_pick", fps=30, features=features, root=root, robot_type="so101_follower",
                               use_videos=False)
    rng = np.random.default_rng(3)
    frames = []
    for ep, length in enumerate((5, 4)):
        for t in range(length):
            done = ep == 0 and t == length - 1  # episode 1 ends without done: a timeout
            f = {"observation.state": rng.normal(size=6).astype(np.float32),
                 "observation.images.front": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
                 "action": rng.uniform(-50, 50, 6).astype(np.float32),
                 "next.reward": np.array([float(done)], np.float32), "next.done": np.array([done])}
            frames.append(f)
            ds.add_frame({**f, "task": "pick"})
        ds.save_episode()
    ds.finalize()
    return root, frames


def test_a_lerobot_recorded_dataset_imports_with_the_default_mapping(lerobot_made) -> None:
    root, frames = lerobot_made
    resized, _ = import_lerobot(root)  # by default at the camera policy's resolution
    assert resized.feature("front").shape == (128, 128, 3)
    spec, steps = import_lerobot(root, LeRobotMapping(image_size=0))  # the dataset's own size: frames bit for bit
    steps = list(steps)
    assert spec.observation_names == ("state", "front") and spec.feature("front").shape == (24, 32, 3)
    assert spec.action.shape == (6,) and len(steps) == len(frames)
    for s, f in zip(steps, frames, strict=True):
        assert s.obs["front"].dtype == np.uint8 and s.obs["front"].tobytes() == f["observation.images.front"].tobytes()
        assert s.obs["state"].tobytes() == f["observation.state"].tobytes() and s.is_intervention
        assert s.action.tobytes() == f["action"].tobytes()
    ends = [(s.episode, s.step, s.terminated, s.truncated) for s in steps if s.final_obs is not None]
    assert ends == [(0, 4, True, False), (1, 3, False, True)]
    assert steps[4].reward == 1.0 and steps[4].final_obs["front"].tobytes() == steps[4].obs["front"].tobytes()
    renamed, _ = import_lerobot(root, LeRobotMapping(state=("observation.state=joint_pos",),
                                                     cameras=("observation.images.front=wrist",)))
    assert renamed.observation_names == ("joint_pos", "wrist")


def test_mapping_errors_list_every_missing_feature_and_what_the_dataset_has(lerobot_made, tmp_path: Path) -> None:
    root, _ = lerobot_made
    with pytest.raises(LeRobotImportError) as err:
        import_lerobot(root, LeRobotMapping(action="act", reward="reward", cameras=("observation.images.top",)))
    text = str(err.value)
    for missing in ("'act'", "'reward'", "'observation.images.top'"):
        assert f"missing feature {missing}" in text
    assert "The dataset has: observation.state (float32[6])" in text and "next.done (bool[1])" in text
    ee = Spec(observation=(Feature("state", "float32", (6,)), Feature("front", "uint8", (24, 32, 3))),
              action=Feature("action", "float32", (4,), (-1, -1, -1, 0), (1, 1, 1, 2)))
    with pytest.raises(LeRobotImportError, match="needs the arm's kinematics"):  # joint targets vs EE deltas
        import_lerobot(root, like=ee)
    arm = Spec(observation=(Feature("joint_pos", "float32", (6,)), Feature("front", "uint8", (24, 32, 3))),
               action=Feature("action", "float32", (6,), (-100,) * 6, (100,) * 6))
    spec, _ = import_lerobot(root, like=arm)  # observation.state is the arm's own state: joint_pos
    assert spec == arm  # the learner's bounds, not the dataset's min/max
    other = Spec(observation=(Feature("angles", "float32", (6,)), *arm.observation[1:]), action=arm.action)
    with pytest.raises(LeRobotImportError, match="--demo-map.state KEY=NAME"):
        import_lerobot(root, like=other)
    spec, _ = import_lerobot(root, LeRobotMapping(state=("observation.state=angles",)), like=other)
    assert spec == other
    r = run_hilrl("learner", "--port", str(free_port()), "--output-dir", str(tmp_path / "o"), "--demos", str(root),
                  "--demo-map.done", "episode_end", timeout=120)
    assert r.returncode != 0 and "--demos" in r.stderr and "missing feature 'episode_end'" in r.stderr


def test_learner_seeded_from_a_lerobot_dataset_trains_without_any_actor(spawn, tmp_path: Path) -> None:
    spec, steps = read_steps(DATA)
    steps = list(steps)
    export_lerobot(episodes_from_items(("rec", s) for s in steps), spec, tmp_path / "ds", task="pick")
    port = free_port()
    learner = spawn("learner", "--port", str(port), "--output-dir", str(tmp_path / "out"), "--demos",
                    str(tmp_path / "ds"), "--demo-episodes", "8", "--offline-steps", "30", "--batch-size", "32",
                    "--hidden", "32,32", "--torch-threads", "1", name="learner")
    status = wait_until(lambda: (s := hilrl_status(f"127.0.0.1:{port}")) and s["stage"] == "online" and s,
                        150, "offline training from the LeRobotDataset", diagnose=lambda: learner.stderr[-2000:])
    assert status["buffers"]["human"]["size"] == len(steps) and status["buffers"]["policy"]["size"] == 0
    assert status["demo_episodes"] == 8 and status["weight_version"] == 1
    assert json.loads((tmp_path / "out" / "spec.json").read_text()) == spec.to_dict()


def test_video_features_decode_to_uint8_frames(tmp_path: Path) -> None:
    """lerobot-record writes cameras as video by default; they decode (pyav) to uint8 HxWx3, lossy but close."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {"observation.state": {"dtype": "float32", "shape": (6,), "names": None},
                "observation.images.front": {"dtype": "video", "shape": (32, 48, 3),
                                             "names": ["height", "width", "channels"]},
                "action": {"dtype": "float32", "shape": (6,), "names": None}}
    ds = LeRobotDataset.create("user/video", fps=30, features=features, root=tmp_path / "v", use_videos=True)
    yy, xx = np.mgrid[0:32, 0:48]
    images = [np.stack([(xx * 5 + 10 * t) % 256, yy * 7, np.full_like(xx, 128)], -1).astype(np.uint8)
              for t in range(6)]
    for t, img in enumerate(images):
        ds.add_frame({"observation.state": np.full(6, t, np.float32), "observation.images.front": img,
                      "action": np.linspace(-t, t, 6).astype(np.float32), "task": "x"})
    ds.save_episode()
    ds.finalize()
    spec, steps = import_lerobot(tmp_path / "v", LeRobotMapping(reward=None, done=None, image_size=0))
    steps = list(steps)
    assert spec.feature("front") == Feature("front", "uint8", (32, 48, 3)) and len(steps) == 6
    for s, img in zip(steps, images, strict=True):
        assert s.obs["front"].dtype == np.uint8 and np.abs(s.obs["front"].astype(int) - img).mean() < 8
    assert steps[-1].truncated and not steps[-1].terminated and {s.reward for s in steps} == {0.0}
    actions = np.stack([s.action for s in steps])
    assert spec.action.low == tuple(actions.min(0)) and spec.action.high == tuple(actions.max(0))  # (a warning)


@pytest.fixture(scope="module")
def sim_video_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """What lerobot-record writes for the sim's cameras: video features (lerobot's own writer, use_videos=True) at
    a camera's 4:3 size, not the policy's 128x128, plus agent_pos, the 4-d action, reward and done."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("lrv") / "sim_pick_video"
    image = {"dtype": "video", "shape": (48, 64, 3), "names": ["height", "width", "channels"]}
    features = {"observation.agent_pos": {"dtype": "float32", "shape": (18,), "names": None},
                "observation.images.front": image, "observation.images.wrist": image,
                "action": {"dtype": "float32", "shape": (4,), "names": None},
                "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
                "next.done": {"dtype": "bool", "shape": (1,), "names": None}}
    ds = LeRobotDataset.create("user/sim_pick_video", fps=10, features=features, root=root, use_videos=True)
    yy, xx = np.mgrid[0:48, 0:64]
    rng, frames = np.random.default_rng(0), []
    for ep in range(2):
        for t in range(4):
            done = t == 3
            f = {"observation.agent_pos": rng.normal(size=18).astype(np.float32),
                 "observation.images.front": np.stack([(xx * 4 + 20 * t) % 256, yy * 5, np.full_like(xx, 60 * ep)],
                                                      -1).astype(np.uint8),
                 "observation.images.wrist": np.stack([yy * 5, (xx * 3 + 30 * t) % 256, np.full_like(xx, 100)],
                                                      -1).astype(np.uint8),
                 "action": rng.uniform([-1, -1, -1, 0], [1, 1, 1, 2]).astype(np.float32),
                 "next.reward": np.array([float(done)], np.float32), "next.done": np.array([done])}
            frames.append(f)
            ds.add_frame({**f, "task": "pick the cube"})
        ds.save_episode()
    ds.finalize()
    return root, frames


def test_video_frames_are_decoded_and_resized_to_the_policy_resolution(sim_video_dataset) -> None:
    import cv2

    from hilrl.hardware.sim import SimPickCube

    root, frames = sim_video_dataset
    with SimPickCube(cameras=True) as sim:
        spec, steps = import_lerobot(root, like=sim.spec)
        assert spec == sim.spec  # 128x128 cameras and the sim's bounds: a --sim-cameras actor is accepted
    steps = list(steps)
    assert len(steps) == len(frames) and [s.terminated for s in steps].count(True) == 2
    for s, f in zip(steps, frames, strict=True):
        for cam in ("front", "wrist"):
            want = cv2.resize(f[f"observation.images.{cam}"], (128, 128), interpolation=cv2.INTER_AREA)
            assert s.obs[cam].shape == (128, 128, 3) and s.obs[cam].dtype == np.uint8
            assert np.abs(s.obs[cam].astype(int) - want).mean() < 8  # video is lossy (AV1, yuv420p)
    plain, _ = import_lerobot(root, LeRobotMapping(image_size=96))
    assert plain.feature("wrist").shape == (96, 96, 3)


@pytest.mark.e2e
def test_learner_seeded_from_a_video_dataset_runs_the_camera_cpu_route(spawn, sim_video_dataset, tmp_path) -> None:
    """`hilrl learner --demos` on a lerobot video dataset: the camera spec at 128x128 (what a --sim-cameras actor
    sends), the frozen encoder with cached features, offline updates and the first weights."""
    from hilrl.hardware.sim import SimPickCube

    root, frames = sim_video_dataset
    port, out = free_port(), tmp_path / "out"
    learner = spawn("learner", "--port", str(port), "--output-dir", str(out), "--demos", str(root),
                    "--demo-map.action-low=-1,-1,-1,0", "--demo-map.action-high=1,1,1,2",
                    "--demo-episodes", "2", "--offline-steps", "2", "--batch-size", "4", "--hidden", "16,16",
                    "--human-capacity", "64", "--policy-capacity", "64", "--torch-threads", "1",
                    "--encoder-pretrain-steps", "2", name="learner")  # the camera defaults: frozen, cached
    status = wait_until(lambda: (s := hilrl_status(f"127.0.0.1:{port}")) and s["stage"] == "online" and s,
                        150, "offline camera training from the video dataset", diagnose=lambda: learner.stderr[-2000:])
    assert status["buffers"]["human"]["size"] == len(frames) and status["weight_version"] == 1
    assert (out / "encoder.safetensors").is_file()  # the learner pretrained its encoder on the video demos
    with SimPickCube(cameras=True) as sim:
        assert Spec.from_dict(json.loads((out / "spec.json").read_text())) == sim.spec
    assert learner.stop() == 0
