"""The actors a learner has heard from: one `ActorRecord` per actor id, and who may use that id.

An actor id belongs to one actor state directory (its seq counter: ``instance_id``) and, while it
streams, to one actor process (``session_id``, sent in every Hello); `ActorTable` refuses a second
process (`ActorInUse`) and a second state directory (`ActorIdTaken`). It is not thread-safe: the
learner core (`learner/core.py`) calls it under its own lock.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


class ActorInUse(Exception):
    """Another actor process streams under the same actor id right now; the text says what to do."""


class ActorIdTaken(Exception):
    """The actor id's stored batches came from another state directory; the text says what to do."""


class ReservedActorId(ValueError):
    """The actor id is in a namespace the learner uses itself (seeded demonstrations); the text says what to do."""


@dataclass
class ActorRecord:
    actor_id: str
    last_seq: int = 0
    transitions: int = 0
    episodes: int = 0
    interventions: int = 0
    weight_version_applied: int = 0
    connected: bool = False
    loop_period_p50_ms: float = 0.0  # the actor's control-loop health, from its newest batch
    loop_period_p99_ms: float = 0.0
    overruns: int = 0
    watchdog_holds: int = 0
    safety_clamps: int = 0
    instance_id: str = ""  # the actor's state directory (its seq counter) whose batches are stored under this id
    session_id: str = ""  # the actor process of the newest Hello
    streams: int = 0  # live transition streams


class ActorTable:
    """The `ActorRecord` of every actor id, and which actor process each connection (peer) speaks for."""

    def __init__(self) -> None:
        self.records: dict[str, ActorRecord] = {}
        self._peer_session: dict[str, str] = {}  # connection -> actor process of its newest Hello

    def __contains__(self, actor_id: object) -> bool:
        return actor_id in self.records

    def get(self, actor_id: str) -> ActorRecord | None:
        return self.records.get(actor_id)

    def record(self, actor_id: str) -> ActorRecord:
        """The record of `actor_id`, a new one if the id is new."""
        return self.records.setdefault(actor_id, ActorRecord(actor_id))

    def check_identity(self, actor_id: str, instance_id: str, session_id: str) -> None:
        """Raises ActorInUse / ActorIdTaken when a Hello from (`instance_id`, `session_id`) may not use `actor_id`."""
        record = self.records.get(actor_id)
        if record is None:
            return
        if session_id and record.streams > 0 and record.session_id and record.session_id != session_id:
            raise ActorInUse(f"actor id {actor_id!r} is streaming to this learner right now from another actor "
                             f"process; two actors must not share an id: give this one its own --actor-id, or stop "
                             "the other one")
        if instance_id and record.instance_id and record.instance_id != instance_id and record.last_seq > 0:
            raise ActorIdTaken(f"actor id {actor_id!r} already has batches up to seq {record.last_seq} stored from "
                               f"another actor state directory (instance {record.instance_id}; this one is "
                               f"{instance_id}: a new, wiped or copied --state-dir); its sequence numbers would be "
                               "taken for those: give this actor its own --actor-id")

    def hello(self, actor_id: str, instance_id: str, session_id: str, peer: str) -> ActorRecord:
        """An accepted Hello (see `check_identity`) on the connection `peer`: its process now owns the id."""
        record = self.record(actor_id)
        record.connected = True
        record.instance_id = instance_id or record.instance_id
        record.session_id = session_id
        self._peer_session[peer] = session_id
        return record

    def stream_started(self, actor_id: str, peer: str) -> None:
        """A transition stream of `actor_id` began on the connection `peer`; raises ActorInUse when another actor
        process said Hello under this id since this connection did."""
        record = self.record(actor_id)
        session = self._peer_session.get(peer)
        if session is not None and record.session_id and session != record.session_id:
            raise ActorInUse(f"actor id {actor_id!r} was taken over by another actor process (its Hello came "
                             "after this one's); two actors must not share an id: give this one its own "
                             "--actor-id, or stop the other one")
        record.streams += 1
        record.connected = True

    def disconnected(self, actor_id: str, peer: str = "") -> None:
        self._peer_session.pop(peer, None)
        if actor_id in self.records:
            record = self.records[actor_id]
            record.streams = max(0, record.streams - 1)
            record.connected = record.streams > 0

    def note_loop(self, actor_id: str, stats: dict) -> None:
        """Keep an actor's newest control-loop statistics (fields of `ActorRecord`)."""
        record = self.records.get(actor_id)
        if record is not None:
            for key, value in stats.items():
                setattr(record, key, value)

    def restored(self, last_seqs: dict[str, int], instances: dict[str, str]) -> None:
        """Each stored actor's last seq and state directory (from the buffer store, on --resume)."""
        for source, last_seq in last_seqs.items():
            record = self.record(source)
            record.last_seq, record.instance_id = last_seq, instances.get(source, "")

    def status(self, weight_version: int) -> list[dict]:
        """One row per actor for the learner's status (`weight_version`: the newest published one)."""
        return [
            {"id": a.actor_id, "transitions_received": a.transitions, "last_acked_seq": a.last_seq,
             "weight_version_applied": a.weight_version_applied,
             "policy_lag": max(0, weight_version - a.weight_version_applied),
             "connected": a.connected, "episodes": a.episodes, "interventions": a.interventions,
             "loop_period_p50_ms": a.loop_period_p50_ms, "loop_period_p99_ms": a.loop_period_p99_ms,
             "overruns": a.overruns, "watchdog_holds": a.watchdog_holds, "safety_clamps": a.safety_clamps}
            for a in self.records.values()
        ]

    def saved(self) -> list[dict]:
        """Every record as saved in the learner's state file (none connected)."""
        return [asdict(a) | {"connected": False} for a in self.records.values()]
