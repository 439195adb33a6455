"""State-based networks and the TD3 / TD3+BC update."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from hilrl.learner.networks import (
    Critic,
    Policy,
    PolicyConfig,
    compute_state_stats,
    policy_from_safetensors_bytes,
    policy_to_safetensors_bytes,
)
from hilrl.learner.td3 import TD3, TD3Config

S, A = 6, 2
LOW = np.array([-2.0, 0.0], np.float32)
HIGH = np.array([2.0, 1.0], np.float32)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # robust on a shared 2-core box
    yield
    torch.set_num_threads(prev)


def make_dataset(n: int = 2048, seed: int = 0) -> dict[str, torch.Tensor]:
    """1-step task: the demo action is a fixed nonlinear function of the state, every episode succeeds."""
    g = np.random.default_rng(seed)
    w = g.normal(size=(S, A)) / np.sqrt(S)
    states = (g.normal(size=(n, S)) * 3.0 + 5.0).astype(np.float32)
    a_n = np.tanh(((states - 5.0) / 3.0) @ w)
    actions = (LOW + (a_n + 1.0) / 2.0 * (HIGH - LOW)).astype(np.float32)
    data = {
        "state": states,
        "action": actions,
        "reward": np.ones(n, np.float32),
        "next_state": states,
        "done": np.ones(n, np.float32),
    }
    return {k: torch.as_tensor(v) for k, v in data.items()}


def make_td3(data: dict[str, torch.Tensor], seed: int = 0, **cfg: float) -> TD3:
    td3 = TD3(PolicyConfig(S, A, (64, 64)), TD3Config(**cfg), CPU, seed=seed)
    td3.set_normalization(*compute_state_stats(data["state"].numpy()), LOW, HIGH)
    return td3


def batches(data: dict[str, torch.Tensor], n: int, size: int = 128, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(len(data["state"]), (size,), generator=g)
        yield {k: v[idx] for k, v in data.items()}


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def test_policy_config_roundtrip_json():
    cfg = PolicyConfig(18, 4, (128, 64))
    assert PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_actor_output_inside_bounds():
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(S, A))
    policy.set_normalization(np.zeros(S), np.full(S, 1e-6), LOW, HIGH)  # tiny std: saturating inputs
    assert torch.equal(policy.obs_std, torch.full((S,), 1e-3))  # clamped at 1e-3
    out = policy(torch.randn(1000, S) * 100.0)
    assert out.shape == (1000, A)
    assert (out >= torch.as_tensor(LOW)).all() and (out <= torch.as_tensor(HIGH)).all()
    a = torch.as_tensor(LOW) + torch.rand(50, A) * torch.as_tensor(HIGH - LOW)
    torch.testing.assert_close(policy.unnormalize_action(policy.normalize_action(a)), a)


def test_compute_state_stats_clamps_std():
    x = np.stack([np.arange(10.0), np.full(10, 3.0)], axis=1)
    mean, std = compute_state_stats(x)
    np.testing.assert_allclose(mean, [4.5, 3.0])
    np.testing.assert_allclose(std, [np.std(np.arange(10.0)), 1e-3], rtol=1e-6)
    assert mean.dtype == std.dtype == np.float32


def test_critic_shapes():
    q1, q2 = Critic(S, A)(torch.randn(7, S), torch.randn(7, A))
    assert q1.shape == q2.shape == (7,)


def test_policy_safetensors_roundtrip():
    cfg = PolicyConfig(S, A, (32, 32))
    torch.manual_seed(0)
    policy = Policy(cfg)
    policy.set_normalization(np.arange(S), np.linspace(0.5, 2.0, S), LOW, HIGH)
    blob = policy_to_safetensors_bytes(policy)
    assert isinstance(blob, bytes)
    restored = policy_from_safetensors_bytes(cfg, blob)
    for name in ("obs_mean", "obs_std", "action_low", "action_high"):
        assert torch.equal(getattr(restored, name), getattr(policy, name))
    x = torch.randn(64, S) * 3.0
    assert torch.equal(restored(x), policy(x))
    with pytest.raises(RuntimeError):
        policy_from_safetensors_bytes(PolicyConfig(S, A, (16, 16)), blob)


def test_lambda_formula_and_delay():
    data = make_dataset(512)
    td3 = make_td3(data, policy_delay=2)
    batch = next(batches(data, 1))
    actor_before = copy.deepcopy(td3.policy.actor)
    targets_before = copy.deepcopy(td3.target_policy.actor), copy.deepcopy(td3.target_critic)

    m1 = td3.update(batch, bc_weight=1.0)  # critic only
    assert set(m1) == {"critic_loss", "q_mean"}
    assert torch.equal(flat_params(td3.policy.actor), flat_params(actor_before))
    assert torch.equal(flat_params(td3.target_policy.actor), flat_params(targets_before[0]))
    assert torch.equal(flat_params(td3.target_critic), flat_params(targets_before[1]))

    actor_before = copy.deepcopy(td3.policy.actor)
    m2 = td3.update(batch, bc_weight=1.0)  # critic + actor + targets
    assert {"actor_loss", "bc_loss", "lambda"} <= set(m2)
    with torch.no_grad():  # the critic is not changed by the actor step, so it is the one lambda saw
        s = td3.policy.normalize_state(batch["state"])
        pi = actor_before(s)
        lmbda = td3.cfg.alpha / td3.critic.q1(s, pi).abs().mean()
        bc = ((pi - td3.policy.normalize_action(batch["action"])) ** 2).mean()
        loss = -lmbda * td3.critic.q1(s, pi).mean() + bc
    assert m2["lambda"] == pytest.approx(lmbda.item(), rel=1e-5)
    assert m2["bc_loss"] == pytest.approx(bc.item(), rel=1e-5)
    assert m2["actor_loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    assert not torch.equal(flat_params(td3.policy.actor), flat_params(actor_before))

    tau = td3.cfg.tau
    for net, target, old in (
        (td3.policy.actor, td3.target_policy.actor, targets_before[0]),
        (td3.critic, td3.target_critic, targets_before[1]),
    ):
        expected = (1 - tau) * flat_params(old) + tau * flat_params(net)
        torch.testing.assert_close(flat_params(target), expected)


def test_plain_td3_actor_loss():
    data = make_dataset(512)
    td3 = make_td3(data, policy_delay=1)
    batch = next(batches(data, 1))
    actor_before = copy.deepcopy(td3.policy.actor)
    m = td3.update(batch, bc_weight=0.0)
    assert "lambda" not in m
    with torch.no_grad():
        s = td3.policy.normalize_state(batch["state"])
        expected = -td3.critic.q1(s, actor_before(s)).mean()
    assert m["actor_loss"] == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_td3_bc_imitates_demonstrations():
    data = make_dataset()
    td3 = make_td3(data)
    demo_n = td3.policy.normalize_action(data["action"])

    def imitation_mse() -> float:
        with torch.no_grad():
            return ((td3.policy.normalize_action(td3.policy(data["state"])) - demo_n) ** 2).mean().item()

    before = imitation_mse()
    for batch in batches(data, 400):
        td3.update(batch, bc_weight=1.0)
    after = imitation_mse()
    assert after < 0.2 * before, (before, after)


def test_seeded_runs_are_identical():
    data = make_dataset(512)
    runs = []
    for _ in range(2):
        td3 = make_td3(data, seed=3)
        metrics = [td3.update(b, bc_weight=1.0) for b in batches(data, 10)]
        runs.append((metrics, flat_params(td3.policy), flat_params(td3.critic)))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][2], runs[1][2])
    other = make_td3(data, seed=4)
    assert not torch.equal(flat_params(other.policy), runs[0][1])


def test_save_load_restores_identical_updates(tmp_path):
    data = make_dataset(512)
    stream = list(batches(data, 12))
    td3 = make_td3(data, seed=0)
    for b in stream[:5]:  # odd count: the restored run must resume mid policy_delay cycle
        td3.update(b, bc_weight=1.0)
    td3.save(tmp_path / "ckpt")
    assert not list((tmp_path / "ckpt").glob("*.tmp"))

    restored = TD3(PolicyConfig(S, A, (64, 64)), TD3Config(), CPU, seed=123)  # different init and noise
    restored.load(tmp_path / "ckpt")
    assert restored.total_it == 5
    for b in stream[5:]:
        assert td3.update(b, bc_weight=1.0) == restored.update(b, bc_weight=1.0)
    for a, b in zip(td3._modules().values(), restored._modules().values(), strict=True):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)

    with pytest.raises(ValueError):
        TD3(PolicyConfig(S, A, (32, 32)), TD3Config(), CPU).load(tmp_path / "ckpt")


def test_bc_term_imitates_only_the_rows_marked_human():
    data = make_dataset(512)
    td3 = make_td3(data, policy_delay=1)
    batch = next(batches(data, 1, size=8))
    batch["human"] = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.float32)
    actor_before = copy.deepcopy(td3.policy.actor)
    m = td3.update(batch, bc_weight=1.0)
    with torch.no_grad():
        pi = actor_before(td3.policy.normalize_state(batch["state"]))
        per_row = ((pi - td3.policy.normalize_action(batch["action"])) ** 2).mean(dim=-1)
    assert m["bc_loss"] == pytest.approx(per_row[:3].mean().item(), rel=1e-5)


def test_online_bc_weight_schedule(tmp_path):
    from hilrl.learner.config import LearnerConfig
    from hilrl.learner.core import LearnerCore
    from hilrl.learner.training import Trainer

    constant = Trainer(LearnerCore(LearnerConfig(output_dir=tmp_path, online_bc_weight=0.5)))
    assert constant.online_bc_weight(0) == constant.online_bc_weight(10**6) == 0.5
    decaying = Trainer(LearnerCore(LearnerConfig(output_dir=tmp_path, online_bc_weight=1.0,
                                                 online_bc_decay_steps=100)))
    assert [decaying.online_bc_weight(n) for n in (0, 50, 100, 500)] == [1.0, 0.5, 0.0, 0.0]


def test_critic_warmup_keeps_the_actor_still_and_moves_only_the_critic_target():
    data = make_dataset(256)
    td3 = make_td3(data, policy_delay=1)
    batch = next(batches(data, 1))
    actor_before = flat_params(td3.policy.actor).clone()
    critic_target_before = flat_params(td3.target_critic).clone()
    actor_target_before = flat_params(td3.target_policy.actor).clone()
    m = td3.update(batch, bc_weight=0.0, update_actor=False)
    assert "actor_loss" not in m
    assert torch.equal(flat_params(td3.policy.actor), actor_before)
    assert torch.equal(flat_params(td3.target_policy.actor), actor_target_before)
    assert not torch.equal(flat_params(td3.target_critic), critic_target_before)


def test_critic_warmup_holds_only_a_pretrained_actor_and_only_for_its_first_updates():
    from hilrl.learner.training import actor_holds_still, warmup_note

    assert [actor_holds_still(1000, True, n) for n in (0, 999, 1000, 5000)] == [True, True, False, False]
    assert not actor_holds_still(1000, False, 0)  # no offline stage: an untrained actor is never held
    assert not actor_holds_still(0, True, 0)  # warm-up off
    # the learner says which case it is in when it goes online (a skipped warm-up is not silent)
    assert "holds still for the first 1000" in warmup_note(1000, 5000)
    assert "skipped" in warmup_note(1000, 0) and "--critic-warmup-steps 1000" in warmup_note(1000, 0)
    assert "off" in warmup_note(0, 5000)


def test_checkpoints_are_complete_or_ignored_and_only_the_last_k_are_kept(tmp_path):
    from hilrl.buffers.spec import Feature, Spec
    from hilrl.learner.config import LearnerConfig
    from hilrl.learner.core import LearnerCore
    from hilrl.learner.training import Trainer

    spec = Spec(observation=(Feature("s", "float32", (S,)),),
                action=Feature("action", "float32", (A,), tuple(LOW), tuple(HIGH)))
    core = LearnerCore(LearnerConfig(output_dir=tmp_path / "out", keep_checkpoints=2, hidden=(16, 16)))
    core.open()
    core.hello("a", spec)
    trainer = Trainer(core)
    trainer._build()
    for step in (10, 20, 30):
        core.learner_step = step
        trainer.checkpoint()
    root = tmp_path / "out" / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000000020", "step-000000030"]
    (root / "step-000000040").mkdir()  # a crash mid-write leaves a directory without DONE
    assert trainer.run_dir.latest_checkpoint() == root / "step-000000030"
