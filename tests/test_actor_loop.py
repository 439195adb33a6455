"""The control loop's human-in-the-loop paths on the real sim: takeover labels, buttons, e-stop, NaN policy.

The learner link is a stand-in here (stage and weights are handed in directly); the network path
is covered by test_e2e. Everything the loop sends is read back from its real outbox.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from hilrl.actor.config import ActorConfig
from hilrl.actor.human import HumanEvents
from hilrl.actor.loop import ActorLoop
from hilrl.actor.outbox import Outbox, StateDir
from hilrl.buffers.assembler import Discard, Step
from hilrl.hardware.expert import ScriptedExpert
from hilrl.hardware.sim import SimPickCube
from hilrl.learner.networks import Policy, PolicyConfig
from hilrl.protos import codec


class Link:
    """Just what the loop reads from a learner link: an online learner that already sent weights."""

    def __init__(self, policy: Policy) -> None:
        self.stage, self.fatal, self.actor_id, self.weight_version_applied = "online", None, "t", 0
        self._policy: tuple[int, Policy] | None = (1, policy)

    def take_policy(self):
        new, self._policy = self._policy, None
        return new


class ScriptedHuman:
    """A person with a gamepad, as a script: `plan[t]` is what they do on tick t of the first episode;
    in any later episode they press "failure" on tick 2."""

    def __init__(self, plan: dict[int, HumanEvents]) -> None:
        self.plan, self.t, self.expert, self.episodes = plan, 0, ScriptedExpert(), 0

    def reset(self, demonstrating: bool = False) -> None:
        self.t = 0
        self.episodes += 1
        if self.episodes > 1:
            self.plan = {2: HumanEvents(end="failure")}

    def poll(self, obs):
        events = self.plan.get(self.t, HumanEvents())
        self.t += 1
        return events

    def action(self, obs):
        return self.expert.act(obs)

    def close(self) -> None:
        pass


def idle_policy(spec, nan: bool = False) -> Policy:
    policy = Policy(PolicyConfig(spec.state_dim, spec.action_dim, (8,)))
    policy.set_normalization(np.zeros(spec.state_dim), np.ones(spec.state_dim), spec.action.low, spec.action.high)
    with torch.no_grad():
        for p in policy.actor.parameters():
            p.fill_(float("nan") if nan else 0.0)
    return policy


def run_episode(tmp_path: Path, plan: dict[int, HumanEvents], nan: bool = False):
    env = SimPickCube(seed=3)
    state = StateDir(tmp_path / "state", "t")
    outbox = Outbox(tmp_path / "state" / "outbox")
    cfg = ActorConfig(fps=0, max_episodes=1, exploration_noise=0.0, seed=0)
    stop = threading.Event()
    loop = ActorLoop(cfg, env, ScriptedHuman(plan), Link(idle_policy(env.spec, nan)), outbox, state, stop)
    summary = loop.run()
    items = [i for b in outbox.pending_after(0, timeout=0) for i in codec.decode_items(b, env.spec)]
    state.close()
    env.close()
    return summary, items, stop


def test_takeover_starts_and_stops_exactly_on_hold_and_release(tmp_path: Path) -> None:
    plan = {t: HumanEvents(takeover=True) for t in range(4, 9)}
    plan[12] = HumanEvents(end="failure")
    summary, items, _ = run_episode(tmp_path, plan)
    steps = [i for i in items if isinstance(i, Step)]
    assert [s.is_intervention for s in steps] == [4 <= t < 9 for t in range(13)]
    assert summary["takeovers"] == 1 and summary["interventions"] == 5
    assert steps[-1].terminated and steps[-1].reward == 0.0 and steps[-1].final_obs is not None


def test_success_button_ends_with_the_sparse_reward(tmp_path: Path) -> None:
    summary, items, _ = run_episode(tmp_path, {5: HumanEvents(end="success")})
    steps = [i for i in items if isinstance(i, Step)]
    assert len(steps) == 6 and steps[-1].terminated and steps[-1].reward == 1.0
    assert summary["success_rate"] == 1.0 and summary["autonomous_episodes"] == 1


def test_rerecord_discards_the_episode_on_the_learner_and_it_is_done_again(tmp_path: Path) -> None:
    summary, items, _ = run_episode(tmp_path, {3: HumanEvents(end="rerecord")})
    first = [i for i in items[:5] if isinstance(i, Step)]
    assert len(first) == 4 and isinstance(items[4], Discard) and items[4].episode == first[0].episode
    assert first[-1].truncated and not first[-1].terminated  # closed, then thrown away
    again = [i for i in items[5:] if isinstance(i, Step)]
    assert len(again) == 3 and again[0].episode == first[0].episode + 1  # the re-recorded episode
    assert summary["rerecorded"] == 1 and summary["episodes"] == 1


def test_emergency_stop_holds_and_stops_the_actor(tmp_path: Path) -> None:
    _, items, stop = run_episode(tmp_path, {2: HumanEvents(estop=True)})
    steps = [i for i in items if isinstance(i, Step)]
    assert stop.is_set() and len(steps) == 3
    np.testing.assert_array_equal(steps[-1].action, [0, 0, 0, 1])  # zero motion, gripper held


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_policy_output_holds_and_ends_the_episode(tmp_path: Path) -> None:
    _, items, _ = run_episode(tmp_path, {}, nan=True)
    steps = [i for i in items if isinstance(i, Step)]
    assert len(steps) == 1 and steps[0].truncated
    np.testing.assert_array_equal(steps[0].action, [0, 0, 0, 1])
