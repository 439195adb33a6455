"""The control loop: observation -> action source -> safety clamp -> arm -> record, at a fixed rate.

Network and weight loading happen on the link's threads; between ticks the loop only swaps in a
policy the link has already verified and built. Every executed step is recorded with who produced
it (`is_intervention`) and goes to the durable outbox, written by a thread of its own (each step
to the outbox's journal at once, then in batches that are fsynced; a slow disk never delays a tick).

Every executed action passes the safety clamp (`hilrl.actor.safety`); a tick that comes more than
``--watchdog-periods`` periods late holds the arm instead; a lost learner either changes nothing
(``--on-learner-lost keep``) or ends the policy episode with a hold and starts none until it is
back (``hold``). ``--schedule`` sets the human/policy episode rhythm; a real arm waits for the
operator's go after its reset.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from hilrl.actor.config import ActorConfig
from hilrl.actor.human import Schedule
from hilrl.actor.link import LearnerLink
from hilrl.actor.outbox import Outbox, OutboxWriter
from hilrl.actor.replay import ReplaySource
from hilrl.actor.residual_base import ResidualBaseEnv
from hilrl.actor.safety import LearnerWatch, Safety, limits_for
from hilrl.actor.success import SuccessGate
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
    ticks: int = 0
    watchdog_holds: int = 0
    learner_lost: int = 0
    learner_lost_holds: int = 0
    first_tick: float = 0.0
    last_tick: float = 0.0
    episode_s: float = 0.0  # time spent inside episodes (first tick to the end of the last tick's period)
    clamps: dict[str, int] = field(default_factory=dict)
    periods_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    def loop_stats(self, recent: int = 1000) -> pb.LoopStats:
        """What the learner shows for this actor: period percentiles over the most recent ticks."""
        p = np.fromiter(itertools.islice(reversed(self.periods_ms), recent), float) if self.periods_ms else np.zeros(1)
        p50, p99 = np.percentile(p, [50, 99])
        return pb.LoopStats(period_p50_ms=float(p50), period_p99_ms=float(p99), ticks=self.ticks,
                            overruns=self.overruns, watchdog_holds=self.watchdog_holds,
                            safety_clamps=sum(self.clamps.values()))

    def summary(self, weight_version: int, unacked: int) -> dict:
        p = np.asarray(self.periods_ms) if self.periods_ms else np.zeros(1)
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
            "ticks": self.ticks, "loop_s": round(self.last_tick - self.first_tick, 3),
            "episode_s": round(self.episode_s, 3),
            "watchdog_holds": self.watchdog_holds, "learner_lost": self.learner_lost,
            "learner_lost_holds": self.learner_lost_holds, "safety_clamps": dict(self.clamps),
        }


class PolicyRunner:
    """Deterministic policy plus Gaussian exploration noise, clamped to the action bounds.

    A chunked policy (``PolicyConfig.chunk`` h > 1, learner/chunked.py) plans h actions at once; `act`
    returns them one per call (open loop, fresh exploration noise on each) and plans again after the
    last. `drop_plan` discards the rest of a chunk: the loop calls it when a step is not the policy's
    (a takeover, a hold) and at every episode start, so a takeover stays instant.
    """

    def __init__(self, spec: Spec, noise: float, rng: np.random.Generator) -> None:
        self.spec = spec
        self.low = np.asarray(spec.action.low, dtype=np.float32)
        self.high = np.asarray(spec.action.high, dtype=np.float32)
        self.noise_std = noise * (self.high - self.low) / 2
        self.rng = rng
        self.policy: Policy | None = None
        self.version = 0
        self._plan: deque[np.ndarray] = deque()  # the rest of the current action chunk (chunked policies)

    def drop_plan(self) -> None:
        """Forget the rest of the current action chunk (the next `act` plans anew)."""
        self._plan.clear()

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], explore: bool) -> np.ndarray | None:
        """The policy's action (plus noise when exploring), clamped; None when the policy output is NaN/inf."""
        assert self.policy is not None
        chunked = getattr(getattr(self.policy, "cfg", None), "chunk", 1) > 1
        if chunked and self._plan:  # open loop: the next action of the current chunk
            action = self._plan.popleft()
        else:
            state = torch.from_numpy(state_vector(obs, self.spec)).unsqueeze(0)
            images = {f.name: torch.from_numpy(obs[f.name]).unsqueeze(0) for f in self.spec.image_features}
            action = self.policy(state, images or None)[0].numpy()
            if not np.all(np.isfinite(action)):
                log.error("policy v%d produced a non-finite action %s", self.version, action)
                return None
            if chunked:  # [h, A]: execute the first now, keep the rest
                self._plan.extend(action[1:])
                action = action[0]
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
                 stop: threading.Event, recorder: StepRecorder | None = None, standalone: bool = False) -> None:
        """``standalone``: no learner (``--checkpoint``): the link only hands out the policy once."""
        self.cfg = cfg
        self.env = env
        self.human = human
        self.link = link
        self.outbox = outbox
        self.state = state
        self.stop = stop
        self.recorder = recorder
        self.spec: Spec = env.spec
        self.success_gate = SuccessGate.from_config(cfg.success)  # None: the env (sim) or the buttons judge
        if self.success_gate is not None:
            self.success_gate.check_spec(tuple(f.name for f in self.spec.observation))
        self.rng = np.random.default_rng(cfg.seed)
        self.runner = PolicyRunner(self.spec, cfg.exploration_noise, self.rng)
        self.stats = Stats()
        self._items: list[pb.Item] = []
        self._writer = OutboxWriter(outbox)
        self._period = 1.0 / cfg.fps if cfg.fps > 0 else 0.0
        self._watchdog_s = self._period * cfg.watchdog_periods if cfg.watchdog_periods > 0 else 0.0
        self.schedule = Schedule(cfg.schedule)
        self.watch = None if standalone else LearnerWatch(link, outbox, cfg.learner_lost_after_s,
                                                          cfg.on_learner_lost)
        self.safety: Safety | None = None
        if not isinstance(env, ReplaySource):
            self.safety = Safety(self.spec, limits_for(env, cfg.max_action_delta, cfg.workspace))
            self.stats.clamps = self.safety.counts

    # ------------------------------------------------------------------ main loop

    def run(self) -> dict:
        """Episodes until stopped (or --max-episodes); the summary. Every batch is in the outbox on return."""
        try:
            return self._replay() if isinstance(self.env, ReplaySource) else self._run()
        finally:
            if self._writer.failing:
                self._writer.abandon()
            self._writer.drain()

    def _run(self) -> dict:
        said: set[str] = set()
        while not self.stop.is_set() and self.link.fatal is None:
            if self.cfg.max_episodes and self.stats.episodes >= self.cfg.max_episodes:
                break
            self._swap_weights()
            if self._writer.failing:  # the outbox's disk refuses writes: nothing new until it takes them again
                if "disk" not in said:
                    said.add("disk")
                    log.warning("the outbox cannot be written (%s): holding the arm and starting no new episode",
                                self._writer.failing)
                self.stop.wait(0.1)
                continue
            said.discard("disk")
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
            if mode.startswith("wait"):
                if mode not in said:
                    said.add(mode)
                    log.info({"wait_learner": f"waiting for the learner at {self.cfg.learner} ...",
                              "wait_weights": "learner is pretraining; waiting for the first weights ...",
                              "wait_learner_lost": "learner lost (--on-learner-lost hold): the arm holds and no "
                                                   "policy episode starts until it is back"}[mode])
                self.stop.wait(0.1)
                continue
            said.clear()
            scheduled = mode.endswith("*")  # the schedule chose this episode's kind
            mode = mode.rstrip("*")
            if scheduled:
                log.info("next: %s%s", self.schedule.describe(),
                         " (demonstrate: you drive the whole episode)" if mode == "human" else "")
            if self._episode(human_episode=(mode == "human")) and scheduled:
                self.schedule.done()
        self._writer.drain()  # before counting what is unacknowledged
        return self.stats.summary(self.runner.version, len(self.outbox))

    def _mode(self) -> str:
        stage = self.link.stage
        if stage is None:
            return "wait_learner"
        if stage == "waiting_for_demos":
            return "human"
        if self.runner.policy is None:
            return "wait_weights"
        kind = self.schedule.next() if self.schedule else "policy"
        if kind == "policy" and self._policy_held():
            return "wait_learner_lost"
        return kind + "*" if self.schedule else kind

    def _policy_held(self) -> bool:
        """Check the learner link (said on the console when it changes); True: the policy must not act."""
        if self.watch is None:
            return False
        was = self.watch.is_lost
        lost = self.watch.lost(self.runner.version)
        self.stats.learner_lost += int(lost and not was)
        return self.watch.hold

    def _swap_weights(self) -> None:
        new = self.link.take_policy()
        if new is not None:
            self.runner.version, self.runner.policy = new
            self.link.weight_version_applied = self.runner.version
            log.info("applied weights v%d", self.runner.version)

    def _hold(self) -> np.ndarray:
        hold = self.runner.hold(self.env)
        return self.safety.hold(hold) if self.safety is not None else hold

    def _wait_for_go(self, obs: dict[str, np.ndarray], human_episode: bool) -> None:
        """Real arm at its rest pose: wait for the operator's go (gamepad LB, key g) or an e-stop."""
        go = getattr(self.human, "go", None)
        if not getattr(self.env, "needs_go", False) or go is None:
            return
        go()  # a press from before the arm reached its rest pose does not count
        log.info("arm at its rest pose: press go (gamepad LB / key g) to start the %s episode",
                 "human (demonstration)" if human_episode else "policy")
        while not self.stop.is_set():
            if go():
                return
            if self.human.poll(obs).estop:
                log.warning("emergency stop while waiting for go")
                self.stop.set()
                return
            self.stop.wait(0.05)

    # ------------------------------------------------------------------ one episode

    def _episode(self, human_episode: bool) -> bool:
        """One episode; False when it was re-recorded (so it is done again). In a demonstration every
        step is the human's; otherwise the policy acts until the human holds the takeover, and the
        human's buttons can end or discard it."""
        obs = self.env.reset(seed=int(self.rng.integers(2**31 - 1)))
        self._wait_for_go(obs, human_episode)
        if self.stop.is_set():
            return False
        self.human.reset(demonstrating=human_episode)  # after the go: drops verdicts pressed while waiting
        if self.success_gate is not None:
            self.success_gate.reset()
        episode = self.state.take_episode_index()
        self.runner.drop_plan()  # a chunk never carries over into a new episode
        if self.safety is not None:
            self.safety.reset(self.runner.hold(self.env))
        interventions = takeovers = 0
        t, success, ended, was_human, why = 0, False, False, False, ""
        next_tick = time.perf_counter()
        last_tick = None
        while not ended:
            tick = time.perf_counter()
            late = False
            if last_tick is not None:
                gap = tick - last_tick
                self.stats.periods_ms.append(gap * 1e3)
                late = bool(self._watchdog_s) and gap > self._watchdog_s
            else:
                episode_start = time.monotonic()
                self.stats.first_tick = self.stats.first_tick or episode_start
            last_tick = tick
            self.stats.ticks += 1
            self._swap_weights()  # between ticks: a reference swap, the policy was built off-loop
            policy_held = self._policy_held()
            events = self.human.poll(obs)
            human = human_episode or events.takeover
            takeovers += int(human and not was_human)
            was_human = human
            if events.estop:
                action, why = self._hold(), "emergency stop"
                self.stop.set()
            elif late:
                self.stats.watchdog_holds += 1
                log.warning("watchdog: tick %d of episode %d came %.0f ms after the previous one (limit %.0f ms); "
                            "holding the arm for this tick", t, episode, gap * 1e3, self._watchdog_s * 1e3)
                action = self._hold()
            elif human:
                action = self._safe(self.human.action(obs), obs)
            else:
                action = self.runner.act(obs, explore=True)
                if action is None:
                    action, why = self._hold(), "policy output was NaN/inf"
                elif policy_held:
                    action, why = self._hold(), "learner lost (--on-learner-lost hold)"
                    self.stats.learner_lost_holds += 1
                else:
                    action = self._safe(action, obs)
            if human or late or events.estop or policy_held:  # not the policy's step: drop the rest of a chunk
                self.runner.drop_plan()
                if isinstance(self.env, ResidualBaseEnv):  # ... and of the residual base's (a LeRobot ACT)
                    self.env.drop_plan()
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            if self.success_gate is not None:  # the detector judges; the human's verdict overrides it
                reward, terminated = self.success_gate.judge(next_obs, reward, terminated, events.end)
                info = {**info, "success": terminated and reward > 0}
            elif events.end in ("success", "failure"):  # the human's verdict overrides the env's
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
                next_tick = self._pace(next_tick)
            if events.end == "rerecord":
                self._append(codec.encode_item(Discard(episode)))
                why = "re-record: discarded on the learner"
        self.stats.last_tick = time.monotonic()
        self.stats.episode_s += self.stats.last_tick - episode_start
        self._flush()
        if why:
            log.warning("episode %d ended early: %s", episode, why)
        if events.end == "rerecord":
            self.stats.rerecorded += 1
            return False
        self._count(t, interventions, takeovers, success, human_episode)
        return True

    def _pace(self, next_tick: float) -> float:
        """Sleep until the next tick is due. A tick that ran late is an overrun; a lag of less than one
        period is caught up on the following ticks (the average rate holds), a longer one is dropped
        (never a burst of ticks to catch up)."""
        next_tick += self._period
        delay = next_tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
            return next_tick
        self.stats.overruns += 1
        return next_tick if -delay < self._period else time.perf_counter()

    def _safe(self, action: np.ndarray, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.safety.clamp(action, obs) if self.safety is not None else self.runner.clamp(action)

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
        self._writer.drain()
        return self.stats.summary(self.runner.version, len(self.outbox))

    # ------------------------------------------------------------------ recording

    def _record(self, step: Step) -> None:
        if self.recorder is not None:
            self.recorder.add(step)
        self._append(codec.encode_step(step))
        if len(self._items) >= self.cfg.batch_steps:
            self._flush()

    def _append(self, item: pb.Item) -> None:
        self._items.append(item)
        self._writer.stage(item)  # journaled at once: a kill before the batch closes loses nothing

    def _flush(self) -> None:
        if self._items:
            self.link.loop_stats = self.stats.loop_stats()
            self._writer.put(pb.TransitionBatch(actor_id=self.link.actor_id, items=self._items))
            self._items = []
