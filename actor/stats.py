"""What the control loop counts: episodes and who acted, tick periods, holds and clamps; the summary the
actor prints at exit and the `LoopStats` it sends the learner with every batch."""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

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

    def count_episode(self, steps: int, interventions: int, takeovers: int, success: bool, human_episode: bool,
                      weight_version: int) -> None:
        """One finished (not re-recorded) episode, said on the console."""
        self.episodes += 1
        self.steps += steps
        self.interventions += interventions
        self.takeovers += takeovers
        self.successes += int(success)
        self.demo_episodes += int(human_episode)
        if takeovers == 0:
            self.autonomous_episodes += 1
            self.autonomous_successes += int(success)
        kind = "demo" if human_episode else ("policy+takeover" if takeovers else "policy")
        log.info("episode %d (%s): %d steps, %s, weights v%d", self.episodes, kind, steps,
                 "success" if success else "failure", weight_version)

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
