"""The simulated pick-cube arm (hilrl.hardware.sim) and its scripted expert (hilrl.hardware.expert)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from hilrl.buffers.spec import Spec
from hilrl.hardware.expert import ScriptedExpert
from hilrl.hardware.sim import SimPickCube


@pytest.fixture(scope="module")
def env() -> Iterator[SimPickCube]:
    sim = SimPickCube(seed=0)
    yield sim
    sim.close()


def run_expert(env: SimPickCube, expert: ScriptedExpert, obs: dict[str, np.ndarray]) -> tuple[bool, int]:
    """Let the expert finish the episode from ``obs``; returns (success, steps)."""
    expert.reset()
    for t in range(1, env.max_steps + 1):
        action = expert.act(obs)
        assert action.dtype == np.float32 and action.shape == (4,)
        assert np.all(action >= env.spec.action.low) and np.all(action <= env.spec.action.high)
        obs, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return bool(info["success"]), t
    raise AssertionError("episode did not end within max_steps")


def test_spec_matches_observations(env: SimPickCube) -> None:
    spec = env.spec
    assert spec.observation_names == ("agent_pos", "environment_state")
    assert spec.feature("agent_pos").shape == (18,) and spec.feature("environment_state").shape == (3,)
    assert spec.action.name == "action" and spec.action.dtype == "float32" and spec.action.shape == (4,)
    assert spec.action.low == (-1.0, -1.0, -1.0, 0.0) and spec.action.high == (1.0, 1.0, 1.0, 2.0)
    assert Spec.from_dict(spec.to_dict()) == spec
    obs = env.reset(seed=1)
    spec.check_observation(obs)
    assert set(obs) == set(spec.observation_names)
    rng = np.random.default_rng(0)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(spec.action.low, spec.action.high))
        spec.check_observation(obs)
        assert isinstance(reward, float) and isinstance(info["success"], bool)


def test_reset_seed_is_reproducible(env: SimPickCube) -> None:
    a = env.reset(seed=5)["environment_state"]
    b = env.reset(seed=5)["environment_state"]
    c = env.reset(seed=6)["environment_state"]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert 0.3 <= a[0] <= 0.5 and -0.15 <= a[1] <= 0.15 and a[2] == pytest.approx(0.02)


def test_truncation_at_max_steps() -> None:
    sim = SimPickCube(seed=0, max_steps=5)
    try:
        sim.reset()
        for t in range(1, 6):
            _, reward, terminated, truncated, info = sim.step(np.array([0.0, 0.0, 0.0, 1.0]))
            assert reward == 0.0 and not terminated and not info["success"]
            assert truncated == (t == 5)
        with pytest.raises(RuntimeError):
            sim.step(np.zeros(4))
        sim.reset()  # a new episode starts counting from zero
        assert not sim.step(np.zeros(4))[3]
    finally:
        sim.close()


def test_success_gives_reward_and_terminates(env: SimPickCube) -> None:
    obs = env.reset(seed=2)
    expert = ScriptedExpert()
    for _ in range(env.max_steps):
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        if terminated or truncated:
            break
    assert info["success"] and reward == 1.0 and terminated and not truncated
    assert obs["environment_state"][2] > 0.1


def test_action_clipping(env: SimPickCube) -> None:
    env.reset(seed=3)
    wild = [env.step(np.array([5.0, -7.0, 3.0, 9.0]))[0] for _ in range(3)]
    env.reset(seed=3)
    clipped = [env.step(np.array([1.0, -1.0, 1.0, 2.0]))[0] for _ in range(3)]
    for a, b in zip(wild, clipped, strict=True):
        np.testing.assert_array_equal(a["agent_pos"], b["agent_pos"])
    assert wild[-1]["agent_pos"][14] == 255.0  # gripper command clipped to "fully closed"
    with pytest.raises(ValueError):
        env.step(np.array([np.nan, 0.0, 0.0, 1.0]))
    with pytest.raises(ValueError):
        env.step(np.zeros(3))


def test_gripper_execution_modes(env: SimPickCube, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hold of 0.9 opens a closed gripper step by step when executed as it is; the gamepad's three
    states (and a hold band) hold it exactly (docs/other-expert.md)."""

    def setpoints(mode: str, band: float, holds: list[float]) -> list[float]:
        monkeypatch.setattr(env, "gripper_mode", mode)
        monkeypatch.setattr(env, "gripper_hold_band", band)
        env.reset(seed=3)
        env.step(np.array([0.0, 0.0, 0.0, 2.0]))  # closed
        return [float(env.step(np.array([0.0, 0.0, 0.0, g]))[0]["agent_pos"][14]) for g in holds]

    assert setpoints("continuous", 0.0, [0.9, 0.9]) == pytest.approx([229.5, 204.0])  # 10 % of 255 per step
    assert setpoints("states", 0.0, [0.9, 1.4, 0.6, 0.5]) == [255.0, 255.0, 255.0, 0.0]
    assert setpoints("continuous", 0.25, [0.8, 1.2, 0.5]) == pytest.approx([255.0, 255.0, 127.5])


def test_expert_success_rate(env: SimPickCube) -> None:
    expert = ScriptedExpert(noise=0.0, seed=0)
    results = [run_expert(env, expert, env.reset(seed=100 + i)) for i in range(30)]
    successes = sum(s for s, _ in results)
    assert successes >= 27, results
    assert np.mean([t for s, t in results if s]) <= 30


def test_noisy_expert_mostly_succeeds(env: SimPickCube) -> None:
    expert = ScriptedExpert(noise=0.3, seed=1)
    successes = sum(run_expert(env, expert, env.reset(seed=200 + i))[0] for i in range(8))
    assert successes >= 6


def test_expert_takeover_after_random_actions(env: SimPickCube) -> None:
    rng = np.random.default_rng(0)
    expert = ScriptedExpert(seed=2)
    outcomes = []
    for i in range(12):
        obs = env.reset(seed=300 + i)
        ended = False
        for _ in range(int(rng.integers(20, 41))):
            obs, _, terminated, truncated, _ = env.step(rng.uniform(env.spec.action.low, env.spec.action.high))
            if terminated or truncated:
                ended = True  # random flailing pushed the block out of bounds: nothing to take over
                break
        if not ended:
            outcomes.append(run_expert(env, expert, obs)[0])
    assert len(outcomes) >= 8
    assert sum(outcomes) >= 0.8 * len(outcomes), outcomes


def test_cameras_keep_the_block_position_out_of_the_observation_and_give_it_to_the_scripted_human() -> None:
    from hilrl.actor.envs import make_env

    env, human = make_env("sim", seed=0, demo_noise=0.0, cameras=True)
    try:
        names = [f.name for f in env.spec.observation]
        assert names == ["agent_pos", "front", "wrist"]  # no privileged environment_state
        obs = env.reset()
        assert "environment_state" not in obs
        block = env.scene()["environment_state"]
        assert block.shape == (3,) and abs(float(block[2]) - 0.02) < 0.01
        human.reset(demonstrating=True)
        assert human.action(obs).shape == (4,)  # the expert acts from obs + what it sees of the scene
    finally:
        env.close()
    with SimPickCube(seed=0, cameras=True, privileged=True) as full:  # opt-in, e.g. for an asymmetric critic
        assert [f.name for f in full.spec.observation][1] == "environment_state"


def test_camera_resolution_is_a_constructor_setting() -> None:
    with SimPickCube(seed=0, cameras=True, image_size=64) as env:
        assert [f.shape for f in env.spec.image_features] == [(64, 64, 3), (64, 64, 3)]
        obs = env.reset(seed=3)
        nxt, *_ = env.step(np.zeros(4, np.float32))
        assert obs["front"].shape == nxt["wrist"].shape == (64, 64, 3)
        assert obs["front"].std() > 5  # a rendered scene, not a blank frame
    with pytest.raises(ValueError, match="image_size must be 32-512"):
        SimPickCube(cameras=True, image_size=8)
    from hilrl.actor.envs import make_env

    with pytest.raises(SystemExit, match="--sim-image-size"):  # the actor's flag, named in its error
        make_env("sim", seed=0, demo_noise=0.0, cameras=True, image_size=1000)
