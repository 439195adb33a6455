"""The actor's state directory and its durable outbox.

Every batch is written to `outbox/<seq>.batch` (serialised protobuf, our own file) before it may
be sent, and deleted only when the learner acknowledges it. A restarted actor resends whatever is
left. The directory is locked (flock) so two actors can never share one.

The batch still being filled (fewer than ``--batch-steps`` steps) lives in a journal,
`outbox/open.items`: every step is appended to it as it is recorded (length-prefixed protobuf
items, flushed to the OS, not fsynced), and the journal is emptied when its batch is written. An
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
from pathlib import Path

from hilrl.buffers.durable import atomic_write
from hilrl.protos.v1 import learner_pb2 as pb

log = logging.getLogger(__name__)
JOURNAL = "open.items"
_LENGTH = struct.Struct("<I")


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
        meta = json.loads(self._meta_path.read_text()) if self._meta_path.exists() else {}
        stored = meta.get("actor_id")
        if stored and actor_id and stored != actor_id:
            raise StateDirInUse(f"state directory {self.path} belongs to actor {stored!r}, not {actor_id!r}; "
                                "use another --state-dir")
        self.actor_id: str = stored or actor_id or f"actor-{secrets.token_hex(3)}"
        self.next_episode: int = int(meta.get("next_episode", 0))
        self._save()

    def take_episode_index(self) -> int:
        index = self.next_episode
        self.next_episode += 1
        self._save()
        return index

    def _save(self) -> None:
        meta = {"actor_id": self.actor_id, "next_episode": self.next_episode}
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

    @property
    def full(self) -> bool:
        return bool(self.max_bytes) and self.nbytes >= self.max_bytes

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    def put(self, batch: pb.TransitionBatch) -> int:
        """Assign the next seq, write the batch durably, and make it available to the sender."""
        with self._cond:
            seq = self._next_seq
            self._next_seq += 1
            batch.seq = seq
            atomic_write(self.dir / f"{seq:012d}.batch", batch.SerializeToString())
            self._clear_journal()  # its items are in this batch now
            self._pending[seq] = batch
            self.nbytes += batch.ByteSize()
            self._cond.notify_all()
            return seq

    def pending_after(self, seq: int, timeout: float) -> list[pb.TransitionBatch]:
        """Batches with a seq above `seq`, in order; waits up to `timeout` for one to appear."""
        with self._cond:
            self._cond.wait_for(lambda: any(s > seq for s in self._pending), timeout=timeout)
            return [self._pending[s] for s in sorted(self._pending) if s > seq]

    def ack(self, seq: int) -> None:
        """The learner stored every batch up to `seq`: forget them."""
        with self._cond:
            done = [s for s in self._pending if s <= seq]
            for s in done:
                self.nbytes -= self._pending.pop(s).ByteSize()
                (self.dir / f"{s:012d}.batch").unlink(missing_ok=True)
            if seq > self.last_acked:
                self.last_acked = seq
                atomic_write(self.dir / "acked.json", json.dumps({"seq": seq}).encode())
                self._next_seq = max(self._next_seq, seq + 1)
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
                self._journal = open(self._journal_path, "ab")  # noqa: SIM115 - kept open across steps
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
        if items:
            self.put(pb.TransitionBatch(actor_id=actor_id, items=items))
        else:
            self._clear_journal()
        return len(items)


def read_journal(path: Path) -> list[pb.Item]:
    """The complete items of a journal; a record cut short by the kill (the last one) is left out."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    items, at = [], 0
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


class OutboxWriter:
    """Writes to the outbox on its own thread: the outbox fsyncs every batch, and a slow disk must never
    delay a tick. One thread keeps the order of staged items and batches; :meth:`drain` waits until all
    are written."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._queue: queue.Queue[pb.Item | pb.TransitionBatch] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    def stage(self, item: pb.Item) -> None:
        self._queue.put(item)

    def put(self, batch: pb.TransitionBatch) -> None:
        self._queue.put(batch)

    def drain(self) -> None:
        self._queue.join()

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            try:
                if isinstance(entry, pb.Item):
                    self.outbox.stage(entry)
                else:
                    self.outbox.put(entry)
            except Exception:  # noqa: BLE001 - a write error must be loud, and must not kill the writer
                log.exception("could not write to the outbox (%s)", type(entry).__name__)
            finally:
                self._queue.task_done()
