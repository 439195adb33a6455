"""Joint-space demonstrations -> end-effector-delta actions: the inverse of the SO arm's ``ee`` pipeline.

An ``ee``-mode actor (:class:`hilrl.hardware.so_arm.SOArm`) turns ``[dx, dy, dz, g]`` into joint targets
with lerobot's ``EEReferenceAndDelta(use_latched_reference=False) -> EEBoundsAndSafety ->
GripperVelocityToJoint(discrete_gripper=True, speed_factor=1, clip_max=100) -> InverseKinematicsEEToJoints``:
the target position is ``FK(q_t)[:3] + ee_step_m * [dx, dy, dz]`` (the *measured* pose, not a latched
one; orientation held) and the gripper target is ``clip(q_t[gripper] + (1 - g) * 100, 0, 100)``, so
g = 2 closes fully, 0 opens fully, 1 holds. A ``lerobot-record`` step holds the measured joints ``q_t``
(``observation.state``) and the leader arm's joint targets ``a_t`` (``action``); its EE action is

* ``[dx, dy, dz] = clip((FK(a_t) - FK(q_t))[:3] / ee_step_m, -1, 1)``, FK by lerobot's own
  ``RobotKinematics`` (placo) on the arm's URDF;
* ``g = 2`` if the gripper target is below the measured gripper by more than ``dead_band`` (closing),
  ``0`` if above by more than ``dead_band`` (opening), else ``1`` (hold).

A step whose motion exceeds ``ee_step_m`` on some axis is clipped per axis, exactly as the actor clamps
an action to its bounds (the stored action is one the actor can execute; the demonstration then moves
more slowly than the leader did). Clipped steps are counted (:class:`EEReport`); a high share means
``ee_step_m`` is too small for the recording's speed, and the report names a step size that fits.
Wrist orientation is not part of the action: leader motions that only turn the gripper are lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

EE_LOW, EE_HIGH = (-1.0, -1.0, -1.0, 0.0), (1.0, 1.0, 1.0, 2.0)  # the SO arm's ee action bounds
GRIPPER_DEAD_BAND = 2.0  # gripper units (lerobot's 0..100): smaller target changes hold the gripper
CLIP_WARN_FRACTION = 0.05
URDF_SOURCE = ("lerobot does not ship it: take Simulation/SO101/so101_new_calib.urdf (with its meshes) from "
               "TheRobotStudio's SO-ARM100 repository")
PLACO_INSTALL = ("pip install -e '.[kinematics]' in the hilrl checkout (its placo pins; "
                 "plain 'lerobot[kinematics]' pulls a placo that needs numpy>=2.3, which lerobot's opencv refuses)")


class KinematicsError(ValueError):
    """The arm's kinematics cannot be loaded as configured; the message says what to install or pass."""


class Kinematics(Protocol):
    """lerobot's ``RobotKinematics`` interface as used here (joint degrees in, 4x4 pose out)."""

    def forward_kinematics(self, joint_pos_deg: np.ndarray) -> np.ndarray: ...


def load_kinematics(urdf: str | Path | None, target_frame: str, joint_names: list[str], purpose: str,
                    alternative: str, urdf_option: str = "urdf") -> Any:
    """lerobot's ``RobotKinematics`` for ``urdf``; a clear :class:`KinematicsError` without URDF or placo.

    ``purpose`` names what needs it (``"action_mode='ee'"``), ``alternative`` what works without it,
    ``urdf_option`` the setting that holds the path. The URDF must have every joint of ``joint_names``
    and the frame ``target_frame``.
    """
    if not urdf or not Path(urdf).is_file():
        raise KinematicsError(f"{purpose} needs the SO-101 URDF ({urdf_option}={str(urdf) if urdf else None!r} is "
                              f"not a file). {URDF_SOURCE}, or {alternative}.")
    try:
        import placo  # noqa: F401  - lerobot's RobotKinematics needs it; say so before lerobot does
        from lerobot.model.kinematics import RobotKinematics
    except ImportError as exc:
        raise KinematicsError(f"{purpose} needs placo: {PLACO_INSTALL} ({exc})") from exc
    try:
        kin = RobotKinematics(str(urdf), target_frame_name=target_frame, joint_names=list(joint_names))
    except (RuntimeError, ValueError) as exc:  # placo: not a URDF, or no such frame
        raise KinematicsError(f"{purpose}: cannot load {urdf} with frame {target_frame!r}: {exc}") from exc
    have = [str(n) for n in kin.robot.joint_names()]
    missing = [n for n in joint_names if n not in have]
    if missing:
        raise KinematicsError(f"{purpose}: the URDF {urdf} has no joint {', '.join(map(repr, missing))}; it has "
                              f"{', '.join(have)}. The joint names come from the dataset's action feature "
                              "(lerobot's motor names without '.pos'): use the URDF of that arm")
    return kin


def _names(feature: dict) -> list[str] | None:
    names = feature.get("names")
    if isinstance(names, dict):  # older lerobot: {"motors": [...]}
        names = next(iter(names.values()), None)
    return [str(n) for n in names] if isinstance(names, list) else None


def dataset_joint_names(features: dict, action_key: str, state_key: str) -> list[str]:
    """The joints of a joint-space LeRobotDataset (``meta/info.json`` features): lerobot's ``<motor>.pos`` names
    of the action without ``.pos``; the measured joints ``state_key`` must be in the same order."""
    problems = [f"missing feature {k!r}" for k in (action_key, state_key) if k not in features]
    if not problems:
        action, state = features[action_key], features[state_key]
        if list(action["shape"]) != list(state["shape"]):
            problems.append(f"{action_key!r} {list(action['shape'])} and {state_key!r} {list(state['shape'])} "
                            "differ in shape")
        elif _names(state) and _names(action) and _names(state) != _names(action):
            problems.append(f"{state_key!r} names {_names(state)} differ from {action_key!r} names {_names(action)}")
    if problems:
        raise ValueError(f"to_ee needs the joint targets ({action_key!r}) and the measured joints ({state_key!r}, "
                         f"--demo-map.joint-state) in one joint order: {'; '.join(problems)}")
    names = [n.removesuffix(".pos") for n in (_names(features[action_key]) or [])]
    if not names:
        raise ValueError(f"to_ee needs the joint names of {action_key!r} (its 'names' in meta/info.json, as "
                         "lerobot-record writes them: shoulder_pan.pos, ...)")
    if "gripper" not in names:
        raise ValueError(f"to_ee needs a 'gripper' joint in {action_key!r}; it has {names}")
    return names


def ee_positions(kinematics: Kinematics, joints: np.ndarray) -> np.ndarray:
    """(T, 3) end-effector positions (metres, base frame) of (T, J) joint vectors (degrees)."""
    joints = np.atleast_2d(np.asarray(joints, dtype=np.float64))
    return np.stack([np.asarray(kinematics.forward_kinematics(q))[:3, 3] for q in joints])


def gripper_commands(measured: np.ndarray, target: np.ndarray, dead_band: float = GRIPPER_DEAD_BAND) -> np.ndarray:
    """The discrete gripper action that moves the gripper from ``measured`` towards ``target``.

    lerobot's gripper position runs 0 (closed) .. 100 (open); the actor sends ``q + (1 - g) * 100``
    (clipped to 0..100), so closing is g = 2, opening g = 0, holding g = 1.
    """
    change = np.asarray(target, dtype=np.float64) - np.asarray(measured, dtype=np.float64)
    return np.where(change < -dead_band, 2.0, np.where(change > dead_band, 0.0, 1.0)).astype(np.float32)


@dataclass(frozen=True)
class EEActions:
    """Converted actions and the unclipped deltas behind them."""

    actions: np.ndarray  # (T, 4) float32 [dx, dy, dz, g]
    raw: np.ndarray  # (T, 3) float64 unclipped (FK(a_t) - FK(q_t)) / ee_step_m

    @property
    def clipped(self) -> np.ndarray:
        """(T,) bool: some axis moved more than one action unit (ee_step_m) and was clipped."""
        return np.any(np.abs(self.raw) > 1.0, axis=1)


def joint_to_ee(joint_pos: np.ndarray, joint_targets: np.ndarray, kinematics: Kinematics, ee_step_m: float,
                gripper_index: int = -1, dead_band: float = GRIPPER_DEAD_BAND) -> EEActions:
    """EE-delta actions of (T, J) measured joints and (T, J) joint targets (degrees, gripper 0..100)."""
    q = np.atleast_2d(np.asarray(joint_pos, dtype=np.float64))
    a = np.atleast_2d(np.asarray(joint_targets, dtype=np.float64))
    if q.shape != a.shape:
        raise ValueError(f"joint positions {q.shape} and joint targets {a.shape} differ in shape")
    if not ee_step_m > 0:
        raise ValueError(f"ee_step_m must be > 0 metres per action unit, got {ee_step_m}")
    raw = (ee_positions(kinematics, a) - ee_positions(kinematics, q)) / ee_step_m
    g = gripper_commands(q[:, gripper_index], a[:, gripper_index], dead_band)
    actions = np.concatenate([np.clip(raw, -1.0, 1.0), g[:, None]], axis=1).astype(np.float32)
    return EEActions(actions, raw)


@dataclass
class EEReport:
    """How many converted steps were clipped, and which ``ee_step_m`` would have fitted them."""

    ee_step_m: float
    steps: int = 0
    clipped: int = 0
    _largest_m: list[float] = field(default_factory=list, repr=False)  # per step: the largest axis motion

    def add(self, converted: EEActions) -> None:
        self.steps += len(converted.raw)
        self.clipped += int(converted.clipped.sum())
        self._largest_m.extend((np.abs(converted.raw).max(axis=1) * self.ee_step_m).tolist())

    def fitting_step_m(self) -> float:
        """The step size (rounded up to the mm) that would leave 99 % of the steps unclipped."""
        if not self._largest_m:
            return self.ee_step_m
        return float(np.ceil(np.percentile(self._largest_m, 99) * 1000.0) / 1000.0)

    def summary(self) -> dict:
        frac = self.clipped / self.steps if self.steps else 0.0
        return {"ee_step_m": self.ee_step_m, "steps": self.steps, "clipped_steps": self.clipped,
                "clipped_fraction": round(frac, 4), "fitting_ee_step_m": self.fitting_step_m()}

    def warning(self) -> str | None:
        """A warning when more than 5 % of the steps were clipped, else None."""
        if not self.steps or self.clipped / self.steps <= CLIP_WARN_FRACTION:
            return None
        return (f"{self.clipped} of {self.steps} converted steps ({100 * self.clipped / self.steps:.1f} %) moved the "
                f"end effector more than ee_step_m={self.ee_step_m} m on some axis and were clipped (the "
                f"demonstrations become slower than the leader arm was). ee_step_m={self.fitting_step_m()} would fit "
                "99 % of them (the ee actor must then use the same step)")


class JointToEE:
    """Step-by-step conversion (an import stream) with its :class:`EEReport`."""

    def __init__(self, kinematics: Kinematics, ee_step_m: float, gripper_index: int = -1,
                 dead_band: float = GRIPPER_DEAD_BAND, report: EEReport | None = None) -> None:
        self.kinematics, self.ee_step_m = kinematics, ee_step_m
        self.gripper_index, self.dead_band = gripper_index, dead_band
        self.report = report if report is not None else EEReport(ee_step_m)

    def __call__(self, joint_pos: np.ndarray, joint_target: np.ndarray) -> np.ndarray:
        out = joint_to_ee(joint_pos, joint_target, self.kinematics, self.ee_step_m, self.gripper_index,
                          self.dead_band)
        self.report.add(out)
        return out.actions[0]
