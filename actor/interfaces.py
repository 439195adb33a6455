"""What the control loop needs of the learner side: a `Link` (weights in, loop statistics out), an
`Outbox` (where executed steps go, durably) and an `EpisodeCounter` (episode numbers never used twice).

With a learner these are `hilrl.actor.link.LearnerLink`, `hilrl.actor.outbox.Outbox` and
`hilrl.actor.outbox.StateDir`; with none (``--checkpoint``) they are the stand-ins of
`hilrl.actor.standalone`. The robot side is `hilrl.hardware.arm.Arm`.
"""

from __future__ import annotations

import threading
from typing import Protocol

from hilrl.learner.networks import Policy
from hilrl.protos.v1 import learner_pb2 as pb


class Link(Protocol):
    """The learner as the loop sees it."""

    stage: str | None  # the learner's stage ("waiting_for_demos", "pretraining", "online"); None: never reached
    fatal: str | None  # why the learner refused this actor for good (the loop stops)
    actor_id: str
    weight_version_applied: int  # the loop's policy version, reported back with each batch
    loop_stats: pb.LoopStats | None  # replaced (never mutated) by the loop, sent with each batch
    connected: threading.Event

    def take_policy(self) -> tuple[int, Policy] | None:
        """A new (version, policy) built off the loop's thread, once; None when there is none."""


class Outbox(Protocol):
    """Executed steps on their way to the learner: each staged at once, then closed into batches."""

    nbytes: int
    max_bytes: int
    last_acked: int

    @property
    def full(self) -> bool:
        """Unacknowledged batches over the limit: no new episode starts."""

    def stage(self, item: pb.Item) -> None:
        """Journal one item of the batch being filled (a kill loses nothing)."""

    def put(self, batch: pb.TransitionBatch) -> int:
        """Store a closed batch durably until the learner acknowledges it; its sequence number."""

    def __len__(self) -> int:
        """Batches not yet acknowledged."""


class EpisodeCounter(Protocol):
    def take_episode_index(self) -> int:
        """The next episode number (persisted before it is used, where that matters)."""
