"""No learner (``hilrl actor --checkpoint DIR``): the stand-ins for the link, the outbox and the state
directory (`hilrl.actor.interfaces`), so the control loop runs a trained policy unchanged.

The link hands out the checkpoint's policy once and is always online; the outbox keeps nothing
(nothing is streamed); episodes are numbered from 0.
"""

from __future__ import annotations

import threading

from hilrl.learner.networks import Policy
from hilrl.protos.v1 import learner_pb2 as pb


class CheckpointLink:
    """A `Link` to no learner: one policy, version 0."""

    stage: str | None = "online"
    fatal: str | None = None
    actor_id = "checkpoint"

    def __init__(self, policy: Policy) -> None:
        self._policy: tuple[int, Policy] | None = (0, policy)
        self.weight_version_applied = 0
        self.loop_stats: pb.LoopStats | None = None
        self.connected = threading.Event()
        self.connected.set()

    def take_policy(self) -> tuple[int, Policy] | None:
        new, self._policy = self._policy, None
        return new


class NullOutbox:
    """An `Outbox` that keeps nothing: never full, nothing waits for an acknowledgement."""

    full = False
    nbytes = max_bytes = last_acked = 0

    def stage(self, item: pb.Item) -> None:
        pass

    def put(self, batch: pb.TransitionBatch) -> int:
        return 0

    def __len__(self) -> int:
        return 0


class LocalEpisodes:
    """An `EpisodeCounter` from 0, in memory."""

    def __init__(self) -> None:
        self._next = 0

    def take_episode_index(self) -> int:
        self._next += 1
        return self._next - 1
