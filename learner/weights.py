"""Published policy weights, end to end: the learner's side (copy, version, sha256, who was sent what) and the
actor's side (join the chunks, verify, the policy on the received bytes), in the safetensors layout of
`learner.tensor_blob` (which makes each buffer's header once, and reads a policy's bytes when a header changes).

Learner (`WeightPublisher`): the tensors are copied into one of a few reused buffers (no fresh pages per
version: for 10 M parameters, 41 MB of page faults cost more than the copy), the version is visible at once and
hashed while the first chunks stream (only the last chunk carries the sha256). A buffer is written again only
when it is not the current version and no stream or hash reads it.
Actor (`WeightReceiver`): three buffers, the running policy's, the pending one's and the one being written, so a
version is assembled where no policy in use looks. A verified version's policy views its buffer (no copy), and a
buffer whose header is unchanged keeps its policy object (no decode, no build).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import Tensor

from hilrl.learner.rundir import RunDir
from hilrl.learner.tensor_blob import BlobError, decode, layout, new_buffer

FILES_WAIT_S = 1.0  # publish: how long the weight files wait for the subscribers to be sent the new version
LEARNER_BUFFERS = 3  # reused encode buffers per layout (the current version, one being streamed late, the next)
PIECE = 1 << 20  # the publisher fills its buffer in pieces this large; streams send each piece once it is in

log = logging.getLogger(__name__)


def _fill(flat: Tensor, spans: list[tuple[str, int, int]], tensors: dict[str, Tensor],
          filled: Callable[[int], None] = lambda end: None) -> None:
    """Copy each tensor (on any device) into its span of ``flat`` (once: no zeroing, no staging copy), in pieces of
    at most `PIECE` bytes, in order; ``filled(end)`` after each: the bytes before ``end`` are final."""
    for name, begin, end in spans:
        source = tensors[name].detach().contiguous().reshape(-1).view(torch.uint8)
        for at in range(begin, end, PIECE):
            stop = min(at + PIECE, end)
            flat[at:stop].copy_(source[at - begin:stop - begin])
            filled(stop)


# ---------------------------------------------------------------------------------------------- the learner

class _Buffer:
    """One reused encode buffer: its layout, and who reads it (streams, the hash, the weight files)."""

    def __init__(self, key: tuple, head: bytes, spans: list[tuple[str, int, int]]) -> None:
        self.key, self.spans = key, spans
        self.flat = new_buffer(head, spans)  # the header is written once: the layout is the buffer's key
        self.data = memoryview(self.flat.numpy()).toreadonly()
        self.lock = threading.Condition()
        self.generation = 0  # +1 each time the buffer is taken for a new version
        self.readers = 0
        self.head = len(head)
        self.filled = self.head  # bytes of the version final so far (-1: its tensors could not be copied)

    def take(self) -> bool:
        """Claim the buffer for a new version (False while anyone reads it)."""
        with self.lock:
            if self.readers:
                return False
            self.generation += 1
            self.filled = self.head
            return True

    def advance(self, filled: int) -> None:
        with self.lock:
            self.filled = filled
            self.lock.notify_all()

    def wait_filled(self, end: int) -> None:
        """Until the bytes before ``end`` are final; `BlobError` if the version's tensors could not be copied."""
        with self.lock:
            self.lock.wait_for(lambda: self.filled >= end or self.filled < 0)
            if self.filled < 0:
                raise BlobError("the published tensors could not be copied")

    def acquire(self, generation: int) -> bool:
        """Start reading the version of ``generation``; False: the buffer has been taken for a newer one since."""
        with self.lock:
            if self.generation != generation:
                return False
            self.readers += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.readers -= 1


class EncodedWeights:
    """One published version: its safetensors bytes and their sha256 (a string, or a future while it is hashed)."""

    def __init__(self, version: int, data: bytes | memoryview, sha256: str | Future[str],
                 buffer: _Buffer | None = None) -> None:
        self.version, self.data, self._sha256 = version, data, sha256
        self._buffer, self._generation = buffer, buffer.generation if buffer is not None else 0

    @classmethod
    def of(cls, data: bytes | memoryview, version: int = 0) -> EncodedWeights:
        return cls(version, data, hashlib.sha256(data).hexdigest())

    @property
    def sha256(self) -> str:
        return self._sha256 if isinstance(self._sha256, str) else self._sha256.result()

    def read(self) -> bool:
        """Start reading the bytes (then `done`); False: the buffer already holds a newer version."""
        return self._buffer is None or self._buffer.acquire(self._generation)

    def done(self) -> None:
        if self._buffer is not None:
            self._buffer.release()

    def chunks(self, size: int) -> Iterator[tuple[int, memoryview, str]]:
        """``(offset, bytes, sha256)`` pieces of at most ``size`` bytes (one empty piece for an empty blob); the
        sha256 only on the last (the first may stream while it is computed). Each piece is a view of the buffer,
        valid until the next: copy it. Nothing when the buffer already holds a newer version."""
        if not self.read():
            return
        try:
            view = memoryview(self.data)
            for offset in range(0, max(len(view), 1), size):
                if self._buffer is not None:
                    self._buffer.wait_filled(min(offset + size, len(view)))
                yield offset, view[offset:offset + size], self.sha256 if offset + size >= len(view) else ""
        finally:
            self.done()


class Learner(Protocol):
    """What else a weight stream reports or stops on (`learner.core.LearnerCore`)."""

    stage: str
    stopping: bool


class WeightPublisher:
    """The learner's published weights: the current version, the weight streams that send it, its files.

    Shares the core's mutex; streams wait on their own condition, which only a new version, a stage change or the
    shutdown (`wake`) notifies."""

    def __init__(self, mutex: threading.RLock, files: RunDir, keep: int, learner: Learner) -> None:
        self.current = EncodedWeights(0, b"", "")
        self._changed = threading.Condition(mutex)  # subscribers wait here
        self._sent = threading.Condition(mutex)  # publish waits here for the subscribers to be sent a version
        self._files, self._keep, self._learner = files, keep, learner
        self._subscribers: dict[object, int] = {}  # live weight streams -> the newest version each was sent
        self._buffers: list[_Buffer] = []
        self._unwritten: EncodedWeights | None = None  # the newest version whose files the file thread owes
        self._writing = False
        self._files_thread: threading.Thread | None = None
        self.files_problem = ""  # why the newest weight files could not be written ("" while they can)

    @property
    def version(self) -> int:
        return self.current.version

    def restore(self, version: int, data: bytes) -> None:
        """The version published before a restart (its policy file's bytes)."""
        self.current = EncodedWeights.of(data, version)

    def publish(self, tensors: dict[str, Tensor] | bytes, metadata: dict[str, str] | None = None) -> int:
        """Make new weights visible; returns their version. The version number file is written while the tensors
        are copied and the first chunks stream; the last chunk (which carries the sha256, so no actor applies the
        version before) waits for it. The weight files are written once every subscriber has been sent the
        version (at most `FILES_WAIT_S` later), so the disk writes do not compete with the streaming (a crash in
        between leaves the previous policy file under the new version number until the next publish). They are
        written on their own thread: the trainer goes on as soon as the tensors are copied (`flush` waits)."""
        previous = self.current
        version = previous.version + 1
        persisted = _in_thread(self._files.write_weights_version, version)
        buffer = self._buffer(tensors, metadata) if isinstance(tensors, dict) else None
        if buffer is not None:
            buffer.acquire(buffer.generation)  # the hash reads it: not reused before that is done
        data = buffer.data if buffer is not None else tensors
        weights = EncodedWeights(version, data, _in_thread(_hash, data, buffer, persisted), buffer)
        with self._changed:
            self.current = weights
            self._changed.notify_all()
        try:
            if buffer is not None:  # the streams and the hash follow the copy piece by piece
                _fill(buffer.flat, buffer.spans, tensors, buffer.advance)
            persisted.result()
        except BaseException:
            if buffer is not None:
                buffer.advance(-1)
            with self._changed:  # streams of this version fail before its last chunk; nothing was applied
                self.current = previous if self.current is weights else self.current
            raise
        if weights.read():  # the buffer stays this version's until its files are written
            with self._sent:
                if self._unwritten is not None:  # never written: a newer version replaces it
                    self._unwritten.done()
                self._unwritten = weights
                if self._files_thread is None:
                    self._files_thread = threading.Thread(target=self._write_files, name="weight-files", daemon=True)
                    self._files_thread.start()
                self._sent.notify_all()
        return version

    def _write_files(self) -> None:
        """The file thread: the newest unwritten version's files, once every stream has been sent it (or after
        `FILES_WAIT_S`); a version published meanwhile replaces an older one still waiting."""
        while True:
            with self._sent:
                self._sent.wait_for(lambda: self._unwritten is not None)
                weights, self._unwritten, self._writing = self._unwritten, None, True
                version = weights.version
                self._sent.wait_for(lambda v=version: self._all_sent(v), timeout=FILES_WAIT_S)
            try:
                self._files.write_weights(version, weights.data, self._keep)
                if self.files_problem:
                    log.info("weight files are written again (was: %s)", self.files_problem)
                self.files_problem = ""
            except OSError as exc:  # said once until it works again; the actors still get every version
                if not self.files_problem:
                    log.error("weight files of v%d not written: %s", version, exc)
                self.files_problem = f"weight files of v{version} not written: {exc}"
            finally:
                weights.done()
                with self._sent:
                    self._writing = False
                    self._sent.notify_all()

    def _all_sent(self, version: int) -> bool:
        return all(v >= version for v in self._subscribers.values())

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until the newest published version's files are written (or failed: `files_problem`); False on
        timeout."""
        with self._sent:
            return self._sent.wait_for(lambda: self._unwritten is None and not self._writing, timeout=timeout)

    def _buffer(self, tensors: dict[str, Tensor], metadata: dict[str, str] | None) -> _Buffer:
        """A free buffer of this layout (not the current version's, read by no one), or a new one."""
        key = (tuple((k, v.dtype, tuple(v.shape)) for k, v in tensors.items()), json.dumps(metadata))
        for buffer in self._buffers:  # least recently taken first: a late stream gets the most time
            if buffer.key == key and buffer is not self.current._buffer and buffer.take():
                self._buffers.remove(buffer)
                self._buffers.append(buffer)
                return buffer
        buffer = _Buffer(key, *layout(tensors, metadata))
        self._buffers = [b for b in self._buffers if b.key == key][1 - LEARNER_BUFFERS:] + [buffer]
        return buffer

    def subscriber_has(self, subscriber: object, version: int | None) -> None:
        """A weight stream (``subscriber``) has been sent ``version``; None: the stream ended."""
        with self._sent:
            if version is None:
                self._subscribers.pop(subscriber, None)
            else:
                self._subscribers[subscriber] = version
            self._sent.notify_all()

    def wait_for_change(self, stage_seen: str | None, version_seen: int,
                        timeout: float) -> tuple[str, EncodedWeights]:
        """Block until the stage or the published version differs from what a subscriber has (or shutdown)."""
        learner = self._learner
        with self._changed:
            self._changed.wait_for(lambda: learner.stopping or learner.stage != stage_seen
                                   or self.current.version > version_seen, timeout=timeout)
            return learner.stage, self.current

    def wake(self) -> None:
        """The stage changed or the learner is stopping: every waiting stream looks again."""
        with self._changed:
            self._changed.notify_all()


def _in_thread(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` on a new daemon thread; its result (or exception) in the returned future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the result
            future.set_exception(exc)

    threading.Thread(target=run, name="weights", daemon=True).start()
    return future


def _hash(data: bytes | memoryview, buffer: _Buffer | None, persisted: Future) -> str:
    """The sha256 of a new version, once its version number is on disk (`persisted`, which it re-raises)."""
    digest, view = hashlib.sha256(), memoryview(data)
    try:
        for at in range(0, len(view), PIECE if buffer is not None else max(len(view), 1)):
            if buffer is not None:
                buffer.wait_filled(min(at + PIECE, len(view)))
            digest.update(view[at:at + PIECE] if buffer is not None else view)
    finally:
        if buffer is not None:
            buffer.release()
    persisted.result()
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- the actor

P = TypeVar("P")


class _Slot(Generic[P]):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.head = b""  # the header its policy was built from ("" = no reusable policy)
        self.policy: P | None = None


class WeightReceiver(Generic[P]):
    """The actor's side: joins each version's chunks (in order) into a free buffer, hashing them as they arrive,
    and builds its policy with ``build`` (on views of the buffer). `take` hands out the newest verified version;
    the policy taken before it is released then (the caller no longer runs it), and its buffer may be rewritten."""

    def __init__(self, build: Callable[[dict[str, Tensor]], P]) -> None:
        self._build = build
        self._slots: list[_Slot[P]] = [_Slot(), _Slot(), _Slot()]
        self._lock = threading.Lock()
        self._running: _Slot[P] | None = None
        self._pending: tuple[int, _Slot[P]] | None = None
        self._writing: _Slot[P] | None = None
        self._failed = -1  # the version whose remaining chunks are dropped quietly after an error
        self._version = 0
        self._filled = 0
        self._hash = hashlib.sha256()

    def add(self, version: int, offset: int, total: int, data: bytes | memoryview, sha256: str) -> int | None:
        """Add one chunk. Returns the version once it is complete, verified and built (ready for `take`), None
        while more is expected; raises `BlobError` (chunks out of order, a failed sha256 check, bytes that are
        not a policy): that version is dropped, and nothing a policy in use views has changed."""
        if offset == 0:
            self._writing, self._version, self._filled, self._hash = self._free(total), version, 0, hashlib.sha256()
        slot = self._writing
        if slot is None and offset != 0 and version == self._failed:
            return None
        if slot is None or version != self._version or offset != self._filled or offset + len(data) > len(slot.buffer):
            self._writing, self._failed = None, version
            raise BlobError(f"weights v{version}: chunk at {offset} ({len(data)} bytes) does not follow the "
                            f"{self._filled} bytes received of v{self._version}")
        slot.buffer[offset:offset + len(data)] = data
        self._hash.update(data)
        self._filled += len(data)
        if self._filled < len(slot.buffer):
            return None
        self._writing = None
        if self._hash.hexdigest() != sha256:
            self._failed = version
            raise BlobError(f"weights v{version} failed the sha256 check")
        try:
            self._policy_on(slot)
        except Exception as exc:  # a malformed blob must never take the actor down
            slot.policy, slot.head = None, b""
            raise BlobError(f"weights v{version} could not be loaded ({exc})") from exc
        with self._lock:
            self._pending = (version, slot)
        return version

    def take(self) -> tuple[int, P] | None:
        """The newest verified version and its policy, not handed out before; None if there is none."""
        with self._lock:
            if self._pending is None:
                return None
            (version, slot), self._pending = self._pending, None
            self._running = slot
            assert slot.policy is not None
            return version, slot.policy

    def _free(self, total: int) -> _Slot[P]:
        """The buffer neither the running nor the pending policy views, sized ``total``."""
        with self._lock:
            used = (self._running, self._pending[1] if self._pending else None)
            slot = next(s for s in self._slots if all(s is not u for u in used))
        if len(slot.buffer) != total:
            slot.buffer, slot.head, slot.policy = bytearray(total), b"", None
        return slot

    def _policy_on(self, slot: _Slot[P]) -> None:
        """Keep the slot's policy when the header is the one it was built from (its tensors view the new bytes),
        else decode the buffer and build one."""
        buffer = slot.buffer
        if slot.head and buffer[:len(slot.head)] == slot.head:
            return
        slot.head, slot.policy = b"", None
        tensors, _ = decode(buffer)
        slot.policy = self._build(tensors)
        start = torch.frombuffer(buffer, dtype=torch.uint8).data_ptr() if buffer else 0
        if all(t.numel() == 0 or start <= t.data_ptr() < start + len(buffer) for t in tensors.values()):
            slot.head = bytes(buffer[:8 + struct.unpack_from("<Q", buffer, 0)[0]])  # views only: reusable
