"""SO-101 / SO-100 follower arms through lerobot's ``SO101Follower`` / ``SO100Follower``.

:class:`SOArm` is an `Arm` (:mod:`hilrl.hardware.arm`) like :class:`hilrl.hardware.sim.SimPickCube`, so the
actor drives both alike. Its spec is derived from lerobot's
``observation_features`` / ``action_features`` (the ``*.pos`` joints, in lerobot's motor order:
shoulder_pan, shoulder_lift, elbow_flex, wrist_flex, wrist_roll, gripper; degrees, gripper 0..100):

* ``joint_pos`` float32 (6,): measured joint positions; one uint8 (128, 128, 3) image per camera,
  named after the camera (see :mod:`hilrl.hardware.cameras`).
* action, ``action_mode="joint"``: float32 (6,) absolute joint targets in lerobot's units, bounds
  +-180 degrees (gripper 0..100); lerobot's ``max_relative_target`` caps each step.
* action, ``action_mode="ee"``: float32 (4,) ``[dx, dy, dz, g]`` in ``[-1, 1]^3 x [0, 2]`` like the
  sim (``ee_step_m`` metres per unit; g: 2 closes, 0 opens, 1 holds), turned into joint targets by
  lerobot's own kinematic processor steps (``EEReferenceAndDelta`` -> ``EEBoundsAndSafety`` ->
  ``GripperVelocityToJoint`` -> ``InverseKinematicsEEToJoints``). Those need ``placo`` (hilrl's
  ``kinematics`` extra: ``pip install -e '.[kinematics]'``) and the SO-101 URDF, which lerobot does not
  ship and neither do we (``so101_new_calib.urdf`` from TheRobotStudio's SO-ARM100 repository); without
  them ``ee`` is refused with that message and ``joint`` keeps working.

Refusals (never an interactive calibration): no calibration file for ``robot_id`` -> the exact
``lerobot-calibrate`` command; port absent or silent -> the port tried, the ports that exist and what
to check; motors whose calibration differs from the file -> the same command.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hilrl.buffers.spec import Feature, Spec
from hilrl.hardware.arm import GRIPPER_HOLD_BAND, GRIPPER_MODE, Arm, EndEffector, executed_gripper
from hilrl.hardware.cameras import IMAGE_SIZE, Camera, CameraSpec
from hilrl.hardware.ports import describe_ports, port_exists

EE_LOW, EE_HIGH = (-1.0, -1.0, -1.0, 0.0), (1.0, 1.0, 1.0, 2.0)
JOINT_LIMIT_DEG = 180.0
GRIPPER_RANGE = (0.0, 100.0)
MODELS = {"so101": "so101_follower", "so100": "so100_follower"}


class ArmError(RuntimeError):
    """The arm cannot be used as configured; the message says what to do."""


class ArmNotFoundError(ArmError, ConnectionError):
    """Nothing answers on the configured serial port."""


class ArmNotCalibratedError(ArmError):
    """No (or a mismatching) lerobot calibration for this arm."""


@dataclass
class ArmConfig:
    """One follower arm; names mirror lerobot's ``--robot.*`` options."""

    port: str  # the bus adapter's serial port, e.g. /dev/ttyACM0 (find it with `lerobot-find-port`)
    model: Literal["so101", "so100"] = "so101"
    robot_id: str = "follower"  # lerobot's --robot.id: names the calibration file <id>.json
    calibration_dir: Path | None = None  # default: lerobot's ~/.cache/huggingface/lerobot/calibration/...
    action_mode: Literal["joint", "ee"] = "joint"
    cameras: list[CameraSpec] = field(default_factory=list)
    max_relative_target: float | None = 10.0  # degrees per step per joint (lerobot's safety cap)
    max_steps: int = 200  # episode length before truncation
    urdf_path: str | None = None  # SO-101 URDF, only for action_mode="ee"
    target_frame: str = "gripper_frame_link"
    ee_step_m: float = 0.01  # metres per action unit in "ee" mode
    ee_bounds: tuple[tuple[float, float, float], tuple[float, float, float]] = ((0.1, -0.3, 0.01), (0.4, 0.3, 0.35))
    rest_pose: tuple[float, ...] | None = None  # joint positions (degrees, gripper 0..100) to reset to
    rest_speed_deg_s: float = 30.0  # joint speed while moving to the rest pose
    fps: int = 30  # rate of the rest-pose move's intermediate targets
    gripper_mode: str = GRIPPER_MODE  # ee mode: how the gripper command executes (hardware.arm.executed_gripper)
    gripper_hold_band: float = GRIPPER_HOLD_BAND

    @property
    def robot_type(self) -> str:
        return MODELS[self.model]

    def calibrate_command(self) -> str:
        """The lerobot command that calibrates this arm (run it yourself, next to the arm)."""
        cmd = f"lerobot-calibrate --robot.type={self.robot_type} --robot.port={self.port} --robot.id={self.robot_id}"
        return cmd + (f" --robot.calibration_dir={self.calibration_dir}" if self.calibration_dir else "")


def make_robot(cfg: ArmConfig) -> Any:
    """lerobot's follower for ``cfg`` (no serial I/O happens here)."""
    from lerobot.robots.so_follower import SO100Follower, SO100FollowerConfig, SO101Follower, SO101FollowerConfig

    robot_cls, config_cls = (SO101Follower, SO101FollowerConfig) if cfg.model == "so101" else (
        SO100Follower, SO100FollowerConfig)
    config = config_cls(port=cfg.port, id=cfg.robot_id, calibration_dir=cfg.calibration_dir,
                        max_relative_target=cfg.max_relative_target, use_degrees=True)
    try:
        return robot_cls(config)
    except ModuleNotFoundError as exc:
        raise ArmError(f"{cfg.model}: lerobot's Feetech motor bus needs {exc.name!r}: "
                       "pip install 'lerobot[feetech]' (feetech-servo-sdk)") from exc


def spec_from_features(observation_features: dict, action_features: dict, cameras: list[CameraSpec],
                       action_mode: str) -> Spec:
    """Our :class:`Spec` from lerobot's feature dicts (floats = joints, in lerobot's order)."""
    joints = [k for k, v in observation_features.items() if v is float]
    state = Feature("joint_pos", "float32", (len(joints),))
    images = tuple(Feature(c.name, "uint8", (IMAGE_SIZE, IMAGE_SIZE, 3)) for c in cameras)
    if action_mode == "ee":
        action = Feature("action", "float32", (4,), EE_LOW, EE_HIGH)
    elif action_mode == "joint":
        names = list(action_features)
        low = [GRIPPER_RANGE[0] if n == "gripper.pos" else -JOINT_LIMIT_DEG for n in names]
        high = [GRIPPER_RANGE[1] if n == "gripper.pos" else JOINT_LIMIT_DEG for n in names]
        action = Feature("action", "float32", (len(names),), low, high)
    else:
        raise ValueError(f"action_mode must be 'joint' or 'ee', got {action_mode!r}")
    return Spec(observation=(state, *images), action=action)


class SOArm(Arm):
    """A connected SO-10x follower (+ cameras) behind the sim's interface."""

    def __init__(self, cfg: ArmConfig, robot: Any = None, kinematics: Any = None) -> None:
        self.cfg = cfg
        self.robot = robot if robot is not None else make_robot(cfg)
        self.joint_keys = [k for k, v in self.robot.observation_features.items() if v is float]
        self.motor_names = [k.removesuffix(".pos") for k in self.joint_keys]
        self.spec = spec_from_features(self.robot.observation_features, self.robot.action_features,
                                       cfg.cameras, cfg.action_mode)
        self._kinematics = kinematics
        self._ee: Any = None
        self.cameras: list[Camera] = []
        self._joints: dict[str, float] = {}
        self._steps = 0
        self.needs_go = True  # the actor waits for the operator's go before every episode
        self.ee_actions = cfg.action_mode == "ee"
        if cfg.rest_pose is not None and len(cfg.rest_pose) != len(self.joint_keys):
            raise ArmError(f"rest pose needs {len(self.joint_keys)} joint positions ({', '.join(self.motor_names)}), "
                           f"got {len(cfg.rest_pose)}")

    # ----------------------------------------------------------------------------- connection
    def connect(self) -> SOArm:
        """Refuse clearly (see the module doc), else connect lerobot's robot, then the cameras."""
        cfg = self.cfg
        if not self.robot.calibration:
            raise ArmNotCalibratedError(
                f"{cfg.model} arm {cfg.robot_id!r} has no calibration file ({self.robot.calibration_fpath}). "
                f"Calibrate it once, next to the arm: {cfg.calibrate_command()}")
        if cfg.action_mode == "ee":
            self._ee = self._ee_pipeline()
        if not port_exists(cfg.port):
            raise ArmNotFoundError(self._not_found(f"serial port {cfg.port} does not exist"))
        try:
            self.robot.connect(calibrate=False)  # never lerobot's interactive calibration
        except (ConnectionError, OSError) as exc:
            raise ArmNotFoundError(self._not_found(f"no answer on {cfg.port}: {str(exc).strip()}")) from exc
        if not self.robot.is_calibrated:
            self.robot.disconnect()
            raise ArmNotCalibratedError(
                f"{cfg.model} arm {cfg.robot_id!r} on {cfg.port}: the motors' calibration differs from "
                f"{self.robot.calibration_fpath} (another arm with this id, or motors replaced). "
                f"Recalibrate: {cfg.calibrate_command()}")
        try:
            self.cameras = [Camera(c) for c in cfg.cameras]
        except Exception:
            self.close()
            raise
        return self

    def _not_found(self, what: str) -> str:
        return (f"{self.cfg.model} follower arm ({self.cfg.robot_type}, id {self.cfg.robot_id!r}): {what}. "
                f"{describe_ports()}. Check: the arm's power supply is plugged in and on (the motors need it, "
                "USB alone is not enough), the USB cable to the bus board, that your user may open the port "
                "(Linux: `sudo usermod -aG dialout $USER`, then log in again), and which port the arm is on "
                "(`lerobot-find-port`).")

    def _ee_pipeline(self) -> Any:
        """lerobot's EE-delta -> joint processor steps, as one pipeline."""
        from lerobot.processor import RobotProcessorPipeline
        from lerobot.processor.converters import robot_action_observation_to_transition, transition_to_robot_action
        from lerobot.processor.delta_action_processor import MapDeltaActionToRobotActionStep
        from lerobot.robots.so_follower.robot_kinematic_processor import (
            EEBoundsAndSafety,
            EEReferenceAndDelta,
            GripperVelocityToJoint,
            InverseKinematicsEEToJoints,
        )

        kin = self._kinematics = self._kinematics or self._load_kinematics()
        step = self.cfg.ee_step_m
        steps = [
            MapDeltaActionToRobotActionStep(),
            EEReferenceAndDelta(kinematics=kin, end_effector_step_sizes={"x": step, "y": step, "z": step},
                                motor_names=self.motor_names, use_latched_reference=False),
            EEBoundsAndSafety(end_effector_bounds={"min": np.array(self.cfg.ee_bounds[0]),
                                                   "max": np.array(self.cfg.ee_bounds[1])}),
            GripperVelocityToJoint(speed_factor=1.0, clip_max=GRIPPER_RANGE[1], discrete_gripper=True),
            InverseKinematicsEEToJoints(kinematics=kin, motor_names=self.motor_names),
        ]
        return RobotProcessorPipeline(steps=steps, to_transition=robot_action_observation_to_transition,
                                      to_output=transition_to_robot_action)

    def _load_kinematics(self) -> Any:
        from hilrl.buffers.joint_to_ee import KinematicsError, load_kinematics  # shared with the dataset import

        try:
            return load_kinematics(self.cfg.urdf_path, self.cfg.target_frame, self.motor_names, "action_mode='ee'",
                                   "use action_mode='joint'", urdf_option="urdf_path")
        except KinematicsError as exc:
            raise ArmError(str(exc)) from exc

    # ----------------------------------------------------------------------------- limits
    def joint_limits(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Joint mode: the limits of every joint target, from lerobot's calibration (None in ee mode).

        lerobot (``use_degrees=True``) maps a joint's raw range ``[range_min, range_max]`` to degrees around
        its middle (``(raw - mid) * 360 / (resolution - 1)``) and does not clip degree targets itself;
        the gripper is 0..100. A joint without a calibration entry keeps the spec's +-180 degrees.
        """
        if self.ee_actions:
            return None
        return self._calibrated_limits()

    def _calibrated_limits(self) -> tuple[np.ndarray, np.ndarray]:
        low = np.array([GRIPPER_RANGE[0] if m == "gripper" else -JOINT_LIMIT_DEG for m in self.motor_names])
        high = np.array([GRIPPER_RANGE[1] if m == "gripper" else JOINT_LIMIT_DEG for m in self.motor_names])
        calibration = self.robot.calibration if isinstance(self.robot.calibration, dict) else {}
        bus = getattr(self.robot, "bus", None)
        for i, motor in enumerate(self.motor_names):
            cal = calibration.get(motor)
            if motor == "gripper" or not hasattr(cal, "range_min"):
                continue
            resolution = 4096
            if bus is not None and motor in getattr(bus, "motors", {}):
                resolution = bus.model_resolution_table.get(bus.motors[motor].model, resolution)
            half = (cal.range_max - cal.range_min) / 2 * 360 / (resolution - 1)
            low[i], high[i] = max(-half, -JOINT_LIMIT_DEG), min(half, JOINT_LIMIT_DEG)
        return low.astype(np.float32), high.astype(np.float32)

    def end_effector(self) -> EndEffector | None:
        """Ee mode: the measured end effector (forward kinematics) that lerobot adds each delta to."""
        return EndEffector(self.ee_position, self.cfg.ee_step_m) if self.ee_actions else None

    def ee_position(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """End-effector xyz (metres, base frame) by lerobot's forward kinematics (ee mode only)."""
        kin = self._kinematics
        if kin is None:
            raise ArmError("the end-effector position needs action_mode='ee' (kinematics from the URDF)")
        return np.asarray(kin.forward_kinematics(np.asarray(obs["joint_pos"], dtype=np.float64))[:3, 3])

    # ----------------------------------------------------------------------------- episode
    def move_to_rest(self, sleep=None) -> int:
        """Move to ``rest_pose`` in straight joint-space steps of at most ``rest_speed_deg_s / fps``; returns
        how many targets were sent. lerobot's ``max_relative_target`` caps every step as well."""
        sleep = sleep or time.sleep
        target = np.clip(np.asarray(self.cfg.rest_pose, dtype=np.float64), *self._calibrated_limits())
        start = self.observe()["joint_pos"].astype(np.float64)
        per_step = self.cfg.rest_speed_deg_s / self.cfg.fps
        n = int(np.ceil(np.max(np.abs(target - start)) / per_step)) if per_step > 0 else 0
        for i in range(1, n + 1):
            q = start + (target - start) * (i / n)
            self.robot.send_action({k: float(v) for k, v in zip(self.joint_keys, q, strict=True)})
            sleep(1.0 / self.cfg.fps)
        return n

    def observe(self) -> dict[str, np.ndarray]:
        """Joint positions (and the camera images) now."""
        raw = self.robot.get_observation()
        self._joints = {k: float(raw[k]) for k in self.joint_keys}
        obs = {"joint_pos": np.array([self._joints[k] for k in self.joint_keys], dtype=np.float32)}
        for cam in self.cameras:
            obs[cam.spec.name] = cam.read()
        self.spec.check_observation(obs)
        return obs

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Start an episode: move to the rest pose if one is configured (else stay where the arm is); the
        human resets the scene and says go (the actor waits for it, see ``needs_go``); ``seed`` is unused."""
        self._steps = 0
        if self.cfg.rest_pose is not None:
            self.move_to_rest()
        if self._ee is not None:
            self._ee.reset()
        return self.observe()

    def hold_action(self) -> np.ndarray:
        """Keep still: the current joint positions (joint mode) or zero motion, gripper held (ee mode)."""
        if self.cfg.action_mode == "ee":
            return np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32)
        if not self._joints:
            self.observe()
        return np.array([self._joints[k] for k in self.joint_keys], dtype=np.float32)

    def to_robot_action(self, action: np.ndarray) -> dict[str, float]:
        """Our action vector -> lerobot's ``{"<motor>.pos": value}`` joint targets."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), self.spec.action.low, self.spec.action.high)
        if self.cfg.action_mode == "joint":
            return {k: float(v) for k, v in zip(self.joint_keys, a, strict=True)}
        g = executed_gripper(float(a[3]), self.cfg.gripper_mode, self.cfg.gripper_hold_band)
        delta = {"delta_x": a[0], "delta_y": a[1], "delta_z": a[2], "gripper": 2.0 - g}  # lerobot: 0 closes
        joints = {k: self._joints[k] for k in self.joint_keys}
        out = self._ee((delta, joints))
        return {k: float(out[k]) for k in self.joint_keys}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        """Send one action; reward 0 (the human's verdict decides), truncated after ``max_steps``."""
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        self.spec.check_action(action)
        if not self._joints:
            self.observe()
        sent = self.robot.send_action(self.to_robot_action(action))
        obs = self.observe()
        self._steps += 1
        return obs, 0.0, False, self._steps >= self.cfg.max_steps, {"sent": sent}

    def close(self) -> None:
        """Cameras off; lerobot disables the torque on disconnect (the arm goes limp: support it)."""
        for cam in self.cameras:
            cam.close()
        self.cameras = []
        if self.robot.is_connected:
            self.robot.disconnect()

    def __enter__(self) -> SOArm:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
