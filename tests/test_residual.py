"""Residual action fine-tuning: zero-init = base, bounded correction, what travels, and a real run over gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port, run_hilrl, train_online
from safetensors.torch import load as st_load

from hilrl.actor.residual_base import ResidualBaseEnv
from hilrl.buffers.spec import Feature, Spec, state_vector
from hilrl.hardware.expert import ScriptedExpert
from hilrl.hardware.sim import SimPickCube
from hilrl.learner.networks import (
    Policy,
    PolicyConfig,
    ResidualActor,
    policy_config_for,
    policy_from_safetensors_bytes,
    policy_to_safetensors_bytes,
)
from hilrl.learner.residual import BASE_ACTION, residual_mismatch
from hilrl.learner.td3 import TD3, TD3Config

LOW, HIGH = np.array([-1, -1, -1, 0], np.float32), np.array([1, 1, 1, 2], np.float32)


def _spec(with_base: bool = True) -> Spec:
    obs = (Feature("agent_pos", "float32", (6,)),)
    if with_base:
        obs += (Feature(BASE_ACTION, "float32", (4,), tuple(LOW), tuple(HIGH)),)
    obs += (Feature("environment_state", "float32", (3,)),)  # the base sits in the middle of the state vector
    return Spec(obs, Feature("action", "float32", (4,), tuple(LOW), tuple(HIGH)))


def _states(n: int, rng: np.random.Generator, spec: Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Random raw states (base actions anywhere in the bounds, bounds included) and their base actions."""
    state = rng.normal(3.0, 5.0, (n, spec.state_dim)).astype(np.float32)
    base = rng.uniform(LOW, HIGH, (n, 4)).astype(np.float32)
    base[:8] = np.where(rng.random((8, 4)) < 0.5, LOW, HIGH)  # exactly on the bounds
    state[:, 6:10] = base
    return torch.from_numpy(state), torch.from_numpy(base)


def _policy(scale: float = 0.1, seed: int = 0) -> Policy:
    spec = _spec()
    cfg = policy_config_for(spec, (32, 32), residual_scale=scale)
    assert cfg.base_action_index == 6
    td3 = TD3(cfg, TD3Config(), torch.device("cpu"), seed=seed)
    rng = np.random.default_rng(seed)
    td3.set_normalization(rng.normal(0, 2, spec.state_dim), rng.uniform(0.5, 3, spec.state_dim), LOW, HIGH)
    return td3.policy


def test_untrained_residual_policy_is_exactly_the_base() -> None:
    policy = _policy()
    assert isinstance(policy.actor, ResidualActor)
    state, base = _states(512, np.random.default_rng(1), _spec())
    with torch.no_grad():
        out = policy(state)
        shipped = policy_from_safetensors_bytes(policy.cfg, policy_to_safetensors_bytes(policy))(state)
    torch.testing.assert_close(out, base, rtol=0, atol=1e-6)
    torch.testing.assert_close(shipped, base, rtol=0, atol=1e-6)
    # a non-residual policy of the same shape does not reproduce the base (the check above can fail)
    plain = Policy(PolicyConfig(policy.cfg.state_dim, 4, (32, 32)))
    plain.set_normalization(policy.obs_mean, policy.obs_std, LOW, HIGH)
    with torch.no_grad():
        assert (plain(state) - base).abs().max() > 0.05


def test_td3_target_policy_adds_its_correction_to_the_base_of_the_next_state() -> None:
    spec = _spec()
    cfg = policy_config_for(spec, (32, 32), residual_scale=0.2)
    td3 = TD3(cfg, TD3Config(policy_delay=1), torch.device("cpu"), seed=0)
    td3.set_normalization(np.zeros(spec.state_dim), np.ones(spec.state_dim), LOW, HIGH)
    rng = np.random.default_rng(2)
    state, _ = _states(64, rng, spec)
    next_state, next_base = _states(64, rng, spec)
    batch = {"state": state, "action": torch.from_numpy(rng.uniform(LOW, HIGH, (64, 4)).astype(np.float32)),
             "reward": torch.ones(64), "next_state": next_state, "done": torch.zeros(64)}
    for _ in range(20):
        td3.update(batch, bc_weight=0.0)
    with torch.no_grad():
        target = td3.target_policy(next_state)
        online = td3.policy(next_state)
    assert (online - next_base).abs().max() > 1e-3  # the correction has moved ...
    assert (target - next_base).abs().max() <= 0.2 + 1e-6  # ... and stays within the bound around base(s')
    assert (online - next_base).abs().max() <= 0.2 + 1e-6


@pytest.mark.parametrize("scale", [0.1, 0.5])
def test_adversarial_weights_keep_the_correction_within_scale_and_the_action_within_bounds(scale: float) -> None:
    policy = _policy(scale)
    with torch.no_grad():
        for p in policy.actor.parameters():
            p.copy_(torch.randn_like(p) * 1e3)  # saturates tanh at +-1 almost everywhere
    state, base = _states(2048, np.random.default_rng(3), _spec())
    with torch.no_grad():
        out = policy(state)
        corr = policy.actor.correction(policy.normalize_state(state))
    half = torch.from_numpy((HIGH - LOW) / 2)
    assert torch.isfinite(out).all()
    assert corr.abs().max() <= scale + 1e-6 and corr.abs().max() > 0.99 * scale  # the bound is reached, not passed
    assert (out >= torch.from_numpy(LOW)).all() and (out <= torch.from_numpy(HIGH)).all()
    inside = ((out - base).abs() <= scale * half + 1e-5).all()
    assert inside, "final action moved further from the base than scale allows"


def test_only_the_correction_travels() -> None:
    policy = _policy()
    tensors = st_load(policy_to_safetensors_bytes(policy))
    plain_keys = set(Policy(PolicyConfig(policy.cfg.state_dim, 4, (32, 32))).state_dict())
    assert set(tensors) == plain_keys  # the correction MLP + the statistics: no base network, no critic
    assert {k for k in tensors if not k.startswith("actor.net.")} == {"obs_mean", "obs_std", "action_low",
                                                                       "action_high"}
    last = max(int(k.split(".")[2]) for k in tensors if k.startswith("actor.net."))
    assert not tensors[f"actor.net.{last}.weight"].any() and not tensors[f"actor.net.{last}.bias"].any()
    # the base-action slice is normalised with the action box, whatever the data statistics were
    torch.testing.assert_close(tensors["obs_mean"][6:10], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(tensors["obs_std"][6:10], torch.ones(4))


def test_spec_mismatch_between_residual_learner_and_actor_is_refused_clearly() -> None:
    assert residual_mismatch(_spec(True), True) is None and residual_mismatch(_spec(False), False) is None
    assert "--residual-base" in residual_mismatch(_spec(False), True)
    assert "without --residual" in residual_mismatch(_spec(True), False)
    bad = Spec((Feature(BASE_ACTION, "float32", (3,)),), _spec().action)
    assert "float32[4]" in residual_mismatch(bad, True)
    with pytest.raises(ValueError, match="--residual-base"):
        policy_config_for(_spec(False), (32, 32), residual_scale=0.1)


@pytest.mark.parametrize("residual", [True, False])
def test_learner_refuses_an_actor_whose_residual_setting_differs(tmp_path: Path, residual: bool) -> None:
    from hilrl.learner.config import LearnerConfig
    from hilrl.learner.core import LearnerCore, SpecMismatch

    core = LearnerCore(LearnerConfig(output_dir=tmp_path / "out", residual=residual, human_capacity=100,
                                     policy_capacity=100))
    core.open()
    with pytest.raises(SpecMismatch, match="--residual-base" if residual else "without --residual"):
        core.hello("a", _spec(with_base=not residual))
    assert core.spec is None  # nothing adopted from a refused actor
    core.hello("b", _spec(with_base=residual))
    assert core.policy_config().residual_scale == (0.1 if residual else 0.0)


def test_residual_env_adds_the_base_action_to_every_observation() -> None:
    sim = SimPickCube(seed=0)
    expert, twin = ScriptedExpert(bias=(0.3, 0.3, 0.0)), ScriptedExpert(bias=(0.3, 0.3, 0.0))
    env = ResidualBaseEnv(sim, expert.act, expert.reset)
    try:
        assert env.spec.observation_names[-1] == BASE_ACTION and env.spec.state_dim == sim.spec.state_dim + 4
        # the Arm surface is the sim's; nothing else is forwarded (the sim's scene stays on env.env)
        assert env.needs_go == sim.needs_go and env.joint_limits() == sim.joint_limits()
        np.testing.assert_array_equal(env.hold_action(), sim.hold_action())
        assert env.end_effector().reference == "commanded" and not hasattr(env, "scene")
        obs = env.reset(seed=5)
        for _ in range(15):
            env.spec.check_observation(obs)
            np.testing.assert_array_equal(obs[BASE_ACTION], twin.act(obs))
            # the untrained residual policy executes the base: the same action the biased expert would send
            assert state_vector(obs, env.spec).shape == (env.spec.state_dim,)
            obs, _, terminated, truncated, _ = env.step(obs[BASE_ACTION])
            assert not (terminated or truncated)
    finally:
        env.close()


# ------------------------------------------------------------------ a real learner and actor, residual mode


@pytest.mark.e2e
def test_learner_and_actor_train_a_residual_over_grpc(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    learner = spawn("learner", "--port", str(port), "--output-dir", str(out), "--residual", "--residual-scale", "0.2",
                    "--demo-episodes", "1", "--offline-steps", "20", "--publish-every", "10", "--batch-size", "32",
                    "--torch-threads", "1", "--hidden", "32,32", name="learner")
    actor = spawn("actor", "--learner", f"127.0.0.1:{port}", "--env", "sim", "--fps", "0", "--state-dir",
                  str(tmp_path / "actor"), "--seed", "0", "--residual-base", "expert", "--residual-bias", "0.3,0.3,0",
                  name="actor")
    train_online(learner, actor, f"127.0.0.1:{port}", "online in residual mode with weights v>=2 applied by the actor")
    spec = Spec.from_dict(json.loads((out / "spec.json").read_text()))
    assert spec.feature(BASE_ACTION).shape == (4,)
    from hilrl.learner.networks import load_policy_file

    policy = load_policy_file(out / "policy.safetensors")
    assert policy.cfg.residual_scale == 0.2 and isinstance(policy.actor, ResidualActor)
    assert policy.cfg.base_action_index == spec.state_dim - 4
    assert "Traceback" not in actor.stderr and "Traceback" not in learner.stderr

    # hilrl eval runs it over the same base; without the base it says what is missing
    r = run_hilrl("eval", "--checkpoint", str(out), "--episodes", "2", "--residual-base", "expert",
                  "--residual-bias", "0.3,0.3,0")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["episodes"] == 2
    r = run_hilrl("eval", "--checkpoint", str(out), "--episodes", "2")
    assert r.returncode != 0 and "is a residual policy: add --residual-base" in r.stderr
