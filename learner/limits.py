"""How much one learner process serves at once, and what it refuses beyond that.

Each connected actor holds two long calls (its transition stream and its weight subscription), and each
holds one gRPC worker thread for as long as it lasts. The worker pool is sized so that `max_actors` actors
leave `SPARE_WORKERS` threads free for the short calls (Hello, GetStatus, health checks), which therefore
keep answering however busy the streams are; a stream beyond `max_actors` is refused with
RESOURCE_EXHAUSTED (the actor retries with backoff and keeps its outbox). gRPC itself refuses calls beyond
`max_concurrent_rpcs`, so a flood of short calls queues in bounded memory.

Memory per transition stream is bounded by `stream_buffer_bytes`: the batches read ahead of the store (so
that waiting ones share one commit) stop being read when that many bytes wait, and gRPC's flow control
holds the sender back. The worst case for queued batches is about ``max_actors * (stream_buffer_bytes +
max_message_bytes)``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

SPARE_WORKERS = 8  # gRPC worker threads left for Hello, GetStatus and health while every stream is busy
QUEUED_RPCS = 64  # calls beyond the worker threads that gRPC queues before it answers RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class ServerLimits:
    max_actors: int = 32
    stream_buffer_bytes: int = 32 << 20

    def __post_init__(self) -> None:
        if self.max_actors < 1 or self.stream_buffer_bytes < 1:
            raise SystemExit(f"--max-actors ({self.max_actors}) and --stream-buffer-mb "
                             f"({self.stream_buffer_bytes >> 20}) must be at least 1")

    @property
    def workers(self) -> int:
        """gRPC worker threads: two long calls per actor, and the spare ones."""
        return 2 * self.max_actors + SPARE_WORKERS

    @property
    def max_concurrent_rpcs(self) -> int:
        return self.workers + QUEUED_RPCS


class StreamSlots:
    """At most `limit` concurrent calls of one kind (transition streams, or weight subscriptions)."""

    def __init__(self, limit: int, kind: str) -> None:
        self.limit, self.kind = limit, kind
        self.active = 0
        self._lock = threading.Lock()

    def enter(self) -> str | None:
        """Take a slot; returns why not (a message naming the limit) when all are taken."""
        with self._lock:
            if self.active >= self.limit:
                return (f"this learner already serves {self.limit} {self.kind} (--max-actors {self.limit}); "
                        "retrying: stop an actor, or start the learner with a larger --max-actors")
            self.active += 1
            return None

    def leave(self) -> None:
        with self._lock:
            self.active = max(0, self.active - 1)


class ByteBudget:
    """Bytes that may wait in one stream's read-ahead queue; `take` blocks while they are spent (one
    message is always let through, however large, so a stream never stalls)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def take(self, n: int, timeout: float) -> bool:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit, timeout=timeout)
            if ok:
                self.used += n
            return ok

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()
