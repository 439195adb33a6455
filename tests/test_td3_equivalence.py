"""The TD3 update after the speed work (hooks, fused Adam, foreach Polyak, actor-only backward) computes
what the frozen copy of the old one (`benchmarks/td3_legacy.py`) computes: the same metrics, weights,
targets and Adam moments to 1e-5 over several steps, for TD3+BC offline, online TD3 (with the critic
warm-up), the chunked update, a camera policy, and a run resumed from a checkpoint the old code wrote."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hilrl.learner.chunked import ChunkedTD3
from hilrl.learner.networks import PolicyConfig
from hilrl.learner.td3 import TD3, TD3Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from td3_legacy import LegacyChunkedTD3, LegacyTD3  # noqa: E402

S, A, B = 7, 3, 64
CPU = torch.device("cpu")
TOL = {"rtol": 1e-5, "atol": 1e-5}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make(cls: type, cfg: PolicyConfig, seed: int = 3, **algo: float) -> TD3:
    td3 = cls(cfg, TD3Config(**algo), CPU, seed=seed)
    rng = np.random.default_rng(0)
    td3.set_normalization(rng.normal(size=S), rng.uniform(0.5, 2.0, size=S), -2.0 * np.ones(A), np.ones(A))
    return td3


def batch(seed: int, chunk: int = 1, human: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (B, A) if chunk == 1 else (B, chunk, A)
    out = {
        "state": torch.randn(B, S, generator=g) * 2 + 1,
        "next_state": torch.randn(B, S, generator=g) * 2 + 1,
        "action": torch.rand(shape, generator=g) * 3 - 2,
        "reward": torch.randn((B,) if chunk == 1 else (B, chunk), generator=g),
        "done": (torch.rand(B, generator=g) < 0.1).float(),
    }
    if human:
        out["human"] = (torch.rand(B, generator=g) < 0.5).float()
    if chunk > 1:
        out["valid"] = (torch.rand(B, generator=g) < 0.8).float()
        out["action_mask"] = (torch.rand(B, chunk, generator=g) < 0.9).float()
    return out


def assert_same_state(new: TD3, old: TD3) -> None:
    for name, module in new._modules().items():
        for (key, a), (_, b) in zip(module.state_dict().items(), old._modules()[name].state_dict().items(),
                                    strict=True):
            torch.testing.assert_close(a, b, **TOL, msg=f"{name}.{key}")
    for name, opt in new._optimizers().items():
        for idx, state in opt.state_dict()["state"].items():
            legacy = old._optimizers()[name].state_dict()["state"][idx]
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(state[key], legacy[key], **TOL, msg=f"{name}.{idx}.{key}")
            assert float(state["step"]) == float(legacy["step"])
    assert new.total_it == old.total_it


def run_both(new: TD3, old: TD3, steps: list[dict]) -> None:
    for i, step in enumerate(steps):
        b = batch(100 + i, new.policy_cfg.chunk, step.get("human", True))
        kw = {"bc_weight": step["bc_weight"], "update_actor": step.get("update_actor", True)}
        got, want = new.update(b, **kw), old.update(b, **kw)
        assert list(got) == list(want), f"step {i}: metric names differ"
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-5), f"step {i}: {key}"
    assert_same_state(new, old)


def test_td3_bc_offline_equals_the_legacy_update() -> None:
    cfg = PolicyConfig(S, A, (32, 32))
    run_both(make(TD3, cfg), make(LegacyTD3, cfg), [{"bc_weight": 1.0}] * 8 + [{"bc_weight": 1.0, "human": False}] * 2)


def test_online_td3_with_warmup_and_decaying_bc_equals_the_legacy_update() -> None:
    cfg = PolicyConfig(S, A, (32, 32))
    steps = ([{"bc_weight": 0.5, "update_actor": False}] * 4 + [{"bc_weight": w} for w in (0.5, 0.4, 0.3, 0.2)]
             + [{"bc_weight": 0.0}] * 4)
    run_both(make(TD3, cfg, policy_delay=2), make(LegacyTD3, cfg, policy_delay=2), steps)


def test_chunked_update_equals_the_legacy_chunked_update() -> None:
    cfg = PolicyConfig(S, A, (32, 32), chunk=4)
    steps = [{"bc_weight": 1.0}] * 6 + [{"bc_weight": 0.0}] * 2 + [{"bc_weight": 0.5, "human": False}] * 2
    run_both(make(ChunkedTD3, cfg), make(LegacyChunkedTD3, cfg), steps)


def test_camera_policy_update_equals_the_legacy_update() -> None:
    cfg = PolicyConfig(S, A, (16,), cameras=("cam",), image_shape=(32, 32, 3), image_feature_dim=8)
    new, old = make(TD3, cfg), make(LegacyTD3, cfg)
    for i in range(4):
        b = batch(200 + i)
        g = torch.Generator().manual_seed(i)
        b["images"] = {"cam": torch.randint(0, 256, (B, 32, 32, 3), generator=g, dtype=torch.uint8)}
        b["next_images"] = {"cam": torch.randint(0, 256, (B, 32, 32, 3), generator=g, dtype=torch.uint8)}
        got, want = new.update(b, bc_weight=1.0), old.update(b, bc_weight=1.0)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert_same_state(new, old)


def test_resuming_from_a_legacy_checkpoint_continues_as_the_legacy_run(tmp_path: Path) -> None:
    cfg = PolicyConfig(S, A, (32, 32))
    old = make(LegacyTD3, cfg)
    run_both(make(TD3, cfg), old, [{"bc_weight": 1.0}] * 5)
    old.save(tmp_path / "ckpt")
    new = make(TD3, cfg, seed=99)  # different initial weights: everything must come from the checkpoint
    new.load(tmp_path / "ckpt")
    assert all(g.get("fused") for opt in new._optimizers().values() for g in opt.param_groups)
    run_both(new, old, [{"bc_weight": 1.0}] * 5 + [{"bc_weight": 0.0}] * 2)


def test_the_chunked_update_is_only_the_hooks_of_td3() -> None:
    """Q-chunking differs from TD3 by its window layout, h-step target and masks, not by a second update loop."""
    assert "update" not in ChunkedTD3.__dict__
    assert {"inputs", "td_target", "critic_loss", "bc_loss"} <= set(ChunkedTD3.__dict__)
