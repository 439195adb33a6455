"""Action chunking (Q-chunking): h-step windows from the replay rings, the chunked TD3 target and loss
masks, open-loop chunk execution with an instant takeover, and a real learner + actor with --chunk 5."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Link, free_port, train_online

from hilrl.actor.config import ActorConfig
from hilrl.actor.human import HumanEvents
from hilrl.actor.loop import ActorLoop
from hilrl.actor.outbox import Outbox, StateDir
from hilrl.actor.policy_runner import PolicyRunner
from hilrl.buffers.assembler import Step
from hilrl.buffers.replay import DualBuffer, ReplayBuffer, Transition
from hilrl.buffers.sequences import gather_sequences, sample_sequences
from hilrl.buffers.spec import Feature, Spec
from hilrl.hardware.sim import SimPickCube
from hilrl.learner.chunked import ChunkedTD3, chunk_target
from hilrl.learner.networks import Policy, PolicyConfig, policy_from_safetensors_bytes, policy_to_safetensors_bytes
from hilrl.learner.td3 import TD3Config
from hilrl.learner.training import device_batch
from hilrl.protos import codec

GAMMA = 0.9
SPEC = Spec((Feature("state", "float32", (2,)),), Feature("action", "float32", (1,), low=(-100.0,), high=(100.0,)))


def obs(episode: int, t: int) -> dict[str, np.ndarray]:
    """Observation of step t of an episode: its numbers are in the state, so windows can be checked."""
    return {"state": np.array([episode, t], dtype=np.float32)}


def episode_steps(episode: int, n: int, rewards=None, end: str = "terminated", human=None) -> list[Transition]:
    """An episode of n steps; action = 10 * episode + t; the last step ends with `end`."""
    out = []
    for t in range(n):
        last = t == n - 1
        out.append(Transition(obs(episode, t), np.array([10.0 * episode + t], np.float32),
                              float(rewards[t]) if rewards is not None else 0.0, obs(episode, t + 1),
                              last and end == "terminated", last and end == "truncated", episode,
                              bool(human[t]) if human is not None else False))
    return out


def windows(buffer: ReplayBuffer, starts: list[int], h: int) -> dict:
    return gather_sequences(buffer, np.array(starts) % buffer.capacity, h)


# ------------------------------------------------------------------ windows and the h-step target


def test_terminal_at_the_boundary_bootstraps_nothing_and_inside_the_chunk_masks_the_window() -> None:
    buffer = ReplayBuffer(SPEC, 32)
    for t in episode_steps(1, 4, rewards=[0.5, 0.0, 0.25, 1.0]):  # terminal at step 3
        buffer.add(t)
    w = windows(buffer, [0, 1, 2, 3], h=3)
    np.testing.assert_array_equal(w["valid"], [1, 1, 0, 0])
    np.testing.assert_array_equal(w["done"], [False, True, False, False])
    np.testing.assert_array_equal(w["action_mask"], [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(w["action"][:, :, 0], [[10, 11, 12], [11, 12, 13], [12, 13, 13], [13, 13, 13]])
    np.testing.assert_array_equal(w["reward"], [[0.5, 0, 0.25], [0, 0.25, 1.0], [0.25, 1.0, 0], [1.0, 0, 0]])
    np.testing.assert_array_equal(w["obs"]["state"][:, 1], [0, 1, 2, 3])
    np.testing.assert_array_equal(w["next_obs"]["state"][:, 1], [3, 4, 4, 4])  # s_{t+h}, else the final obs

    next_q = torch.tensor([10.0, 20.0, 30.0, 40.0])
    y = chunk_target(torch.from_numpy(w["reward"]), torch.from_numpy(w["done"]).float(), next_q, GAMMA)
    # by hand: window 0 bootstraps from s_3; window 1 ends on the terminal exactly at its last step
    expected_0 = 0.5 + GAMMA * 0.0 + GAMMA**2 * 0.25 + GAMMA**3 * 10.0
    expected_1 = 0.0 + GAMMA * 0.25 + GAMMA**2 * 1.0  # no bootstrap
    np.testing.assert_allclose(y[:2].numpy(), [expected_0, expected_1], rtol=1e-6)


def test_a_chunk_never_bootstraps_across_a_truncation() -> None:
    buffer = ReplayBuffer(SPEC, 32)
    for t in episode_steps(1, 4, end="truncated") + episode_steps(2, 3):
        buffer.add(t)
    w = windows(buffer, [0, 1, 2, 3], h=3)
    # a truncation at the last step bootstraps from the stored final observation (timeouts are not terminals)
    np.testing.assert_array_equal(w["valid"], [1, 1, 0, 0])
    np.testing.assert_array_equal(w["done"], [False, False, False, False])
    np.testing.assert_array_equal(w["next_obs"]["state"][1], [1, 4])
    # windows crossing the truncation stop at it: episode 2's first step is never part of episode 1's chunk
    np.testing.assert_array_equal(w["action_mask"][2:], [[1, 1, 0], [1, 0, 0]])
    assert not np.isin(w["action"][2:], [20.0, 21.0]).any()


def test_windows_stay_inside_one_run_when_actors_interleave_and_at_takeovers() -> None:
    buffers = DualBuffer(SPEC, 64, 64)
    a = episode_steps(1, 8, human=[0, 0, 0, 0, 1, 1, 1, 1])  # a takeover from step 4 on
    b = episode_steps(2, 8)
    for i in range(0, 8, 2):  # two actors whose batches of 2 steps interleave
        for t in a[i:i + 2] + b[i:i + 2]:
            buffers.add(t)
    pol, hum = buffers.policy, buffers.human
    w = gather_sequences(pol, pol.sampleable(), h=2)
    for row in range(len(w["valid"])):
        ep, t = w["obs"]["state"][row]
        n = int(w["action_mask"][row].sum())
        np.testing.assert_array_equal(w["action"][row, :n, 0], 10 * ep + t + np.arange(n))  # contiguous, one episode
        # buffer order A0 A1 B0 B1 A2 A3 B2..B7: the other actor's batch follows A1, B1; A3 is the last policy
        # step before the takeover, B7 the terminal; B3 -> B4 continue (nothing came in between)
        assert bool(w["valid"][row]) == ((int(ep), int(t)) not in {(1, 1), (2, 1), (1, 3), (2, 7)}), (ep, t)
        assert bool(w["valid"][row]) == (n == 2)
    assert len(w["valid"]) == 12
    h = gather_sequences(hum, hum.sampleable(), h=4)  # the human's steps 4..7 of episode 1
    np.testing.assert_array_equal(h["valid"], [1, 0, 0, 0])
    np.testing.assert_array_equal(h["action"][0, :, 0], [14, 15, 16, 17])


def test_sampled_windows_keep_the_50_50_mix_and_are_contiguous_steps_of_one_episode() -> None:
    buffers = DualBuffer(SPEC, 512, 512)
    rng = np.random.default_rng(0)
    for ep in range(12):
        steps = episode_steps(ep, int(rng.integers(6, 20)), human=[ep % 3 == 0] * 20)
        for t in steps:
            buffers.add(t)
    batch = sample_sequences(buffers, 64, 0.5, 5, rng)
    assert batch["human"].sum() == 32 and batch["action"].shape == (64, 5, 1)
    for row in range(64):
        ep, t = batch["obs"]["state"][row]
        assert bool(batch["human"][row]) == (ep % 3 == 0)
        n = int(batch["action_mask"][row].sum())
        np.testing.assert_array_equal(batch["action"][row, :n, 0], 10 * ep + t + np.arange(n))
        if batch["valid"][row]:
            assert n == 5 and batch["next_obs"]["state"][row][1] == t + 5


# ------------------------------------------------------------------ the chunked update


def window_batch(n: int = 32, h: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"state": torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32)),
            "next_state": torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32)),
            "action": torch.from_numpy(rng.uniform(-1, 1, size=(n, h, 2)).astype(np.float32)),
            "reward": torch.from_numpy(rng.uniform(size=(n, h)).astype(np.float32)),
            "done": torch.zeros(n), "valid": torch.from_numpy((np.arange(n) % 4 != 0).astype(np.float32)),
            "action_mask": torch.ones(n, h), "human": torch.from_numpy((np.arange(n) % 2).astype(np.float32))}


def test_invalid_windows_leave_the_critic_loss_and_the_policy_emits_whole_chunks() -> None:
    cfg = PolicyConfig(3, 2, (32, 32), chunk=5)
    batch = window_batch()
    changed = {**batch, "reward": batch["reward"].clone()}
    changed["reward"][batch["valid"] == 0] += 100.0  # garbage targets on the masked rows only
    runs = []
    for b in (batch, changed):
        td3 = ChunkedTD3(cfg, TD3Config(), torch.device("cpu"), seed=1)
        metrics = td3.update(b, bc_weight=1.0)
        runs.append((metrics["critic_loss"], [p.detach().clone() for p in td3.critic.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(p, q) for p, q in zip(runs[0][1], runs[1][1], strict=True))
    assert metrics["valid_share"] == pytest.approx(0.75)
    td3.update({**batch, "valid": torch.ones(32)}, bc_weight=1.0)  # the actor step (policy_delay 2) runs too

    policy = td3.policy
    out = policy(batch["state"]).detach()
    assert out.shape == (32, 5, 2) and float(out.abs().max()) <= 1.0
    again = policy_from_safetensors_bytes(cfg, policy_to_safetensors_bytes(policy))
    torch.testing.assert_close(again(batch["state"]), out)
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        PolicyConfig(3, 2, chunk=0)


def test_device_batch_and_update_from_sampled_windows() -> None:
    buffers = DualBuffer(SPEC, 256, 256)
    for ep in range(6):
        for t in episode_steps(ep, 10, rewards=[0] * 9 + [1], human=[ep < 3] * 10):
            buffers.add(t)
    batch = device_batch(sample_sequences(buffers, 16, 0.5, 5, np.random.default_rng(0)), SPEC,
                               torch.device("cpu"))
    td3 = ChunkedTD3(PolicyConfig(2, 1, (16,), chunk=5), TD3Config(), torch.device("cpu"), seed=0)
    td3.set_normalization(np.zeros(2), np.ones(2), [-100.0], [100.0])
    metrics = td3.update(batch, bc_weight=1.0)
    assert np.isfinite(metrics["critic_loss"]) and 0 < metrics["valid_share"] <= 1


# ------------------------------------------------------------------ the actor executes chunks


def chunk_policy(spec, h: int) -> Policy:
    """A chunked policy whose k-th action of every chunk is dx = 0.1 * (k + 1), zero dy dz, gripper held."""
    policy = Policy(PolicyConfig(spec.state_dim, spec.action_dim, (8,), chunk=h))
    policy.set_normalization(np.zeros(spec.state_dim), np.ones(spec.state_dim), spec.action.low, spec.action.high)
    raw = np.zeros((h, spec.action_dim), np.float32)
    raw[:, 0] = 0.1 * (np.arange(h) + 1)
    raw[:, 3] = 1.0  # the middle of [0, 2]: hold the gripper
    low, high = np.asarray(spec.action.low), np.asarray(spec.action.high)
    normalised = 2 * (raw - low) / (high - low) - 1
    with torch.no_grad():
        for p in policy.actor.parameters():
            p.zero_()
        policy.actor.net[-1].bias.copy_(torch.from_numpy(np.arctanh(normalised).reshape(-1)))
    return policy


class Human:
    """Takes over on ticks 4 and 5, presses "failure" on tick 10; drives like the hold action."""

    def __init__(self) -> None:
        self.t = 0

    def reset(self, demonstrating: bool = False) -> None:
        self.t = 0

    def poll(self, obs):
        events = HumanEvents(takeover=self.t in (4, 5), end="failure" if self.t == 10 else None)
        self.t += 1
        return events

    def action(self, obs):
        return np.array([0.0, 0.0, 0.0, 1.0], np.float32)

    def close(self) -> None:
        pass


def test_the_actor_runs_each_chunk_open_loop_and_a_takeover_drops_the_rest(tmp_path: Path) -> None:
    env = SimPickCube(seed=3)
    runner = PolicyRunner(env.spec, 0.0, np.random.default_rng(0))
    runner.policy = chunk_policy(env.spec, 3)
    calls = []
    runner.policy.register_forward_hook(lambda *_: calls.append(1))
    o = env.reset(seed=0)
    got = [runner.act(o, explore=False)[0] for _ in range(7)]  # the same obs: only the plan moves on
    np.testing.assert_allclose(got, [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1], atol=1e-5)
    assert len(calls) == 3  # one forward pass per chunk

    state = StateDir(tmp_path / "state", "t")
    outbox = Outbox(tmp_path / "state" / "outbox")
    cfg = ActorConfig(fps=0, max_episodes=1, exploration_noise=0.0, seed=0)
    loop = ActorLoop(cfg, env, Human(), Link(chunk_policy(env.spec, 3)), outbox, state, threading.Event())
    loop.run()
    items = [i for b in outbox.pending_after(0, timeout=0) for i in codec.decode_items(b, env.spec)]
    steps = [i for i in items if isinstance(i, Step)]
    state.close()
    env.close()
    assert [s.is_intervention for s in steps] == [t in (4, 5) for t in range(11)]
    dx = [round(float(s.action[0]), 3) for s in steps]
    # ticks 0-2 one chunk, 3 starts the next, 4-5 the human (the chunk's rest is dropped), 6 plans anew
    assert dx == [0.1, 0.2, 0.3, 0.1, 0.0, 0.0, 0.1, 0.2, 0.3, 0.1, 0.2]


# ------------------------------------------------------------------ a real learner and actor, --chunk 5


@pytest.mark.e2e
def test_learner_and_actor_train_and_run_a_chunked_policy_over_grpc(spawn, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "learner"
    learner = spawn("learner", "--port", str(port), "--output-dir", str(out), "--chunk", "5", "--demo-episodes", "2",
                    "--offline-steps", "30", "--publish-every", "20", "--batch-size", "32", "--torch-threads", "1",
                    "--hidden", "32,32", name="learner")
    actor = spawn("actor", "--learner", f"127.0.0.1:{port}", "--env", "sim", "--fps", "0", "--state-dir",
                  str(tmp_path / "actor"), "--seed", "0", name="actor")
    train_online(learner, actor, f"127.0.0.1:{port}", "online with a chunked policy applied by the actor (v>=2)")
    ckpt = sorted((out / "checkpoints").glob("step-*/td3.json"))[-1]
    assert json.loads(ckpt.read_text())["policy_config"]["chunk"] == 5
    from hilrl.learner.networks import load_policy_file

    policy = load_policy_file(out / "policy.safetensors")
    assert policy.cfg.chunk == 5 and policy(torch.zeros(1, policy.cfg.state_dim)).shape == (1, 5, 4)
    assert "Traceback" not in actor.stderr and "Traceback" not in learner.stderr
