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

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from hilrl.actor.config import ActorConfig
from hilrl.actor.human import NoTakeover, Schedule
from hilrl.actor.interfaces import EpisodeCounter, Link, Outbox
from hilrl.actor.outbox import OutboxWriter
from hilrl.actor.policy_runner import PolicyRunner
from hilrl.actor.replay import ReplaySource
from hilrl.actor.residual_base import ResidualBaseEnv
from hilrl.actor.safety import LearnerWatch, Safety, SafetyLimits, limits_for
from hilrl.actor.stats import Stats
from hilrl.actor.success import SuccessGate
from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.recording import StepRecorder
from hilrl.buffers.spec import Spec
from hilrl.hardware.arm import Arm, Env, Obs
from hilrl.hardware.human import EpisodeEnd, HumanEvents
from hilrl.protos import codec
from hilrl.protos.v1 import learner_pb2 as pb

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """One tick's action and who produced it; ``why`` ends the episode after this step (e-stop, a hold)."""

    action: np.ndarray
    human: bool = False
    events: HumanEvents = field(default_factory=HumanEvents)
    why: str = ""


@dataclass
class Episode:
    """How an episode went."""

    steps: int = 0
    success: bool = False
    total_reward: float = 0.0
    interventions: int = 0  # steps the human acted
    takeovers: int = 0  # times the human took over
    end: EpisodeEnd | None = None  # the human's verdict on the last step
    why: str = ""  # why it ended early, if it did


def run_episode(env: Env, obs: Obs, decide: Callable[[Obs, int], Decision], episode: int = 0,
                gate: SuccessGate | None = None, record: Callable[[Step], None] | None = None,
                stop: threading.Event | None = None, after_step: Callable[[Decision], None] | None = None) -> Episode:
    """Step ``env`` from ``obs`` until the episode ends: ``decide`` the action (and who acts), step, judge,
    ``record`` the executed step. The actor loop, ``hilrl eval`` and ``hilrl record`` all run this.

    Success: the detector (``gate``) judges where there is one, else the env; the human's verdict overrides
    both. A ``stop``, a decision's ``why`` or a re-record ends the episode at once (recorded as truncated).
    """
    result, was_human, ended = Episode(), False, False
    while not ended:
        t = result.steps
        d = decide(obs, t)
        result.takeovers += int(d.human and not was_human)
        was_human = d.human
        end = d.events.end
        next_obs, reward, terminated, truncated, info = env.step(d.action)
        if gate is not None:  # the detector judges; the human's verdict overrides it
            reward, terminated = gate.judge(next_obs, reward, terminated, end)
            info = {**info, "success": terminated and reward > 0}
        elif end in ("success", "failure"):  # the human's verdict overrides the env's
            reward, terminated = float(end == "success"), True
        cut_short = (stop is not None and stop.is_set()) or bool(d.why) or end == "rerecord"
        interrupted = cut_short and not (terminated or truncated)
        ended = terminated or truncated or interrupted
        if record is not None:
            record(Step(obs=obs, action=d.action, reward=reward, terminated=terminated,
                        truncated=truncated or interrupted, is_intervention=d.human,
                        episode=episode, step=t, final_obs=next_obs if ended else None))
        result.interventions += int(d.human)
        result.success = result.success or bool(info.get("success", False)) or end == "success"
        result.total_reward += reward
        result.steps, result.end, result.why = t + 1, end, d.why
        obs = next_obs
        if after_step is not None:
            after_step(d)
    return result


_SAYS = {  # what the console says, once, while the loop waits (or runs the residual base alone)
    "wait_learner": "waiting for the learner at {learner} ...",
    "wait_weights": "learner is pretraining; waiting for the first weights ...",
    "wait_demos": "the learner waits for demonstrations, which nobody can give on a joint-mode arm: seed it with "
                  "--demos, or run a residual session",
    "wait_learner_lost": "learner lost (--on-learner-lost hold): the arm holds and no policy episode starts until "
                         "it is back",
    "base": "the learner waits for data and a joint-mode arm cannot demonstrate: running the residual base alone "
            "(the untrained residual) until the first weights",
}


class ActorLoop:
    def __init__(self, cfg: ActorConfig, env: Arm | ReplaySource, human, link: Link, outbox: Outbox,
                 episodes: EpisodeCounter, stop: threading.Event, recorder: StepRecorder | None = None,
                 standalone: bool = False) -> None:
        """``standalone``: no learner (``--checkpoint``, hilrl.actor.standalone): nothing watches for a lost one."""
        self.cfg, self.env, self.human, self.link, self.outbox = cfg, env, human, link, outbox
        self.episodes, self.stop, self.recorder = episodes, stop, recorder
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
        self._last_tick: float | None = None  # the current episode's previous tick (perf_counter)
        self._next_tick = 0.0
        self._episode_start = 0.0
        self.schedule = Schedule(cfg.schedule)
        self.watch = None if standalone else LearnerWatch(link, outbox, cfg.learner_lost_after_s,
                                                          cfg.on_learner_lost)
        replay = isinstance(env, ReplaySource)  # a replay executes nothing: no limits to enforce
        self.safety = Safety(self.spec, SafetyLimits() if replay else limits_for(env, cfg.max_action_delta,
                                                                                  cfg.workspace))
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
            if mode.startswith("wait") or mode == "base":
                if mode not in said:
                    said.add(mode)
                    log.info(_SAYS[mode].format(learner=self.cfg.learner))
                if mode == "base":  # before the first weights, a residual actor runs its base alone
                    self._episode(human_episode=False)
                else:
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
            if not isinstance(self.human, NoTakeover):
                return "human"
            # a joint-mode arm: nobody can demonstrate; a residual actor runs its base (the untrained residual)
            return "base" if isinstance(self.env, ResidualBaseEnv) else "wait_demos"
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
            first = self.runner.policy is None
            self.runner.version, self.runner.policy = new
            self.link.weight_version_applied = self.runner.version
            log.info("applied weights v%d", self.runner.version)
            if first and (bound := self.runner.residual_bound()):
                log.info(bound)

    def _hold(self) -> np.ndarray:
        return self.safety.hold(self.runner.hold(self.env))

    def _wait_for_go(self, obs: Obs, human_episode: bool) -> None:
        """Real arm at its rest pose: wait for the operator's go (gamepad LB, key g) or an e-stop."""
        if not self.env.needs_go:
            return
        go = self.human.go  # a device without a go button always says True
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
        episode = self.episodes.take_episode_index()
        self.runner.drop_plan()  # a chunk never carries over into a new episode
        self.safety.reset(self.runner.hold(self.env))
        self._last_tick, self._next_tick = None, time.perf_counter()

        def after_step(d: Decision) -> None:
            if self._period:
                self._next_tick = self._pace(self._next_tick)
            if d.events.end == "rerecord":
                self._append(codec.encode_item(Discard(episode)))

        result = run_episode(self.env, obs, lambda o, t: self._decide(o, t, episode, human_episode), episode,
                             self.success_gate, self._record, self.stop, after_step)
        self.stats.last_tick = time.monotonic()
        self.stats.episode_s += self.stats.last_tick - self._episode_start
        self._flush()
        why = "re-record: discarded on the learner" if result.end == "rerecord" else result.why
        if why:
            log.warning("episode %d ended early: %s", episode, why)
        if result.end == "rerecord":
            self.stats.rerecorded += 1
            return False
        self.stats.count_episode(result.steps, result.interventions, result.takeovers, result.success,
                                 human_episode, self.runner.version)
        return True

    def _decide(self, obs: Obs, t: int, episode: int, human_episode: bool) -> Decision:
        """One tick: time it (a tick too late holds the arm), swap in new weights, ask the human, then
        the action: the human's, the policy's or a hold, through the safety clamp."""
        tick = time.perf_counter()
        late = False
        if self._last_tick is not None:
            gap = tick - self._last_tick
            self.stats.periods_ms.append(gap * 1e3)
            late = bool(self._watchdog_s) and gap > self._watchdog_s
        else:
            self._episode_start = time.monotonic()
            self.stats.first_tick = self.stats.first_tick or self._episode_start
        self._last_tick = tick
        self.stats.ticks += 1
        self._swap_weights()  # between ticks: a reference swap, the policy was built off-loop
        policy_held = self._policy_held()
        events = self.human.poll(obs)
        human = human_episode or events.takeover
        why = ""
        if events.estop:
            action, why = self._hold(), "emergency stop"
            self.stop.set()
        elif late:
            self.stats.watchdog_holds += 1
            log.warning("watchdog: tick %d of episode %d came %.0f ms after the previous one (limit %.0f ms); "
                        "holding the arm for this tick", t, episode, gap * 1e3, self._watchdog_s * 1e3)
            action = self._hold()
        elif human:
            action = self.safety.clamp(self.human.action(obs), obs)
        else:
            if self.runner.policy is not None:
                policy = self.runner.act(obs, explore=True)
            else:  # residual base episodes before the first weights (`_mode`: "base")
                policy = self.runner.act_base(obs, explore=True)
            if policy is None:
                action, why = self._hold(), "policy output was NaN/inf"
            elif policy_held:
                action, why = self._hold(), "learner lost (--on-learner-lost hold)"
                self.stats.learner_lost_holds += 1
            else:
                action = self.safety.clamp(policy, obs)
        if human or late or events.estop or policy_held:  # not the policy's step: drop the rest of a chunk
            self.runner.drop_plan()
            if isinstance(self.env, ResidualBaseEnv):  # ... and of the residual base's (a LeRobot ACT)
                self.env.drop_plan()
        return Decision(action, human, events, why)

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

    # ------------------------------------------------------------------ replay

    def _replay(self) -> dict:
        """Send every recorded episode as it was executed, under this actor's episode numbers."""
        for recorded in self.env.episodes():
            if self.stop.is_set() or self.link.fatal is not None:
                break
            if self.cfg.max_episodes and self.stats.episodes >= self.cfg.max_episodes:
                break
            episode = self.episodes.take_episode_index()
            takeovers, previous = 0, False
            for step in recorded:
                takeovers += int(step.is_intervention and not previous)
                previous = step.is_intervention
                self._record(replace(step, episode=episode))
                if self._period:
                    time.sleep(self._period)
            self._flush()
            last = recorded[-1]
            self.stats.count_episode(len(recorded), sum(s.is_intervention for s in recorded), takeovers,
                                     last.terminated and last.reward > 0, all(s.is_intervention for s in recorded),
                                     self.runner.version)
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
