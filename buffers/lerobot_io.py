"""LeRobotDataset import (local directories only; the Hugging Face hub is never reached); export is in
:mod:`hilrl.buffers.lerobot_export`.

Import: any LeRobotDataset root (``meta/info.json``) becomes hilrl steps through a `LeRobotMapping`
(dataset feature -> our feature). Images (``dtype`` image or video; video decoded by lerobot's own
reader with its ``pyav`` backend) become uint8 HWC arrays at the policy's resolution (`image_shapes`:
the learner's camera shape, else a hilrl export's own, else 128x128, resized with area interpolation as
the actor's cameras are), state features float32 vectors. ``next.reward`` is the reward after a frame's
action; ``next.done`` on an episode's last frame means terminated, an episode that ends without it is
truncated (a timeout: bootstrapped). ``complementary_info.is_intervention`` is kept when present (hilrl's exports and
lerobot's HIL-SERL recordings carry it); otherwise every step counts as a human step.

Export: each episode's frames, then one extra frame holding the observation *after* its last step
(``complementary_info.is_final_observation`` = true, zero action and reward). lerobot's tools see
an ordinary dataset; hilrl's import turns that frame back into the final observation, so
export -> import gives the same transitions bit for bit. ``meta/hilrl.json`` keeps our spec (action
bounds included). Exporting one side of the dual buffer (``human`` or ``policy``) writes every
maximal run of that side's steps as an episode of its own; a run that the other side interrupted
ends truncated, its final observation being the observation the other side's step started from.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hilrl.buffers.assembler import Step
from hilrl.buffers.joint_to_ee import (
    EE_HIGH,
    EE_LOW,
    EEReport,
    JointToEE,
    KinematicsError,
    dataset_joint_names,
    load_kinematics,
)
from hilrl.buffers.options import opt
from hilrl.buffers.recording import RecordingError, read_steps
from hilrl.buffers.spec import Feature, Spec

log = logging.getLogger(__name__)

IMAGES = "observation.images."
POLICY_IMAGE_SIZE = 128  # what the actor's cameras give (hardware/cameras.py) and camera policies are built for
FINAL = "complementary_info.is_final_observation"
META = "meta/hilrl.json"
STATE = "observation.state"  # LeRobot's name for the robot's own state (what its policies read)
ROBOT_STATE = ("state", "joint_pos", "agent_pos")  # hilrl's names for it: generic, real arm (SOArm), sim
Side = Literal["human", "policy", "all"]


class LeRobotImportError(RecordingError):
    """The dataset cannot be mapped onto hilrl steps; the text lists what is missing and what is there."""


@dataclass
class LeRobotMapping:
    """Which LeRobotDataset features become which hilrl features (defaults: lerobot's usual names)."""

    cameras: tuple[str, ...] = opt((), "camera features as DATASET_KEY=NAME; empty = every observation.images.* "
                                         "feature, named after it (observation.images.front -> front)")
    state: tuple[str, ...] = opt((), "state features as DATASET_KEY=NAME; empty = every other observation.* "
                                       "feature, named after it (observation.state -> state)")
    action: str = opt("action", "action feature (a vector; joint-space datasets give joint targets, see "
                                  "docs/datasets.md)")
    reward: str | None = opt("next.reward", "reward feature; none = every reward is 0")
    done: str | None = opt("next.done", "terminal flag feature; none = every episode ends truncated")
    truncated: str = opt("next.truncated", "timeout flag feature, used when the dataset has it")
    intervention: str = opt("complementary_info.is_intervention",
                              "human-step flag, used when the dataset has it (else every step is human)")
    action_low: tuple[float, ...] = opt((), "action lower bounds; empty = the learner's spec's, else "
                                              "meta/hilrl.json's, else the dataset's action minimum")
    action_high: tuple[float, ...] = opt((), "action upper bounds (see action_low)")
    to_ee: bool = opt(False, "convert joint targets to end-effector deltas [dx, dy, dz, g] for an ee-mode actor, "
                               "by forward kinematics of the URDF (needs urdf and placo; see docs/datasets.md)")
    urdf: str | None = opt(None, "to_ee: the arm's URDF (SO-101: so101_new_calib.urdf from TheRobotStudio's "
                                   "SO-ARM100 repository)")
    ee_step_m: float = opt(0.01, "to_ee: metres per action unit; must equal the ee-mode actor's "
                                    "--ee-step-m (default 0.01 m on both)")
    target_frame: str = opt("gripper_frame_link", "to_ee: the URDF frame whose position the action moves")
    gripper_dead_band: float = opt(2.0, "to_ee: gripper target changes (0..100 units) within this band hold "
                                          "the gripper (g=1); beyond it g=2 closes, g=0 opens")
    joint_state: str = opt("observation.state", "to_ee: the measured joint positions feature (same joint "
                                                  "order as the action)")
    image_size: int | None = opt(None, "camera frames are resized (area interpolation) to SIZE x SIZE; none = "
                                         "the learner's camera shape, else a hilrl export's own (meta/hilrl.json), "
                                         f"else {POLICY_IMAGE_SIZE}x{POLICY_IMAGE_SIZE} (the actor's cameras); "
                                         "0 = the dataset's own size")


def is_lerobot_dataset(path: str | Path) -> bool:
    return (Path(path) / "meta" / "info.json").is_file()


def read_demos(path: str | Path, mapping: LeRobotMapping | None = None,
               like: Spec | None = None) -> tuple[Spec, Iterator[Step]]:
    """A demonstration file's spec and steps: a hilrl recording or a LeRobotDataset root."""
    if is_lerobot_dataset(path):
        return import_lerobot(path, mapping or LeRobotMapping(), like)
    return read_steps(path)


# ---------------------------------------------------------------------------------------------- import


def _pairs(entries: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for entry in entries:
        key, sep, name = entry.partition("=")
        if not key:
            raise LeRobotImportError(f"{what} mapping entry {entry!r}: expected DATASET_KEY=NAME")
        out[key] = name if sep else _default_name(key)
    return out


def _default_name(key: str) -> str:
    return key.removeprefix(IMAGES).removeprefix("observation.")


def robot_state(names: Iterable[str]) -> str | None:
    """Which of ``names`` is the robot's own state (exported as ``observation.state``): the first of `ROBOT_STATE`."""
    names = set(names)
    return next((n for n in ROBOT_STATE if n in names), None)


def _state_name(root: Path, key: str, like: Spec | None) -> str:
    """Our name of dataset state feature `key`: as a hilrl export names it (meta/hilrl.json ``names``), else
    ``observation.state`` -> the learner's robot state (``joint_pos`` on an arm), else the key less its prefix."""
    meta = root / META
    renamed = json.loads(meta.read_text()).get("names", {}) if meta.is_file() else {}
    if key in renamed:
        return renamed[key]
    if key == STATE and like is not None and (own := robot_state(like.observation_names)) is not None:
        return own
    return _default_name(key)


def _image_hwc(shape: list[int], names: list[str] | None) -> tuple[int, int, int]:
    if names and list(names)[:3] == ["channels", "height", "width"]:
        return int(shape[1]), int(shape[2]), int(shape[0])
    return int(shape[0]), int(shape[1]), int(shape[2])


def _features(root: Path) -> tuple[dict, int]:
    info = json.loads((root / "meta" / "info.json").read_text())
    return info["features"], int(info.get("fps", 10))


def map_features(root: Path, mapping: LeRobotMapping,
                 like: Spec | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(cameras, states) as dataset key -> our name (`_state_name`); raises naming every missing feature."""
    features, _ = _features(root)
    is_image = {k for k, v in features.items() if v["dtype"] in ("image", "video")}
    cameras = _pairs(mapping.cameras, "camera") if mapping.cameras else {
        k: _default_name(k) for k in features if k in is_image and k.startswith(IMAGES)}
    states = _pairs(mapping.state, "state") if mapping.state else {
        k: _state_name(root, k, like) for k in features if k.startswith("observation.") and k not in is_image}
    wanted = [*cameras, *states, mapping.action, *(k for k in (mapping.reward, mapping.done) if k)]
    missing = [k for k in wanted if k not in features]
    problems = [f"missing feature {k!r}" for k in missing]
    problems += [f"camera {k!r} is not an image or video feature" for k in cameras if k in features
                 and k not in is_image]
    if not states and not cameras:
        problems.append("no observation features (no observation.* in the dataset and none mapped)")
    if problems:
        have = ", ".join(f"{k} ({v['dtype']}{list(v['shape'])})" for k, v in features.items())
        hint = ("; map them with --demo-map.state KEY=NAME, --demo-map.cameras KEY=NAME, --demo-map.action KEY, "
                "--demo-map.reward KEY|none, --demo-map.done KEY|none (see docs/datasets.md)")
        raise LeRobotImportError(f"{root}: cannot import this LeRobotDataset: {'; '.join(problems)}. "
                                 f"The dataset has: {have}{hint}")
    return cameras, states


def _action_bounds(root: Path, mapping: LeRobotMapping, dim: int, like: Spec | None) -> tuple[list, list]:
    if mapping.action_low or mapping.action_high:
        if len(mapping.action_low) != dim or len(mapping.action_high) != dim:
            raise LeRobotImportError(f"action_low/action_high need {dim} entries each (the action has {dim})")
        return list(mapping.action_low), list(mapping.action_high)
    if like is not None and like.action.shape == (dim,):
        return list(like.action.low), list(like.action.high)
    meta = root / META
    if meta.is_file():
        action = Spec.from_dict(json.loads(meta.read_text())["spec"]).action
        if action.shape == (dim,):
            return list(action.low), list(action.high)
    stats_path = root / "meta" / "stats.json"
    stats = json.loads(stats_path.read_text()).get(mapping.action, {}) if stats_path.is_file() else {}
    if "min" in stats and "max" in stats:
        log.warning("%s: action bounds taken from the dataset's min/max; pass --demo-map.action-low/high "
                    "(or --spec-file) to use the arm's real bounds", root)
        return [float(v) for v in stats["min"]], [float(v) for v in stats["max"]]
    raise LeRobotImportError(f"{root}: no action bounds (no meta/stats.json); pass action_low and action_high")


def dataset_spec(root: str | Path, mapping: LeRobotMapping, like: Spec | None = None) -> Spec:
    """Our spec for a LeRobotDataset under `mapping` (image features uint8 HWC, state float32)."""
    root = Path(root)
    features, _ = _features(root)
    cameras, states = map_features(root, mapping, like)
    obs = [Feature(name, "float32", tuple(features[k]["shape"])) for k, name in states.items()]
    shapes = image_shapes(root, mapping, like)
    obs += [Feature(name, "uint8", shapes[name]) for name in cameras.values()]
    action_shape = features[mapping.action]["shape"]
    if len(action_shape) != 1:
        raise LeRobotImportError(f"{root}: action feature {mapping.action!r} has shape {action_shape}; "
                                 "hilrl needs a vector")
    dim = int(action_shape[0])
    out_dim = len(EE_LOW) if mapping.to_ee else dim
    if like is not None:
        if like.action.shape != (out_dim,) and mapping.to_ee:
            raise LeRobotImportError(
                f"{root}: to_ee turns the dataset's joint targets into {out_dim}-entry end-effector actions, the "
                f"learner's spec has {like.action.shape[0]}: leave to_ee off for a joint-mode actor")
        if like.action.shape != (out_dim,):
            raise LeRobotImportError(
                f"{root}: the dataset's action {mapping.action!r} has {dim} entries, the learner's spec "
                f"{like.action.shape[0]}. A joint-space dataset (joint targets) cannot feed an end-effector actor "
                "as it is: that conversion needs the arm's kinematics. Convert it on import with --demo-map.to-ee "
                "--demo-map.urdf URDF (hilrl dataset import: --map.to-ee --map.urdf URDF; see docs/datasets.md), "
                "or use a joint-space actor")
        names = {f.name for f in obs}
        if names != set(like.observation_names):
            raise LeRobotImportError(
                f"{root}: the mapped observation features {sorted(names)} differ from the learner's spec "
                f"{sorted(like.observation_names)}; name them with --demo-map.state KEY=NAME and "
                "--demo-map.cameras KEY=NAME")
    if mapping.to_ee:
        try:  # refuse a dataset without joint targets before any import work
            dataset_joint_names(features, mapping.action, mapping.joint_state)
        except ValueError as exc:
            raise LeRobotImportError(f"{root}: {exc}") from exc
        low, high = (list(like.action.low), list(like.action.high)) if like is not None else (EE_LOW, EE_HIGH)
    else:
        low, high = _action_bounds(root, mapping, dim, like)
    spec = Spec(tuple(obs), Feature("action", "float32", (out_dim,), tuple(low), tuple(high)))
    if like is not None:  # the learner's own feature order and dtypes
        by_name = {f.name: f for f in spec.observation}
        spec = Spec(tuple(Feature(f.name, f.dtype, by_name[f.name].shape) for f in like.observation), spec.action)
    return spec


def image_shapes(root: Path, mapping: LeRobotMapping, like: Spec | None = None) -> dict[str, tuple[int, int, int]]:
    """Camera name -> the HxWx3 shape its frames are imported at (see `LeRobotMapping.image_size`)."""
    features, _ = _features(root)
    cameras, _ = map_features(root, mapping, like)
    own = {name: _image_hwc(features[k]["shape"], features[k].get("names")) for k, name in cameras.items()}
    if mapping.image_size == 0:
        return own
    if mapping.image_size is not None:
        return {name: (mapping.image_size, mapping.image_size, 3) for name in own}
    known: dict[str, tuple[int, ...]] = {}
    if like is not None:
        known = {f.name: f.shape for f in like.image_features}
    elif (root / META).is_file():  # a hilrl export: the shapes it was written at
        known = {f.name: f.shape for f in Spec.from_dict(json.loads((root / META).read_text())["spec"]).image_features}
    size = (POLICY_IMAGE_SIZE, POLICY_IMAGE_SIZE, 3)
    return {name: tuple(known.get(name, size)) for name in own}  # type: ignore[misc]


def _ee_converter(root: Path, mapping: LeRobotMapping, report: EEReport | None) -> JointToEE:
    try:
        names = dataset_joint_names(_features(root)[0], mapping.action, mapping.joint_state)
        kin = load_kinematics(mapping.urdf, mapping.target_frame, names, "importing joint-space demonstrations "
                              "as end-effector actions (to_ee)", "leave to_ee off and train a joint-mode actor")
    except ValueError as exc:  # KinematicsError too
        where = "" if mapping.urdf and Path(mapping.urdf).is_file() else (
            " Pass it with --demo-map.urdf PATH (hilrl dataset import: --map.urdf PATH).")
        raise LeRobotImportError(f"{root}: {exc}{where if isinstance(exc, KinematicsError) else ''}") from exc
    return JointToEE(kin, mapping.ee_step_m, names.index("gripper"), mapping.gripper_dead_band, report)


def _to_numpy(value: object) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _image(value: object, source: tuple[int, int, int], feature: Feature) -> np.ndarray:
    """A decoded frame (the dataset's ``source`` HxWx3, lerobot gives float CHW in [0, 1]) as uint8 at the
    feature's shape (area interpolation, as the actor's cameras resize)."""
    arr = _to_numpy(value)
    if arr.dtype != np.uint8:  # lerobot decodes to float CHW in [0, 1]; PNG/video frames are uint8 underneath
        arr = np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if arr.shape != source and arr.shape == (source[2], source[0], source[1]):
        arr = np.ascontiguousarray(arr.transpose(1, 2, 0))
    if arr.shape != source:
        raise LeRobotImportError(f"image {feature.name!r}: frame shape {arr.shape} != {source}")
    if arr.shape != feature.shape:
        import cv2

        arr = np.ascontiguousarray(cv2.resize(arr, (feature.shape[1], feature.shape[0]), interpolation=cv2.INTER_AREA))
    return arr


def _flag(frame: dict, key: str | None, default: bool) -> bool:
    if key is None or key not in frame:
        return default
    return bool(_to_numpy(frame[key]).reshape(-1)[0])


def import_lerobot(root: str | Path, mapping: LeRobotMapping | None = None, like: Spec | None = None,
                   ee_report: EEReport | None = None) -> tuple[Spec, Iterator[Step]]:
    """The spec and the steps (in dataset order) of a local LeRobotDataset.

    `like` is the learner's spec, if it has one: its action bounds and feature order are used. With
    ``mapping.to_ee`` the joint targets become end-effector deltas (:mod:`hilrl.buffers.joint_to_ee`);
    `ee_report` (if given) counts the clipped steps, which are also logged when the stream ends.
    """
    root = Path(root)
    mapping = mapping or LeRobotMapping()
    if not is_lerobot_dataset(root):
        raise LeRobotImportError(f"{root}: not a LeRobotDataset (no meta/info.json)")
    spec = dataset_spec(root, mapping, like)
    cameras, states = map_features(root, mapping, like)
    features, _ = _features(root)
    source = {k: _image_hwc(features[k]["shape"], features[k].get("names")) for k in cameras}
    to_ee = _ee_converter(root, mapping, ee_report) if mapping.to_ee else None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local roots only: never reach the hub
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(f"local/{root.name}", root=root, video_backend="pyav")
    has_final = FINAL in ds.features
    has_intervention = mapping.intervention in ds.features

    def frames() -> Iterator[tuple[int, dict]]:
        for i in range(len(ds)):
            item = ds[i]
            yield int(item["episode_index"]), item

    def observation(item: dict) -> dict[str, np.ndarray]:
        obs = {name: _to_numpy(item[k]).astype(spec.feature(name).dtype).reshape(spec.feature(name).shape)
               for k, name in states.items()}
        obs.update({name: _image(item[k], source[k], spec.feature(name)) for k, name in cameras.items()})
        return obs

    def action(item: dict) -> np.ndarray:
        a = _to_numpy(item[mapping.action]).astype(np.float32).reshape(-1)
        if to_ee is None:
            return a
        return to_ee(_to_numpy(item[mapping.joint_state]).astype(np.float64).reshape(-1), a)

    def steps() -> Iterator[Step]:
        yield from joint_steps()
        if to_ee is not None:
            log.info("%s: joint targets -> end-effector actions: %s", root, json.dumps(to_ee.report.summary()))
            if warning := to_ee.report.warning():
                log.warning("%s: %s", root, warning)

    def joint_steps() -> Iterator[Step]:
        pending: Step | None = None
        pending_done = (False, False)
        t = 0
        for episode, item in frames():
            if pending is not None and pending.episode != episode:
                yield _end(pending, pending.obs, item_done=pending_done)
                pending, t = None, 0
            if has_final and _flag(item, FINAL, False):
                if pending is None:
                    raise LeRobotImportError(f"{root}: episode {episode} starts with a final-observation frame")
                yield _end(pending, observation(item), item_done=pending_done)
                pending, t = None, 0
                continue
            step = Step(observation(item), action(item),
                        float(_to_numpy(item[mapping.reward]).reshape(-1)[0]) if mapping.reward else 0.0,
                        False, False, _flag(item, mapping.intervention, True) if has_intervention else True,
                        episode, t)
            if pending is not None:
                if pending_done[0]:
                    raise LeRobotImportError(f"{root}: episode {episode} has a done frame before its last frame")
                yield pending
            pending, t = step, t + 1
            pending_done = (_flag(item, mapping.done, False), _flag(item, mapping.truncated, False))
        if pending is not None:
            yield _end(pending, pending.obs, item_done=pending_done)

    return spec, steps()


def _end(step: Step, final_obs: dict[str, np.ndarray], item_done: tuple[bool, bool]) -> Step:
    """The last step of an episode: terminated when marked done (and not a timeout), else truncated."""
    done, truncated = item_done
    step.terminated = done and not truncated
    step.truncated = not step.terminated
    step.final_obs = final_obs
    return step
