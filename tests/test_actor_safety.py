"""The safety clamp on the real sim and on SOArm over a fake follower: workspace box, max change per
step, joint limits from lerobot's calibration; the learner watch; schedule parsing."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from fakes import FakeFollower

from hilrl.actor.human import Schedule, parse_schedule
from hilrl.actor.safety import LearnerWatch, Safety, SafetyLimits, limits_for, parse_workspace
from hilrl.buffers.spec import Feature, Spec
from hilrl.hardware.sim import TCP, SimPickCube
from hilrl.hardware.so_arm import ArmConfig, SOArm

EE_SPEC = Spec(observation=(Feature("agent_pos", "float32", (18,)),),
               action=Feature("action", "float32", (4,), (-1, -1, -1, 0), (1, 1, 1, 2)))
HOLD = np.array([0, 0, 0, 1], dtype=np.float32)


@pytest.fixture(scope="module")
def sim():
    env = SimPickCube(seed=1)
    yield env
    env.close()


def push(env, safety: Safety, action, steps: int, seed: int = 5) -> np.ndarray:
    """Reset, then ask for `action` every step; the pinch point's path relative to the start."""
    obs = env.reset(seed=seed)
    start = obs["agent_pos"][TCP].copy()
    safety.reset(HOLD)
    path = []
    for _ in range(steps):
        obs, *_ = env.step(safety.clamp(np.asarray(action, dtype=np.float32), obs))
        path.append(obs["agent_pos"][TCP] - start)
    return np.array(path)


def test_workspace_box_keeps_the_sim_gripper_inside(sim):
    obs = sim.reset(seed=5)
    x0, _, z0 = obs["agent_pos"][TCP]
    box = (0.2, -0.3, 0.0, float(x0) + 0.04, 0.3, float(z0) + 0.03)
    free = push(sim, Safety(sim.spec, limits_for(sim, 0.0, ())), [1, 0, 1, 1], 30)
    assert free[:, 2].max() > 0.2 and free[:, 0].max() > 0.08  # without the box it leaves it by far
    safety = Safety(sim.spec, limits_for(sim, 0.0, box))
    boxed = push(sim, safety, [1, 0, 1, 1], 30)
    assert boxed[:, 2].max() < 0.03 + 0.003 and boxed[:, 0].max() < 0.04 + 0.003
    assert boxed[-1, 2] > 0.025  # it did go up to the lid, not stop early
    assert safety.counts["workspace"] >= 25 and safety.counts["bounds"] == 0
    back = push(sim, safety, [0, 0, -1, 1], 3)  # moving back into (and within) the box is never clamped
    before = safety.counts["workspace"]
    assert back[-1, 2] < -0.03 and safety.counts["workspace"] == before


def test_workspace_allows_moving_back_in_and_never_further_out():
    lim = SafetyLimits(workspace=(np.zeros(3), np.ones(3)), ee_position=lambda obs: np.array([0.5, 0.5, 1.2]),
                       ee_step_m=0.1)
    safety = Safety(EE_SPEC, lim)
    np.testing.assert_allclose(safety.clamp(np.array([0, 0, 1, 1]), {}), [0, 0, 0, 1])   # up: not at all
    np.testing.assert_allclose(safety.clamp(np.array([0, 0, -1, 1]), {}), [0, 0, -1, 1])  # down: freely
    np.testing.assert_allclose(safety.clamp(np.array([1, -1, 0, 1]), {}), [1, -1, 0, 1])  # 0.1 m is inside
    assert safety.counts["workspace"] == 1


def test_max_change_per_step_ramps_from_the_hold_action():
    safety = Safety(EE_SPEC, SafetyLimits(max_delta=0.25))
    safety.reset(HOLD)
    outs = [safety.clamp(np.array([1, -1, 0.1, 2]), {}) for _ in range(5)]
    np.testing.assert_allclose(outs[0], [0.25, -0.25, 0.1, 1.25])
    np.testing.assert_allclose(outs[1], [0.5, -0.5, 0.1, 1.5])
    np.testing.assert_allclose(outs[3], [1, -1, 0.1, 2])
    assert safety.counts["delta"] == 3  # the 4th and 5th requests are within reach
    np.testing.assert_allclose(safety.hold(HOLD), HOLD)  # a hold is never slowed down ...
    np.testing.assert_allclose(safety.clamp(np.array([1, 1, 1, 1]), {}), [0.25, 0.25, 0.25, 1])  # ... and is the base


def test_bounds_and_nonfinite_are_clamped_and_counted():
    safety = Safety(EE_SPEC, SafetyLimits())
    np.testing.assert_allclose(safety.clamp(np.array([3, -3, np.nan, 5]), {}), [1, -1, 0, 2])
    assert safety.counts["bounds"] == 1 and safety.counts["nonfinite"] == 1
    with pytest.raises(ValueError, match="not finite"):
        safety.hold(np.array([0, 0, np.nan, 1]))


def test_joint_limits_from_lerobot_calibration(monkeypatch):
    monkeypatch.setattr("hilrl.hardware.so_arm.port_exists", lambda port: True)
    robot = FakeFollower(ranges={"elbow_flex": (1500, 2500)})  # +-500 ticks = +-43.96 degrees
    with SOArm(ArmConfig(port="/dev/ttyACM0", action_mode="joint"), robot=robot) as arm:
        obs = arm.reset()
        low, high = arm.joint_limits()
        np.testing.assert_allclose(high[:3], [87.91, 87.91, 43.96], atol=0.01)
        assert (low[5], high[5]) == (0.0, 100.0)
        safety = Safety(arm.spec, limits_for(arm, 0.0, ()))
        action = safety.clamp(np.array([0, 0, 90, 0, -120, 150], dtype=np.float32), obs)
        arm.step(action)
    sent = robot.sent[-1]
    assert sent["elbow_flex.pos"] == pytest.approx(43.96, abs=0.01) and sent["wrist_roll.pos"] == pytest.approx(-87.91,
                                                                                                                 abs=0.01)
    assert sent["gripper.pos"] == 100.0
    assert safety.counts["joint_limits"] == 1 and safety.counts["bounds"] == 1


def test_workspace_options_are_checked():
    assert parse_workspace(()) is None
    with pytest.raises(ValueError, match="6 numbers"):
        parse_workspace((0.1, 0.2))
    with pytest.raises(ValueError, match="below its maximum"):
        parse_workspace((0.5, 0, 0, 0.4, 1, 1))
    robot = FakeFollower()
    arm = SOArm(ArmConfig(port="/dev/ttyACM0", action_mode="joint"), robot=robot)
    with pytest.raises(ValueError, match="--workspace needs end-effector actions"):
        limits_for(arm, 0.0, (0, 0, 0, 1, 1, 1))


class FakeOutbox:
    def __init__(self) -> None:
        self.pending, self.last_acked = 0, 0

    @property
    def nbytes(self) -> int:
        return 100 * self.pending

    def __len__(self) -> int:
        return self.pending


@pytest.mark.parametrize("mode", ["keep", "hold"])
def test_learner_watch_says_each_change_once(caplog, mode):
    now = [0.0]
    link = type("L", (), {"connected": threading.Event()})()
    link.connected.set()
    outbox = FakeOutbox()
    watch = LearnerWatch(link, outbox, after_s=5.0, mode=mode, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="hilrl.actor.safety")
    outbox.pending = 3  # batches waiting ...
    seen = []
    for t in range(0, 20):  # ... and no acknowledgement for 20 s
        now[0] = float(t)
        seen.append(watch.lost(version=7))
    assert seen.index(True) == 6 and all(seen[6:]) and watch.hold == (mode == "hold")
    outbox.last_acked = 1  # it acknowledges again
    now[0] = 21.0
    assert not watch.lost() and not watch.hold
    link.connected.clear()  # disconnected, nothing waiting: lost after the same time
    outbox.pending = 0
    assert not watch.lost() and [watch.lost() for now[0] in (25.0, 26.5)] == [False, True]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("learner lost" in m for m in messages) == 2 and sum("learner back" in m for m in messages) == 1
    assert ("keeping the last good policy (v7)" in messages[0]) == (mode == "keep")
    assert watch.episodes == 2


def test_schedule_forms_and_errors():
    assert parse_schedule("3h3p") == parse_schedule("human:3,policy:3") == [("human", 3), ("policy", 3)]
    s = Schedule("2h1p")
    kinds = []
    for _ in range(4):
        kinds.append((s.next(), s.describe()))
        s.done()
    assert kinds == [("human", "human episode 1/2"), ("human", "human episode 2/2"),
                     ("policy", "policy episode 1/1"), ("human", "human episode 1/2")]
    assert not Schedule("")
    for bad in ("3x", "human:three", "robot:2", "0h0p"):
        with pytest.raises(ValueError, match="--schedule"):
            parse_schedule(bad)
