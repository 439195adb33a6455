"""The actor's state directory and its durable outbox.

Every batch is written to `outbox/<seq>.batch` (serialised protobuf, our own file) before it may
be sent, and deleted only when the learner acknowledges it. A restarted actor resends whatever is
left. The directory is locked (flock) so two actors can never share one.

The batch still being filled (fewer than ``--batch-steps`` steps) lives in a journal,
`outbox/open.items`: every step is appended to it as it is recorded (length-prefixed protobuf
items, flushed to the OS, not fsynced), and the journal is emptied when its batch is written. The
journal opens with a header naming the seq its batch will take, so a journal left by a kill between
writing that batch and deleting the journal is recognised (its seq is used) and not stored twice. An
actor killed mid-batch (SIGKILL, OOM, a crash) loses none of its executed steps: the restarted
actor turns the journal into a batch before it starts (:meth:`Outbox.recover_journal`). A power
cut can still lose the unsynced tail of the journal; every complete batch is fsynced.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import secrets
import struct
import threading
import time
from pathlib import Path

from hilrl.actor import interfaces
from hilrl.buffers.durable import atomic_write, temp_path
from hilrl.protos.v1 import learner_pb2 as pb

log = logging.getLogger(__name__)
JOURNAL = "open.items"
SEND_MARGIN = 4096  # bytes the sender adds to a stored batch (weight version, loop statistics), with room to spare
ITEM_OVERHEAD = 6  # an item's field tag and length prefix inside a batch
SAVE_ATTEMPTS = 120  # seconds an episode start waits for actor.json to be writable before the actor gives up
SET_ASIDE = "set-aside"  # batches the operator set aside (`hilrl outbox set-aside`); never sent, never deleted
_LENGTH = struct.Struct("<I")
_HEADER = struct.Struct("<4sQ")  # journal header: magic, the seq its batch will take
_MAGIC = b"HJ\x00\x01"


class StateDirInUse(RuntimeError):
    pass


def default_state_dir(actor_id: str | None) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return base / "hilrl" / "actors" / (actor_id or "default")


class StateDir:
    """Holds the lock, the actor id and the episode counter of one actor."""

    def __init__(self, path: Path, actor_id: str | None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path / "lock", "a+")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            raise StateDirInUse(f"state directory {self.path} is in use by {holder}; "
                                "each actor needs its own --state-dir (or its own --actor-id)") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()}\n")
        self._lock_file.flush()
        self._meta_path = self.path / "actor.json"
        self._save_lock = threading.Lock()
        meta = json.loads(self._meta_path.read_text()) if self._meta_path.exists() else {}
        stored = meta.get("actor_id")
        if stored and actor_id and stored != actor_id:
            raise StateDirInUse(f"state directory {self.path} belongs to actor {stored!r}, not {actor_id!r}; "
                                "use another --state-dir")
        self.actor_id: str = stored or actor_id or f"actor-{secrets.token_hex(3)}"
        self.next_episode: int = int(meta.get("next_episode", 0))
        # Who this directory's seq counter is, for the learner (a new or wiped directory is someone new), and
        # the learner run its outbox belongs to.
        self.instance_id: str = meta.get("instance_id") or secrets.token_hex(8)
        self.run_id: str = meta.get("run_id", "")
        self._save()

    def remember_run(self, run_id: str) -> None:
        if run_id != self.run_id:
            self.run_id = run_id
            self._save()

    def take_episode_index(self) -> int:
        """The next episode index, persisted before it is used (an index is never used twice); while the disk
        refuses the write the arm waits here, between episodes, and the log says so."""
        index = self.next_episode
        self.next_episode += 1
        for attempt in range(SAVE_ATTEMPTS):
            try:
                self._save()
                return index
            except OSError as exc:
                if attempt == SAVE_ATTEMPTS - 1:
                    raise
                if attempt == 0:
                    log.error("cannot write %s (%s): holding the arm before episode %d, retrying every second",
                              self._meta_path, exc, index)
                time.sleep(1.0)
        return index

    def _save(self) -> None:
        with self._save_lock:  # the control loop (episodes) and the sender (run id) both save
            meta = {"actor_id": self.actor_id, "next_episode": self.next_episode, "instance_id": self.instance_id,
                    "run_id": self.run_id}
            atomic_write(self._meta_path, json.dumps(meta).encode())

    def close(self) -> None:
        self._lock_file.close()


class Outbox:
    """Batches kept until acknowledged; sequence numbers strictly increase, also across restarts."""

    def __init__(self, path: Path, max_bytes: int = 0) -> None:
        """`max_bytes`: the size at which `full` turns true (0 = unbounded). Nothing is ever dropped:
        the actor stops starting episodes while the outbox is full."""
        self.dir = Path(path)
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._cond = threading.Condition()
        self._pending: dict[int, pb.TransitionBatch] = {}
        for f in sorted(self.dir.glob("*.batch")):
            batch = pb.TransitionBatch()
            batch.ParseFromString(f.read_bytes())
            self._pending[batch.seq] = batch
            self.nbytes += batch.ByteSize()
        for f in self.dir.glob("*.tmp"):
            f.unlink()
        acked_path = self.dir / "acked.json"
        self.last_acked = json.loads(acked_path.read_text())["seq"] if acked_path.exists() else 0
        self._next_seq = max([self.last_acked, *self._pending]) + 1
        self._journal_path = self.dir / JOURNAL
        self._journal = None  # opened by the first stage()
        limit_path = self.dir / "limit.json"
        self.message_limit = int(json.loads(limit_path.read_text())["message_bytes"]) if limit_path.exists() else 0

    @property
    def full(self) -> bool:
        return bool(self.max_bytes) and self.nbytes >= self.max_bytes

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    def put(self, batch: pb.TransitionBatch) -> int:
        """Assign the next seq, write the batch durably, and make it available to the sender; a batch larger
        than `max_batch_bytes` is split into consecutive batches that fit (returns the last seq)."""
        with self._cond:
            parts = split_batch(batch, self.max_batch_bytes)
            written: list[Path] = []
            try:  # all parts durable before any seq is used: a failed write (disk full) costs no seq and keeps
                for i, part in enumerate(parts):  # the journal, so the caller can retry the same batch
                    part.seq = self._next_seq + i
                    path = self.dir / f"{part.seq:012d}.batch"
                    written.append(path)
                    atomic_write(path, part.SerializeToString())
            except BaseException:
                for path in written:  # not registered, never sent: as if nothing was put
                    path.unlink(missing_ok=True)
                    temp_path(path).unlink(missing_ok=True)
                raise
            for part in parts:
                self._pending[part.seq] = part
                self.nbytes += part.ByteSize()
            self._next_seq += len(parts)
            self._clear_journal()  # its items are in these batches now
            self._cond.notify_all()
            return parts[-1].seq

    @property
    def max_batch_bytes(self) -> int:
        """The largest batch `put` writes (0 = any): the message limit, less room for what the sender adds."""
        return max(1, self.message_limit - SEND_MARGIN) if self.message_limit else 0

    def set_message_limit(self, limit: int) -> None:
        """The message limit agreed with the learner (bytes; 0 = none); batches put from now on fit into it.
        Remembered in the state directory, so a restarted actor splits from its first batch."""
        with self._cond:
            if limit != self.message_limit:
                self.message_limit = limit
                atomic_write(self.dir / "limit.json", json.dumps({"message_bytes": limit}).encode())

    def oversized(self) -> list[tuple[int, int]]:
        """(seq, bytes) of pending batches larger than `max_batch_bytes` (written before the limit was known)."""
        with self._cond:
            limit = self.max_batch_bytes
            return [(s, b.ByteSize()) for s, b in sorted(self._pending.items()) if limit and b.ByteSize() > limit]

    def pending_after(self, seq: int, timeout: float) -> list[pb.TransitionBatch]:
        """Batches with a seq above `seq`, in order; waits up to `timeout` for one to appear."""
        with self._cond:
            self._cond.wait_for(lambda: any(s > seq for s in self._pending), timeout=timeout)
            return [self._pending[s] for s in sorted(self._pending) if s > seq]

    def ack(self, seq: int) -> None:
        """The learner stored every batch up to `seq`: forget them."""
        with self._cond:
            if seq > self.last_acked:  # first: a kill after deleting batches must not let their seqs be reused
                atomic_write(self.dir / "acked.json", json.dumps({"seq": seq}).encode())
                self.last_acked = seq
                self._next_seq = max(self._next_seq, seq + 1)
            for s in [s for s in self._pending if s <= seq]:
                self.nbytes -= self._pending.pop(s).ByteSize()
                (self.dir / f"{s:012d}.batch").unlink(missing_ok=True)
            self._cond.notify_all()

    def first_pending(self) -> int | None:
        with self._cond:
            return min(self._pending) if self._pending else None

    def wait_empty(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout=timeout)

    # ------------------------------------------------------------------ journal of the open batch

    def stage(self, item: pb.Item) -> None:
        """Append one item of the batch being filled to the journal (it survives the process; see the
        module docstring). The next :meth:`put` holds the staged items and empties the journal."""
        data = item.SerializeToString()
        with self._cond:
            if self._journal is None:
                fresh = not self._journal_path.exists() or self._journal_path.stat().st_size == 0
                self._journal = open(self._journal_path, "ab")  # noqa: SIM115 - kept open across steps
                if fresh:
                    self._journal.write(_HEADER.pack(_MAGIC, self._next_seq))
            self._journal.write(_LENGTH.pack(len(data)) + data)
            self._journal.flush()

    def _clear_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self._journal_path.unlink(missing_ok=True)

    def recover_journal(self, actor_id: str) -> int:
        """Turn the journal a killed actor left into a batch of `actor_id` (sent like any other); returns
        how many items it held. Call once at start, before anything is staged."""
        items = read_journal(self._journal_path)
        seq = journal_seq(self._journal_path)
        if items and seq is not None and seq < self._next_seq:  # killed after writing (some of) its batch parts
            written = sum(len(self._pending[s].items) for s in range(seq, self._next_seq) if s in self._pending)
            log.warning("%s: %d of its %d items were written as batches from seq %d before the kill; not storing "
                        "them twice", self._journal_path, min(written, len(items)), len(items), seq)
            items = items[written:]
        if items:
            self.put(pb.TransitionBatch(actor_id=actor_id, items=items))
        else:
            self._clear_journal()
        return len(items)


def split_batch(batch: pb.TransitionBatch, max_bytes: int) -> list[pb.TransitionBatch]:
    """`batch` as consecutive batches of at most `max_bytes` each (0 = no limit), its items in order. An item
    larger than `max_bytes` on its own travels alone (the learner refuses it; see LearnerLink)."""
    if not max_bytes or batch.ByteSize() <= max_bytes:
        return [batch]
    header = pb.TransitionBatch()
    header.CopyFrom(batch)
    del header.items[:]
    parts: list[pb.TransitionBatch] = []
    size = max_bytes
    for item in batch.items:
        n = item.ByteSize() + ITEM_OVERHEAD
        if size + n > max_bytes:
            parts.append(pb.TransitionBatch())
            parts[-1].CopyFrom(header)
            size = header.ByteSize()
        parts[-1].items.append(item)
        size += n
    return parts


def read_journal(path: Path) -> list[pb.Item]:
    """The complete items of a journal; a record cut short by the kill (the last one) is left out."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    items, at = [], _HEADER.size if data[:len(_MAGIC)] == _MAGIC else 0
    while at + _LENGTH.size <= len(data):
        (n,) = _LENGTH.unpack_from(data, at)
        if at + _LENGTH.size + n > len(data):
            break
        item = pb.Item()
        try:
            item.ParseFromString(data[at + _LENGTH.size:at + _LENGTH.size + n])
        except Exception:  # noqa: BLE001 - protobuf's DecodeError; a torn record ends the journal
            break
        items.append(item)
        at += _LENGTH.size + n
    if at < len(data):
        log.warning("%s: %d bytes at the end are an incomplete record (cut by the kill) and are dropped",
                    path, len(data) - at)
    return items


def journal_seq(path: Path) -> int | None:
    """The seq the journal's batch takes (its header), or None for a journal without one."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
    except FileNotFoundError:
        return None
    magic, seq = _HEADER.unpack(head) if len(head) == _HEADER.size else (b"", 0)
    return seq if magic == _MAGIC else None


class OutboxWriter:
    """Writes to the outbox on its own thread: the outbox fsyncs every batch, and a slow disk must never
    delay a tick. One thread keeps the order of staged items and batches; :meth:`drain` waits until all
    are written."""

    RETRY_S = 1.0

    def __init__(self, outbox: interfaces.Outbox) -> None:
        self.outbox = outbox
        self.failing = ""  # why the outbox cannot be written right now (the loop holds the arm meanwhile)
        self._abandon = threading.Event()
        self._queue: queue.Queue[pb.Item | pb.TransitionBatch] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    def stage(self, item: pb.Item) -> None:
        self._queue.put(item)

    def put(self, batch: pb.TransitionBatch) -> None:
        self._queue.put(batch)

    def drain(self) -> None:
        self._queue.join()

    def abandon(self) -> None:
        """Stop retrying a failing write (at exit); what is not written is reported as lost."""
        self._abandon.set()

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            try:
                self._write(entry)
            finally:
                self._queue.task_done()

    def _write(self, entry: pb.Item | pb.TransitionBatch) -> None:
        """Write one entry, retrying while the disk refuses (in order: nothing behind it is written first)."""
        while True:
            try:
                if isinstance(entry, pb.Item):
                    self.outbox.stage(entry)
                else:
                    self.outbox.put(entry)
            except Exception as exc:  # noqa: BLE001 - a write error must be loud, and must not kill the writer
                if not isinstance(exc, OSError):  # a bug, not the disk: retrying cannot help
                    log.exception("could not write to the outbox (%s)", type(entry).__name__)
                    return
                if self._abandon.is_set():
                    log.error("giving up writing to the outbox at exit (%s): %d queued steps and batches are lost",
                              exc, self._queue.qsize() + 1)
                    return
                if not self.failing:
                    log.error("cannot write to the outbox in %s (%s): holding the arm (no new episode) and "
                              "retrying every %.0f s; executed steps wait in memory", self.outbox.dir, exc,
                              self.RETRY_S)
                self.failing = f"{type(exc).__name__}: {exc}"
                self._abandon.wait(self.RETRY_S)
                continue
            if self.failing:
                log.info("the outbox is writable again (was: %s)", self.failing)
                self.failing = ""
            return
