"""Real-hardware adapters, driven through lerobot's own classes with only the absent devices faked.

Gamepad: lerobot's GamepadTeleop/GamepadController read a fake pygame joystick device and real pygame
events (SDL dummy driver). Arm: lerobot's SO101Follower/SO100Follower for the spec and refusals (no
serial port here), a duck-typed robot for step/hold, lerobot's kinematic processor steps with a stub
kinematic model for the EE mapping. Cameras: lerobot's OpenCVCamera reading a small video file.
What needs real hardware (a live Feetech bus, a camera device, pynput's X listener) is not run here.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from fakes import FakeFollower, FakeGamepad, FakeKeys, StubKinematics, fake_gamepad

from hilrl.hardware import ports
from hilrl.hardware.cameras import Camera, CameraNotFoundError, CameraSpec, crop_resize
from hilrl.hardware.gamepad import ESTOP_BUTTON, GO_BUTTON, TAKEOVER_BUTTON, GamepadInput, GamepadNotFoundError
from hilrl.hardware.human import HumanEvents
from hilrl.hardware.keyboard import KeyboardInput
from hilrl.hardware.so_arm import ArmConfig, ArmError, ArmNotCalibratedError, ArmNotFoundError, SOArm

OBS: dict[str, np.ndarray] = {}
Y, A, X, LT, RT = 3, 1, 0, 6, 7


@pytest.fixture
def pad():
    with fake_gamepad() as fake:
        gp = GamepadInput()
        try:
            yield fake, gp
        finally:
            gp.close()


# ----------------------------------------------------------------------------------------- gamepad
def test_no_gamepad_names_device_and_what_to_check():
    with fake_gamepad(count=0), pytest.raises(GamepadNotFoundError) as err:
        GamepadInput()
    msg = str(err.value)
    assert "no gamepad" in msg and "/dev/input/js" in msg and "input' group" in msg


def test_takeover_exactly_while_rb_held(pad):
    fake, gp = pad
    assert gp.poll(OBS) == HumanEvents()
    fake.press(TAKEOVER_BUTTON)
    assert gp.poll(OBS).takeover
    fake.move(0, 0.5)  # other input while held keeps it
    assert gp.poll(OBS).takeover and gp.poll(OBS).takeover
    fake.release(TAKEOVER_BUTTON)
    assert not gp.poll(OBS).takeover
    fake.press(4)  # LB: not the takeover
    assert not gp.poll(OBS).takeover


@pytest.mark.parametrize(("button", "end"), [(Y, "success"), (A, "failure"), (X, "rerecord")])
def test_episode_end_buttons_once_even_for_a_short_tap(pad, button, end):
    fake, gp = pad
    fake.tap(button)  # pressed and released between two ticks: lerobot alone would lose it
    ev = gp.poll(OBS)
    assert ev.end == end and not ev.takeover and not ev.estop
    assert gp.poll(OBS).end is None  # reported once


def test_held_verdict_and_reset_drops_stale_presses(pad):
    fake, gp = pad
    fake.press(Y)
    assert gp.poll(OBS).end == "success"
    fake.release(Y)
    fake.tap(A)  # pressed between episodes
    gp.reset(demonstrating=True)
    assert gp.demonstrating and gp.poll(OBS).end is None


def test_estop_button_and_unplug_latch(pad):
    fake, gp = pad
    fake.tap(ESTOP_BUTTON)
    assert gp.poll(OBS).estop and gp.poll(OBS).estop
    gp.reset()
    assert gp.poll(OBS).estop  # an e-stop is never cleared by a new episode


def test_unplugging_the_pad_is_an_estop(pad):
    fake, gp = pad
    fake.unplug()
    assert gp.poll(OBS).estop


def test_axes_and_gripper_to_action(pad):
    fake, gp = pad
    np.testing.assert_array_equal(gp.action(OBS), [0, 0, 0, 1])  # nothing pressed: hold the gripper
    fake.move(1, -1.0)  # left stick forward -> +x
    fake.move(0, 0.5)  # left stick right -> -y
    fake.move(3, 1.0)  # right stick back -> down
    fake.press(LT)  # lerobot: close (its 0) -> ours 2
    np.testing.assert_allclose(gp.action(OBS), [1.0, -0.5, -1.0, 2.0])
    fake.release(LT)
    fake.press(RT)  # lerobot: open (its 2) -> ours 0
    fake.move(0, 0.05)  # inside lerobot's 0.1 deadzone
    a = gp.action(OBS)
    np.testing.assert_allclose(a, [1.0, 0.0, -1.0, 0.0])
    assert a.dtype == np.float32
    fake.press(LT)  # both: lerobot says stay
    assert gp.action(OBS)[3] == 1.0


# ----------------------------------------------------------------------------------------- keyboard
def test_keyboard_map():
    kb = KeyboardInput(listen=False)
    keys = FakeKeys(kb)
    assert kb.poll(OBS) == HumanEvents()
    keys.press(SimpleNamespace(name="space", char=None))  # pynput Key.space
    keys.press(SimpleNamespace(name="up", char=None))
    keys.press("shift_r")
    keys.press("ctrl_l")
    assert kb.poll(OBS).takeover
    np.testing.assert_array_equal(kb.action(OBS), [1, 0, 1, 2])
    keys.release("ctrl_l")
    keys.press("ctrl_r")
    keys.press("left")
    np.testing.assert_array_equal(kb.action(OBS), [1, 1, 1, 0])
    keys.release("space")
    assert not kb.poll(OBS).takeover
    for key, end in [(SimpleNamespace(char="S"), "success"), ("q", "failure"), ("r", "rerecord"),
                     ("enter", "success"), ("backspace", "failure")]:
        keys.tap(key)
        assert kb.poll(OBS).end == end and kb.poll(OBS).end is None
    keys.tap("s")
    kb.reset()
    assert kb.poll(OBS).end is None
    keys.tap("esc")
    assert kb.poll(OBS).estop and kb.poll(OBS).estop
    kb.close()


def test_keyboard_listener_refuses_without_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    with pytest.raises(RuntimeError, match="DISPLAY is not set"):
        KeyboardInput()


# ----------------------------------------------------------------------------------------- arm
def write_calibration(directory: Path, robot_id: str = "follower") -> None:
    motors = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    cal = {m: {"id": i + 1, "drive_mode": 0, "homing_offset": 0, "range_min": 1000, "range_max": 3000}
           for i, m in enumerate(motors)}
    (directory / f"{robot_id}.json").write_text(json.dumps(cal))


@pytest.mark.parametrize("model", ["so101", "so100"])
def test_spec_from_lerobot_features(tmp_path, model):
    cams = [CameraSpec("front", 0), CameraSpec("wrist", 1)]
    arm = SOArm(ArmConfig(port="/dev/ttyNOPE", model=model, calibration_dir=tmp_path, cameras=cams))
    assert type(arm.robot).__module__.startswith("lerobot.robots.so_follower")
    assert arm.motor_names == ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
    spec = arm.spec
    assert [f.name for f in spec.observation] == ["joint_pos", "front", "wrist"]
    assert spec.feature("joint_pos").shape == (6,) and spec.feature("front").shape == (128, 128, 3)
    assert spec.action.shape == (6,) and spec.action.low[-1] == 0.0 and spec.action.high[0] == 180.0
    ee = SOArm(ArmConfig(port="/dev/ttyNOPE", model=model, calibration_dir=tmp_path, action_mode="ee")).spec
    assert ee.action.low == (-1, -1, -1, 0) and ee.action.high == (1, 1, 1, 2)


def test_uncalibrated_arm_is_refused_with_the_lerobot_command(tmp_path):
    cfg = ArmConfig(port="/dev/ttyNOPE", robot_id="lab_arm", calibration_dir=tmp_path)
    with pytest.raises(ArmNotCalibratedError) as err:
        SOArm(cfg).connect()
    assert ("lerobot-calibrate --robot.type=so101_follower --robot.port=/dev/ttyNOPE --robot.id=lab_arm "
            f"--robot.calibration_dir={tmp_path}") in str(err.value)
    assert "lerobot-calibrate --robot.type=so100_follower" in ArmConfig(port="p", model="so100").calibrate_command()


def test_absent_port_names_device_port_and_checks(tmp_path, monkeypatch):
    write_calibration(tmp_path)
    monkeypatch.setattr(ports, "list_serial_ports", lambda: [ports.SerialPort("/dev/ttyUSB7", "USB Serial", 0x1A86,
                                                                              0x55D3)])
    with pytest.raises(ArmNotFoundError) as err:
        SOArm(ArmConfig(port="/dev/ttyNOPE", calibration_dir=tmp_path)).connect()
    msg = str(err.value)
    assert "so101 follower arm" in msg and "/dev/ttyNOPE does not exist" in msg and "/dev/ttyUSB7" in msg
    assert "power supply" in msg and "dialout" in msg and "lerobot-find-port" in msg


def test_port_that_exists_but_no_motor_answers(tmp_path):
    write_calibration(tmp_path)
    dev_null = "/dev/null"  # exists, is not a serial port: lerobot's bus connect fails
    with pytest.raises(ArmNotFoundError, match="no answer on /dev/null"):
        SOArm(ArmConfig(port=dev_null, calibration_dir=tmp_path)).connect()


def test_ee_without_urdf_is_refused_and_says_what_is_missing(tmp_path):
    write_calibration(tmp_path)
    with pytest.raises(ArmError, match="URDF.*SO-ARM100.*action_mode='joint'"):
        SOArm(ArmConfig(port="/dev/ttyNOPE", calibration_dir=tmp_path, action_mode="ee")).connect()


def test_joint_mode_step_and_hold(monkeypatch):
    monkeypatch.setattr("hilrl.hardware.so_arm.port_exists", lambda port: True)
    robot = FakeFollower()
    with SOArm(ArmConfig(port="/dev/ttyACM0", max_steps=2), robot=robot) as arm:
        obs = arm.reset()
        np.testing.assert_array_equal(obs["joint_pos"], [0, 10, 20, 30, 40, 50])
        hold = arm.hold_action()
        arm.step(hold)
        assert robot.sent[-1] == {k: 10.0 * i for i, k in enumerate(arm.joint_keys)}  # hold = stay put
        target = np.array([5, 200, -300, 0, 0, 150], dtype=np.float32)
        obs, reward, term, trunc, _ = arm.step(target)
        assert list(robot.sent[-1].values()) == [5, 180, -180, 0, 0, 100]  # clipped to the spec bounds
        assert reward == 0.0 and not term and trunc
    assert not robot.is_connected


@pytest.mark.parametrize("step_m", [0.01, 0.02])
def test_ee_mode_through_lerobots_kinematic_steps(monkeypatch, step_m):
    monkeypatch.setattr("hilrl.hardware.so_arm.port_exists", lambda port: True)
    robot = FakeFollower()
    robot.q = {k: v for k, v in zip(robot.observation_features, [20.0, 0.0, 10.0, 0.0, 0.0, 50.0], strict=True)}
    cfg = ArmConfig(port="/dev/ttyACM0", action_mode="ee", ee_step_m=step_m)  # the actor's --ee-step-m
    with SOArm(cfg, robot=robot, kinematics=StubKinematics()) as arm:
        arm.reset()
        np.testing.assert_array_equal(arm.hold_action(), [0, 0, 0, 1])
        arm.step(np.array([1.0, -0.5, 0.0, 2.0], dtype=np.float32))  # +1 step x, -0.5 step y, close
        sent = robot.sent[-1]
        cm = step_m * 100  # the stub's joints move 1 degree per cm
        np.testing.assert_allclose([sent["shoulder_pan.pos"], sent["shoulder_lift.pos"], sent["elbow_flex.pos"]],
                                   [20.0 + cm, -0.5 * cm, 10.0], atol=1e-6)
        assert sent["gripper.pos"] == 0.0  # 2 closes: lerobot's gripper position goes to 0
        arm.step(np.array([0.0, 0.0, 0.0, 0.0], dtype=np.float32))
        assert robot.sent[-1]["gripper.pos"] == 100.0  # 0 opens


def test_ee_gripper_states_like_the_gamepad(monkeypatch):
    """gripper_mode="states": a policy's 0.9 holds (it would open by 10 % per step), 1.6 closes fully."""
    monkeypatch.setattr("hilrl.hardware.so_arm.port_exists", lambda port: True)
    for mode, after in (("continuous", 60.0), ("states", 50.0)):  # the gripper starts at 50 (0 closed, 100 open)
        robot = FakeFollower()
        with SOArm(ArmConfig(port="/dev/ttyACM0", action_mode="ee", gripper_mode=mode), robot=robot,
                   kinematics=StubKinematics()) as arm:
            arm.reset()
            arm.step(np.array([0.0, 0.0, 0.0, 0.9], dtype=np.float32))
            assert robot.sent[-1]["gripper.pos"] == pytest.approx(after), mode
    cfg = ArmConfig(port="/dev/ttyACM0", action_mode="ee", gripper_mode="states")
    with SOArm(cfg, robot=robot, kinematics=StubKinematics()) as arm:
        arm.reset()
        arm.step(np.array([0.0, 0.0, 0.0, 1.6], dtype=np.float32))
        assert robot.sent[-1]["gripper.pos"] == 0.0


# ----------------------------------------------------------------------------------------- ports, cameras
def test_port_listing_with_faked_list_ports(monkeypatch):
    from serial.tools import list_ports

    fake = [SimpleNamespace(device="/dev/ttyS0", description="n/a", vid=None, pid=None, serial_number=None),
            SimpleNamespace(device="/dev/ttyACM0", description="USB Single Serial", vid=0x1A86, pid=0x55D3,
                            serial_number="5A46")]
    monkeypatch.setattr(list_ports, "comports", lambda: fake)
    found = ports.list_serial_ports()
    assert [p.device for p in found] == ["/dev/ttyACM0", "/dev/ttyS0"] and found[0].likely_arm
    assert "/dev/ttyACM0 (USB Single Serial [1a86:55d3] serial 5A46)" in ports.describe_ports()
    assert ports.port_exists("/dev/ttyACM0") and not ports.port_exists("/dev/ttyNOPE")
    monkeypatch.setattr(list_ports, "comports", lambda: [])
    assert ports.describe_ports() == "no serial ports found at all"


def test_crop_resize():
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    frame[100:200, 300:400] = 255
    out = crop_resize(frame, (100, 300, 100, 100))
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8 and out.min() == 255
    assert crop_resize(frame, None).mean() == pytest.approx(255 * (100 * 100) / (480 * 640), rel=0.05)
    with pytest.raises(ValueError, match="outside"):
        crop_resize(frame, (400, 0, 100, 100))


def test_camera_via_lerobot_opencv_on_a_video_file(tmp_path):
    path = tmp_path / "cam.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (160, 120))
    for _ in range(3000):  # lerobot's read thread drains a file as fast as it decodes
        frame = np.zeros((120, 160, 3), dtype=np.uint8)
        frame[:, 80:] = (0, 0, 255)  # BGR red on the right half
        writer.write(frame)
    writer.release()
    cam = Camera(CameraSpec("front", str(path), width=None, height=None, fps=None, crop=(0, 80, 120, 80),
                                warmup_s=0))
    try:
        img = cam.read()
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert img[..., 0].mean() > 200 and img[..., 2].mean() < 50  # RGB: red channel first
    finally:
        cam.close()


def test_missing_camera_names_index_and_path(tmp_path):
    with pytest.raises(CameraNotFoundError, match="wrist.*does not exist.*lerobot-find-cameras"):
        Camera(CameraSpec("wrist", str(tmp_path / "video9")))
    with pytest.raises(CameraNotFoundError, match="'front'.*index/path 97"):
        Camera(CameraSpec("front", 97))


def test_fake_gamepad_is_what_lerobot_reads():
    with fake_gamepad(FakeGamepad(name="Pad X")) as fake:
        gp = GamepadInput()
        try:
            assert gp.name == "Pad X" and fake.initialised
            from lerobot.teleoperators.gamepad.gamepad_utils import GamepadController

            assert isinstance(gp.teleop.gamepad, GamepadController)
        finally:
            gp.close()


def test_joint_limits_come_from_lerobots_calibration_file(tmp_path):
    write_calibration(tmp_path)  # every motor 1000..3000 raw ticks
    arm = SOArm(ArmConfig(port="/dev/ttyNOPE", calibration_dir=tmp_path, action_mode="joint"))
    assert type(arm.robot).__module__.startswith("lerobot.robots.so_follower")  # lerobot's bus tables
    low, high = arm.joint_limits()
    np.testing.assert_allclose(high[:5], 1000 * 360 / 4095, atol=1e-3)  # (range / 2) in lerobot's degrees
    np.testing.assert_allclose(low[:5], -1000 * 360 / 4095, atol=1e-3)
    assert (low[5], high[5]) == (0.0, 100.0)  # the gripper is 0..100
    assert SOArm(ArmConfig(port="/dev/ttyNOPE", calibration_dir=tmp_path, action_mode="ee")).joint_limits() is None


def test_go_button_lb_and_key_g_once_per_press(pad):
    fake, gp = pad
    assert not gp.go()
    fake.tap(GO_BUTTON)  # LB: lerobot does nothing with it
    ev = gp.poll(OBS)
    assert ev == HumanEvents() and gp.go() and not gp.go()
    kb = KeyboardInput(listen=False)
    keys = FakeKeys(kb)
    assert not kb.go()
    keys.tap("g")
    assert kb.go() and not kb.go() and kb.poll(OBS) == HumanEvents()
