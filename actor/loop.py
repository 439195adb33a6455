"""The control loop: observation -> action source -> safety clamp -> arm -> record, at a fixed rate.

Network and weight loading happen on the link's threads; between ticks the loop only swaps in a
policy the link has already verified and built. Every executed step is recorded with who produced
it (`is_intervention`) and goes to the durable outbox in batches.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from hilrl.actor.config import ActorConfig
from hilrl.actor.link import LearnerLink
from hilrl.actor.outbox import Outbox
from hilrl.actor.replay import ReplaySource
from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.recording import StepRecorder
from hilrl.buffers.spec import Spec, state_vector
from hilrl.learner.networks import Policy
from hilrl.protos import codec
from hilrl.protos.v1 import learner_pb2 as pb

log = logging.getLogger(__name__)


@dataclass
class Stats:
    episodes: int = 0
    steps: int = 0
    interventions: int = 0
    takeovers: int = 0
    successes: int = 0
    autonomous_episodes: int = 0
    autonomous_successes: int = 0
    demo_episodes: int = 0
    rerecorded: int = 0
    outbox_full_waits: int = 0
    overruns: int = 0
    periods_ms: list[float] = field(default_factory=list)

    def summary(self, weight_version: int, unacked: int) -> dict:
        p = np.asarray(self.periods_ms[-100_000:]) if self.periods_ms else np.zeros(1)
        return {
            "episodes": self.episodes, "steps": self.steps, "interventions": self.interventions,
            "takeovers": self.takeovers, "demo_episodes": self.demo_episodes, "rerecorded": self.rerecorded,
            "outbox_full_waits": self.outbox_full_waits,
            "success_rate": round(self.successes / self.episodes, 4) if self.episodes else 0.0,
            "autonomous_episodes": self.autonomous_episodes,
            "autonomous_success_rate": (round(self.autonomous_successes / self.autonomous_episodes, 4)
                                        if self.autonomous_episodes else 0.0),
            "loop_period_p50_ms": round(float(np.percentile(p, 50)), 3),
            "loop_period_p99_ms": round(float(np.percentile(p, 99)), 3),
            "overruns": self.overruns, "weight_version": weight_version, "unacked": unacked,
        }


class PolicyRunner:
    """Deterministic policy plus Gaussian exploration noise, clamped to the action bounds."""

    def __init__(self, spec: Spec, noise: float, rng: np.random.Generator) -> None:
        self.spec = spec
        self.low = np.asarray(spec.action.low, dtype=np.float32)
        self.high = np.asarray(spec.action.high, dtype=np.float32)
        self.noise_std = noise * (self.high - self.low) / 2
        self.rng = rng
        self.policy: Policy | None = None
        self.version = 0

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], explore: bool) -> np.ndarray | None:
        """The policy's action (plus noise when exploring), clamped; None when the policy output is NaN/inf."""
        assert self.policy is not None
        state = torch.from_numpy(state_vector(obs, self.spec)).unsqueeze(0)
        action = self.policy(state)[0].numpy()
        if not np.all(np.isfinite(action)):
            log.error("policy v%d produced a non-finite action %s", self.version, action)
            return None
        if explore and self.noise_std.any():
            action = action + self.rng.normal(0.0, 1.0, size=action.shape) * self.noise_std
        return self.clamp(action)

    def hold(self, env) -> np.ndarray:
        """The arm's "do nothing" action: the robot's own if it defines one, else the middle of the bounds
        (for the sim's [dx, dy, dz, g] that is zero motion with the gripper held as it is)."""
        hold = getattr(env, "hold_action", None)
        return self.clamp(hold() if callable(hold) else (self.low + self.high) / 2)

    def clamp(self, action: np.ndarray) -> np.ndarray:
        """The safety clamp: the arm never receives an action outside the spec's bounds, or NaN."""
        action = np.asarray(action, dtype=np.float32)
        if not np.all(np.isfinite(action)):
            log.error("non-finite action %s replaced by the hold action", action)
            action = np.where(np.isfinite(action), action, (self.low + self.high) / 2)
        return np.clip(action, self.low, self.high).astype(np.float32)


class ActorLoop:
    def __init__(self, cfg: ActorConfig, env, human, link: LearnerLink, outbox: Outbox, state,
                 stop: threading.Event, recorder: StepRecorder | None = None) -> None:
        self.cfg = cfg
        self.env = env
        self.human = human
        self.link = link
        self.outbox = outbox
        self.state = state
        self.stop = stop
        self.recorder = recorder
        self.spec: Spec = env.spec
        self.rng = np.random.default_rng(cfg.seed)
        self.runner = PolicyRunner(self.spec, cfg.exploration_noise, self.rng)
        self.stats = Stats()
        self._items: list[pb.Item] = []
        self._period = 1.0 / cfg.fps if cfg.fps > 0 else 0.0

    # ------------------------------------------------------------------ main loop

    def run(self) -> dict:
        if isinstance(self.env, ReplaySource):
            return self._replay()
        said: set[str] = set()
        while not self.stop.is_set() and self.link.fatal is None:
            if self.cfg.max_episodes and self.stats.episodes >= self.cfg.max_episodes:
                break
            self._swap_weights()
            if self.outbox.full:  # finish nothing new until the learner has caught up; drop nothing
                if "full" not in said:
                    said.add("full")
                    self.stats.outbox_full_waits += 1
                    log.warning("outbox full (%.1f MB unacknowledged, limit %.1f MB): holding the arm and starting "
                                "no new episode until the learner acknowledges", self.outbox.nbytes / 2**20,
                                self.outbox.max_bytes / 2**20)
                self.stop.wait(0.1)
                continue
            said.discard("full")
            mode = self._mode()
            if mode is None:
                self.stop.wait(0.1)
                continue
            if mode.startswith("wait"):
                if mode not in said:
                    said.add(mode)
                    log.info({"wait_learner": f"waiting for the learner at {self.cfg.learner} ...",
                              "wait_weights": "learner is pretraining; waiting for the first weights ..."}[mode])
                self.stop.wait(0.1)
                continue
            self._episode(human_episode=(mode == "human"))
        return self.stats.summary(self.runner.version, len(self.outbox))

    def _mode(self) -> str | None:
        stage = self.link.stage
        if stage is None:
            return "wait_learner"
        if stage == "waiting_for_demos":
            return "human"
        return "policy" if self.runner.policy is not None else "wait_weights"

    def _swap_weights(self) -> None:
        new = self.link.take_policy()
        if new is not None:
            self.runner.version, self.runner.policy = new
            self.link.weight_version_applied = self.runner.version
            log.info("applied weights v%d", self.runner.version)

    # ------------------------------------------------------------------ one episode

    def _episode(self, human_episode: bool) -> None:
        """One episode. In a demonstration every step is the human's; otherwise the policy acts
        until the human holds the takeover, and the human's buttons can end or discard it."""
        episode = self.state.take_episode_index()
        obs = self.env.reset(seed=int(self.rng.integers(2**31 - 1)))
        self.human.reset(demonstrating=human_episode)
        interventions = takeovers = 0
        t, success, ended, was_human, why = 0, False, False, False, ""
        next_tick = time.perf_counter()
        last_tick = None
        while not ended:
            tick = time.perf_counter()
            if last_tick is not None:
                self.stats.periods_ms.append((tick - last_tick) * 1e3)
            last_tick = tick
            self._swap_weights()  # between ticks: a reference swap, the policy was built off-loop
            events = self.human.poll(obs)
            human = human_episode or events.takeover
            takeovers += int(human and not was_human)
            was_human = human
            if events.estop:
                action, why = self.runner.hold(self.env), "emergency stop"
                self.stop.set()
            elif human:
                action = self.runner.clamp(self.human.action(obs))
            else:
                action = self.runner.act(obs, explore=True)
                if action is None:
                    action, why = self.runner.hold(self.env), "policy output was NaN/inf"
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            if events.end in ("success", "failure"):  # the human's verdict overrides the env's
                reward, terminated = float(events.end == "success"), True
            cut_short = self.stop.is_set() or bool(why) or events.end == "rerecord"
            interrupted = cut_short and not (terminated or truncated)
            ended = terminated or truncated or interrupted
            self._record(Step(obs=obs, action=action, reward=reward, terminated=terminated,
                              truncated=truncated or interrupted, is_intervention=human,
                              episode=episode, step=t, final_obs=next_obs if ended else None))
            interventions += int(human)
            success = success or bool(info.get("success", False)) or events.end == "success"
            obs = next_obs
            t += 1
            if self._period:
                next_tick += self._period
                delay = next_tick - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    self.stats.overruns += 1
                    next_tick = time.perf_counter()
            if events.end == "rerecord":
                self._items.append(codec.encode_item(Discard(episode)))
                why = "re-record: discarded on the learner"
        self._flush()
        if why:
            log.warning("episode %d ended early: %s", episode, why)
        if events.end == "rerecord":
            self.stats.rerecorded += 1
            return
        self._count(t, interventions, takeovers, success, human_episode)

    def _count(self, steps: int, interventions: int, takeovers: int, success: bool, human_episode: bool) -> None:
        s = self.stats
        s.episodes += 1
        s.steps += steps
        s.interventions += interventions
        s.takeovers += takeovers
        s.successes += int(success)
        s.demo_episodes += int(human_episode)
        if takeovers == 0:
            s.autonomous_episodes += 1
            s.autonomous_successes += int(success)
        kind = "demo" if human_episode else ("policy+takeover" if takeovers else "policy")
        log.info("episode %d (%s): %d steps, %s, weights v%d", s.episodes, kind, steps,
                 "success" if success else "failure", self.runner.version)

    # ------------------------------------------------------------------ replay

    def _replay(self) -> dict:
        """Send every recorded episode as it was executed, under this actor's episode numbers."""
        for recorded in self.env.episodes():
            if self.stop.is_set() or self.link.fatal is not None:
                break
            if self.cfg.max_episodes and self.stats.episodes >= self.cfg.max_episodes:
                break
            episode = self.state.take_episode_index()
            takeovers, previous = 0, False
            for step in recorded:
                takeovers += int(step.is_intervention and not previous)
                previous = step.is_intervention
                self._record(replace(step, episode=episode))
                if self._period:
                    time.sleep(self._period)
            self._flush()
            last = recorded[-1]
            self._count(len(recorded), sum(s.is_intervention for s in recorded), takeovers,
                        last.terminated and last.reward > 0, all(s.is_intervention for s in recorded))
        return self.stats.summary(self.runner.version, len(self.outbox))

    # ------------------------------------------------------------------ recording

    def _record(self, step: Step) -> None:
        if self.recorder is not None:
            self.recorder.add(step)
        self._items.append(codec.encode_step(step))
        if len(self._items) >= self.cfg.batch_steps:
            self._flush()

    def _flush(self) -> None:
        if self._items:
            self.outbox.put(pb.TransitionBatch(actor_id=self.link.actor_id, items=self._items))
            self._items = []
