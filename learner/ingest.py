"""The learner's ingest path: a batch is acknowledged once it is in the ingest log; it is stored after that.

    `Ingest.batches` (called by the gRPC service for each group of batches of one stream): drops the batches
    stored before by `(actor_id, seq)` (the actor's `ActorRecord`), checks the rest against the spec, appends
    them to the log as one record and returns once the log is fsynced; the service then acknowledges them.
    Batches of concurrent streams that arrive while an fsync runs share the next one (group commit).
    The writer thread takes every logged batch not stored yet and appends them to the zarr store in ONE commit
    (compression, chunking, each source's `(actor_id, seq)` record), then feeds them to the dual buffer (whose
    `EpisodeAssembler` pairs each step with its successor). Log segments whose batches are all in the store
    are deleted, so the log stays small.

The log is `<store>/log/<segment>.log` (`buffers.durable.BatchLog`): records of `[magic, length, crc32][payload]`,
the payload being `pack_items` of the batch (below; no pickle). Crash recovery (`attach`, when the store is
opened): every logged batch whose seq is above the store's record for its actor is appended to the store
before the buffers are rebuilt from it; the store commits a batch together with its seq, so each is stored
exactly once, whether the crash came before, during or after the writer's commit. A torn record at the end of
a segment (a crash during its write, so never acknowledged) ends that segment's reading.
Backpressure: while the batches logged but not stored exceed `backlog_bytes`, `batches` waits for the
writer; when the writer is failing (a full disk), it raises the writer's error instead (the actor keeps the
batches and retries).
"""

from __future__ import annotations

import errno
import json
import logging
import struct
import threading
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.durable import BatchLog
from hilrl.buffers.spec import Spec
from hilrl.buffers.store import BufferStore, check_batch
from hilrl.learner.actors import ActorRecord

log = logging.getLogger(__name__)

BACKLOG_BYTES = 512 << 20  # logged but not stored yet: beyond this the acknowledgements wait for the writer
WRITE_MAX_BYTES = 64 << 20  # the most the writer puts into one store commit
RETRY_S = 1.0  # the writer's pause after a failed store commit


@dataclass
class _Logged:
    """A logged batch group waiting for the writer."""

    segment: int
    source: str
    seq: int
    items: list[Step | Discard]
    instance: str
    record: ActorRecord
    size: int


class Ingest:
    """Deduplication, the log and acknowledgement, and the writer that stores logged batches (module docstring)."""

    def __init__(self, core: Any, backlog_bytes: int = BACKLOG_BYTES) -> None:
        self.core = core  # the LearnerCore that owns this (not imported here: core.py imports this module)
        self.backlog_bytes = backlog_bytes
        self.store_lock = threading.Lock()  # held while the store is written (see LearnerCore.store_read_guard)
        self.log: BatchLog | None = None
        self._cond = threading.Condition()
        self._queue: deque[_Logged] = deque()
        self._queued_bytes = 0
        self._segments: Counter[int] = Counter()  # batches per log segment not stored yet
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._stopping = False
        self._actor_locks: dict[str, threading.Lock] = {}

    # ------------------------------------------------------------------ start-up

    def attach(self, store: BufferStore) -> int:
        """Open the log next to `store`, store every logged batch it lacks (crash recovery) and start the writer;
        returns the batches recovered."""
        self.log = BatchLog(store.path / "log")
        last, pending, recovered, size = store.last_seqs(), [], 0, 0
        for _, payload in self.log.read():
            meta, items = unpack_items(store.spec, payload)
            if meta["seq"] <= last.get(meta["source"], 0):
                continue  # stored before the crash
            pending.append((meta["source"], meta["seq"], items, meta.get("instance", "")))
            last[meta["source"]] = meta["seq"]
            size += len(payload)
            if size >= WRITE_MAX_BYTES:
                recovered += _store_all(store, pending)
                pending, size = [], 0
        recovered += _store_all(store, pending)
        if recovered:
            log.info("recovered %d acknowledged batches from the ingest log into the store", recovered)
        self.log.drop(self.log.segment)
        if self._writer is None:  # (a spec adoption that failed after this point attaches again)
            self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
            self._writer.start()
        return recovered

    # ------------------------------------------------------------------ the acknowledgement path

    def batches(self, actor_id: str, batches: list[tuple[int, list[Step | Discard]]],
                weight_version_applied: int) -> list[bool]:
        """Log consecutive batches `(seq, items)` of one actor as ONE record; returns, per batch, whether it had
        been received before (a duplicate, dropped). Everything new is in the fsynced log when this returns, so
        the caller may acknowledge every batch; StoreInputError (nothing logged) when an item does not fit the
        spec, OSError when the log cannot be written or the writer is failing with a full backlog."""
        core = self.core
        with self._cond:
            actor_lock = self._actor_locks.setdefault(actor_id, threading.Lock())
        with actor_lock:  # last_seq only changes under this lock, so the checks below stay true
            with core.lock:
                record = core.actors.record(actor_id)
                record.weight_version_applied = weight_version_applied
                last, duplicates, items = record.last_seq, [], []
                for seq, batch_items in batches:
                    duplicates.append(seq <= last)
                    if seq <= last:
                        continue
                    if seq != last + 1:
                        log.warning("actor %s: batch seq jumped from %d to %d", actor_id, last, seq)
                    last = seq
                    items.extend(batch_items)
            if last == record.last_seq:
                return duplicates
            assert core.store is not None and self.log is not None
            check_batch(core.store.spec, actor_id, last, items)  # StoreInputError: never logged
            parts = pack_items(core.store.spec, items, {"source": actor_id, "seq": last,
                                                        "instance": record.instance_id})
            size = sum(len(p) for p in parts)
            self._wait_for_room(size)
            try:
                segment = self.log.append(parts)
            except OSError as exc:
                self._failed(exc, self.log.path)
                raise
            with self._cond:
                self._queue.append(_Logged(segment, actor_id, last, items, record.instance_id, record, size))
                self._queued_bytes += size
                self._segments[segment] += 1
                self._cond.notify_all()
                writer_ok = self._writer_error is None
            with core.lock:
                record.last_seq = last
            if writer_ok:
                self._recovered()
            return duplicates

    def _wait_for_room(self, size: int) -> None:
        with self._cond:
            while self._queue and self._queued_bytes + size > self.backlog_bytes:
                if (error := self._writer_error) is not None:
                    raise OSError(getattr(error, "errno", None) or errno.EIO,
                                  getattr(error, "strerror", None) or str(error), getattr(error, "filename", None))
                self._cond.wait(0.5)

    # ------------------------------------------------------------------ the writer

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return
                take, size = [], 0
                for entry in self._queue:
                    if take and size + entry.size > WRITE_MAX_BYTES:
                        break
                    take.append(entry)
                    size += entry.size
            try:
                with self.store_lock:
                    _store_all(self.core.store, [(e.source, e.seq, e.items, e.instance) for e in take])
            except Exception as exc:  # noqa: BLE001 - kept in the log; retried until it works or the learner stops
                if not isinstance(exc, OSError):
                    log.exception("storing %d logged batches failed", len(take))
                self._failed(exc, self.core.store.path)
                with self._cond:
                    self._writer_error = exc
                    self._cond.notify_all()
                    if self._cond.wait_for(lambda: self._stopping, timeout=RETRY_S):
                        return  # the log keeps them; the next start stores them
                continue
            self._applied(take)

    def _applied(self, take: list[_Logged]) -> None:
        core = self.core
        with core.lock:
            for entry in take:
                try:
                    self.apply(entry.source, entry.items, entry.record)
                except Exception:  # noqa: BLE001 - stored already: a bug here must not store it twice
                    log.exception("actor %s: feeding batch %d to the buffers failed", entry.source, entry.seq)
            core.lock.notify_all()
        with self._cond:
            for entry in take:
                self._queue.popleft()
                self._queued_bytes -= entry.size
                self._segments[entry.segment] -= 1
                if not self._segments[entry.segment]:
                    del self._segments[entry.segment]
            self._writer_error = None
            # before `drain` can see the empty queue: once it returns, stored batches' segments are gone
            self.log.drop(min(self._segments, default=self.log.segment))
            self._cond.notify_all()
        self._recovered()

    def _failed(self, exc: BaseException, path: Path) -> None:
        problem = store_failure(exc, path) if isinstance(exc, OSError) else \
            f"not storing (batches wait in the ingest log): storing failed ({exc!r})"
        if problem != self.core.store_problem:
            log.error("%s", problem)
        self.core.store_problem = problem

    def _recovered(self) -> None:
        if self.core.store_problem:
            log.info("the store is writable again; storing (was: %s)", self.core.store_problem)
            self.core.store_problem = ""

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until every logged batch is stored and in the buffers; False if that took longer than `timeout`."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue, timeout=timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Store what is logged (at most `timeout` s; the rest stays in the log for the next start), stop."""
        self.drain(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join(timeout)
        if self.log is not None:
            self.log.close()

    def status(self) -> dict:
        with self._cond:
            return {"ingest_backlog_batches": len(self._queue), "ingest_backlog_bytes": self._queued_bytes}

    # ------------------------------------------------------------------ into the buffers

    def apply(self, source: str, items: list[Step | Discard], record: ActorRecord | None) -> None:
        """Feed stored items to the assembler and the dual buffer (call under the core lock; also used when
        rebuilding the buffers from the store)."""
        core = self.core
        assert core.buffers is not None
        for item in items:
            if isinstance(item, Discard):
                key = core.assembler.discard(source, item.episode)
                removed = core.buffers.discard_episode(key)
                core.forget_demo(key)
                log.info("%s discarded episode %d (%d stored steps removed)", source, item.episode, removed)
                continue
            transitions, end = core.assembler.add(source, item)
            for t in transitions:
                core.buffers.add(t)
                if record is not None:
                    record.transitions += 1
                    record.interventions += int(t.is_intervention)
            core.count_transitions(len(transitions))
            if end is not None:
                if record is not None:
                    record.episodes += 1
                core.episode_ended(end.episode_key, end.all_human, {"actor": source, **asdict(end)})

    def rebuild(self, dataset_prefix: str) -> None:
        """Rebuild buffers, demo count and actor records from the store (on --resume)."""
        core = self.core
        assert core.store is not None and core.buffers is not None
        for source, item in core.store.replay():
            record = None if source.startswith(dataset_prefix) else core.actors.record(source)
            self.apply(source, [item], record)
        core.actors.restored({source: last_seq for source, last_seq in core.store.last_seqs().items()
                              if not source.startswith(dataset_prefix)}, core.store.instances())
        log.info("replayed %d stored steps: human %d, policy %d transitions, %d demo episodes", len(core.store),
                 len(core.buffers.human), len(core.buffers.policy), core.demo_episodes)


# ------------------------------------------------------------------ one batch as a log record

_HEAD = struct.Struct("<I")


def pack_items(spec: Spec, items: list[Step | Discard], meta: dict) -> list[bytes | memoryview]:
    """A checked batch (`check_step` passed) as byte parts to write one after another, without copying the
    arrays: a length-prefixed JSON head (`meta` plus every item's scalars), then each step's observation arrays
    in spec order, its action as float32 and, where the step ends its episode, its final observation.
    `unpack_items` reads it back. No pickle: only the spec's dtypes and shapes are read back."""
    head, arrays = [], []
    for item in items:
        if isinstance(item, Discard):
            head.append(["d", int(item.episode)])
            continue
        head.append([int(item.episode), int(item.step), float(item.reward), bool(item.terminated),
                     bool(item.truncated), bool(item.is_intervention), item.final_obs is not None])
        arrays += [item.obs[f.name] for f in spec.observation]
        arrays.append(np.asarray(item.action, dtype=np.float32))
        if item.final_obs is not None:
            arrays += [item.final_obs[f.name] for f in spec.observation]
    text = json.dumps({**meta, "items": head}).encode()
    return [_HEAD.pack(len(text)), text, *(memoryview(np.ascontiguousarray(a)).cast("B") for a in arrays)]


def unpack_items(spec: Spec, data: bytes | memoryview) -> tuple[dict, list[Step | Discard]]:
    """(meta, items) of a `pack_items` record; the arrays are read-only views into `data`."""
    (n,) = _HEAD.unpack_from(data, 0)
    meta = json.loads(bytes(data[_HEAD.size:_HEAD.size + n]))
    offset = _HEAD.size + n
    features = [(f.name, np.dtype(f.dtype), f.shape, f.size) for f in spec.observation]

    def take(dtype: np.dtype, shape: tuple[int, ...], count: int) -> np.ndarray:
        nonlocal offset
        a = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += count * dtype.itemsize
        return a

    def observation() -> dict[str, np.ndarray]:
        return {name: take(dtype, shape, size) for name, dtype, shape, size in features}

    items: list[Step | Discard] = []
    for h in meta.pop("items"):
        if h[0] == "d":
            items.append(Discard(int(h[1])))
            continue
        obs = observation()
        action = take(np.dtype(np.float32), (spec.action_dim,), spec.action_dim)
        items.append(Step(obs=obs, action=action, reward=h[2], terminated=h[3], truncated=h[4], is_intervention=h[5],
                          episode=h[0], step=h[1], final_obs=observation() if h[6] else None))
    if offset != len(data):
        raise ValueError(f"batch record: {len(data) - offset} bytes left over after its items")
    return meta, items


def _store_all(store: BufferStore, batches: list[tuple[str, int, list[Step | Discard], str]]) -> int:
    """Append the batches the store does not hold yet (by seq: a commit that failed only in its last fsync
    stands) in one commit; returns how many it appended."""
    last = store.last_seqs()
    new = [b for b in batches if b[1] > last.get(b[0], 0)]
    if new:
        store.append_batches(new)
    return len(new)


def store_failure(exc: OSError, path: Path) -> str:
    """What a failed store or log write means for the operator, in one sentence."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    what = f"the disk is full at {path}" if full else f"writing {exc.filename or path} failed"
    return (f"not storing (batches are not acknowledged; actors keep them and retry): {what} "
            f"({exc.strerror or exc}); {'free space' if full else 'check the disk'}")

