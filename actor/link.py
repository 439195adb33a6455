"""The actor's connection to the learner: two background threads, never on the control tick.

* sender: Hello, then streams outbox batches and drops each one the learner acknowledges;
  on any transport error it reconnects with exponential backoff and resends what is unacknowledged.
  Refusals that retrying cannot fix are fatal (``self.fatal``; the actor exits with code 3):
  the FATAL_CODES (a wrong spec, UNAUTHENTICATED: missing or wrong bearer token, ...), and a TLS
  handshake that fails on this side (the learner's certificate does not verify against --tls-ca,
  the name does not match, or the learner speaks plaintext) HANDSHAKE_ATTEMPTS times in a row.
  A learner that just closes the connection during setup (a plaintext actor against a TLS learner,
  or no client certificate for a mutual-TLS learner) looks like a learner going away, so that is
  retried forever, with a log line naming the likely cause.
* subscriber: receives stage changes and weight chunks, joins them into a free buffer while hashing them
  (sha256 verified) and has the new policy on that buffer (no copies; `learner.weights.WeightReceiver`), so the
  control loop only swaps a reference between ticks.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

import grpc
import numpy as np

from hilrl.actor.outbox import SEND_MARGIN, Outbox, StateDir
from hilrl.buffers.spec import Spec
from hilrl.learner.networks import Policy, PolicyConfig, policy_from_tensors
from hilrl.learner.tensor_blob import BlobError
from hilrl.learner.weights import WeightReceiver
from hilrl.protos import codec
from hilrl.protos.transport import ClientSecurity, client_channel, connection_hint, is_tls_handshake_failure
from hilrl.protos.v1 import learner_pb2 as pb
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

FATAL_CODES = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
               grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
               grpc.StatusCode.UNIMPLEMENTED}
# ALREADY_EXISTS: another actor process streams under this actor id. It may be this actor's own stream from
# before a restart or a partition, which the learner drops within ~1.5 keepalive intervals: retried this long.
IN_USE_GRACE_KEEPALIVES = 3
HANDSHAKE_ATTEMPTS = 3  # consecutive TLS handshake failures before giving up (rides out a certificate swap)


class NeverFits(Exception):
    """Batches retrying cannot deliver: larger than the agreed message limit, or recorded for another run."""


def _step_bytes(spec: Spec) -> int:
    """Bytes of the largest step of `spec` on the wire (an episode's last step carries two observations)."""
    obs = sum(f.size * np.dtype(f.dtype).itemsize + 64 for f in spec.observation)
    return 2 * obs + spec.action_dim * 4 + 256


class Backoff:
    # cap: a restarted learner (seconds to start) is back in use within a few seconds, and an unreachable
    # one costs one refused Hello per actor every 4 s.
    def __init__(self, first: float = 0.5, cap: float = 4.0) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first


class LearnerLink:
    def __init__(self, target: str, actor_id: str, spec: Spec, outbox: Outbox, max_message_mb: int = 16,
                 security: ClientSecurity | None = None, state: StateDir | None = None, new_run: bool = False) -> None:
        """``security``: TLS and token options (None = plaintext, token from HILRL_TOKEN if set);
        raises ``SecurityConfigError`` when they cannot be used. ``state``: the actor's state directory, whose
        identity travels in Hello and which remembers the learner's run (``new_run``: accept another run even
        with unacknowledged batches)."""
        self.target = target
        self.actor_id = actor_id
        self.spec = spec
        self.outbox = outbox
        self.security = security if security is not None else ClientSecurity()
        self.max_message_bytes = max_message_mb << 20
        self.state = state
        self.new_run = new_run
        self.session_id = secrets.token_hex(8)
        self.channel = client_channel(target, max_message_mb, self.security)
        self.stub = pb_grpc.LearnerStub(self.channel)
        self._subscribe = self.channel.unary_stream(  # the stub's SubscribeWeights, with the weight chunks' parser
            "/hilrl.v1.Learner/SubscribeWeights", request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=parse_event)
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.fatal: str | None = None
        self.stage: str | None = None
        self.policy_config: PolicyConfig | None = None
        self.run_id = ""
        self.weight_version_applied = 0
        self.loop_stats: pb.LoopStats | None = None  # replaced (never mutated) by the control loop
        self._weights: WeightReceiver[Policy] = WeightReceiver(self._build_policy)
        self._received_version = 0
        self._threads = [threading.Thread(target=self._sender, name="sender", daemon=True),
                         threading.Thread(target=self._subscriber, name="subscriber", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        sender, subscriber = self._threads
        sender.join(timeout=5)  # its stream ends by itself once the batch generator sees `stop`
        self.channel.close()  # cancels the weight subscription, which would only wake up on the next event
        subscriber.join(timeout=5)

    def take_policy(self) -> tuple[int, Policy] | None:
        """The newest verified policy not yet handed out (called by the control loop between ticks). The policy
        taken before it is no longer run once this returns a new one: its weights' buffer is written again."""
        return self._weights.take()

    # ------------------------------------------------------------------ sender

    def _hello(self) -> pb.HelloReply:
        request = pb.HelloRequest(protocol_version=codec.PROTOCOL_VERSION, actor_id=self.actor_id,
                                  spec=codec.encode_spec(self.spec), max_message_bytes=self.max_message_bytes,
                                  instance_id=self.state.instance_id if self.state else "", session_id=self.session_id)
        reply = self.stub.Hello(request, timeout=10.0)
        if self.state is not None:
            self._check_run(reply.run_id)
        if self.run_id and reply.run_id != self.run_id:
            log.warning("the learner now serves run %s (was %s); accepting its weight versions from v1",
                        reply.run_id, self.run_id)
            self._received_version = 0
        self.run_id = reply.run_id
        self.policy_config = PolicyConfig.from_dict(json.loads(reply.policy_config_json))
        self.stage = codec.STAGE_NAMES.get(reply.stage, self.stage)
        self.outbox.ack(reply.last_acked_seq)
        self._agree_on_message_limit(reply.max_message_bytes or self.max_message_bytes)  # 0: an older learner
        return reply

    def _check_run(self, run_id: str) -> None:
        """Unacknowledged batches belong to the run they were recorded for: never acknowledge (delete) or send them
        to another run's learner unless the operator said so (--new-run)."""
        assert self.state is not None
        before = self.state.run_id
        if before and run_id != before and len(self.outbox) and not self.new_run:
            raise NeverFits(f"the learner at {self.target} serves run {run_id}, but this actor's outbox holds "
                            f"{len(self.outbox)} unacknowledged batches of run {before}: point the actor at that "
                            "run's learner, or pass --new-run to send them to this one")
        self.state.remember_run(run_id)

    def _agree_on_message_limit(self, learner_limit: int) -> None:
        """Batches put from now on fit the smaller of the two sides' limits; a step that cannot fit, or a batch
        already in the outbox that does not, can never be stored: stop and say what to do."""
        limit = min(self.max_message_bytes, learner_limit)
        self.outbox.set_message_limit(limit)
        step = _step_bytes(self.spec)
        if step + SEND_MARGIN > limit:
            raise NeverFits(f"one step of this spec is {step / 2**20:.1f} MiB on the wire, more than the message "
                            f"limit agreed with the learner ({limit / 2**20:.1f} MiB); raise --max-message-mb on "
                            "the learner and on this actor")
        for seq, size in self.outbox.oversized():
            state = self.outbox.dir.parent
            raise NeverFits(f"batch seq {seq} in the outbox is {size / 2**20:.1f} MiB, more than the message limit "
                            f"agreed with the learner ({limit / 2**20:.1f} MiB; it was written under a larger one): "
                            f"raise the learner's --max-message-mb, or set the batch aside: hilrl outbox set-aside "
                            f"--state-dir {state} --seq {seq} (see docs/troubleshooting.md)")

    def _sender(self) -> None:
        backoff = Backoff()
        handshake_failures = 0
        not_storing = False  # the learner answers but cannot store: back off further, not after every Hello
        in_use_since: float | None = None  # when the learner first said another process streams under our id
        while not self.stop.is_set():
            in_setup = True  # a hint about TLS setup only fits a failure before the learner answered
            try:
                reply = self._hello()
                in_setup = False
                if not self.connected.is_set():
                    log.info("connected to learner %s (run %s, stage %s, weights v%d)", self.target,
                             reply.run_id, self.stage, reply.weight_version)
                self.connected.set()
                if not not_storing:
                    backoff.reset()
                handshake_failures = 0
                first = self.outbox.first_pending()
                if first is not None:
                    log.info("resending %d unacknowledged batches from seq %d (the learner has stored up to "
                             "seq %d)", len(self.outbox), first, reply.last_acked_seq)
                for ack in self.stub.StreamTransitions(self._batches()):
                    if ack.duplicate:
                        log.info("batch %d was already stored by the learner (duplicate dropped there)", ack.seq)
                    self.outbox.ack(ack.seq)
                    not_storing = False
                    backoff.reset()
                if not self.stop.is_set():
                    raise RuntimeError("learner closed the transition stream")
            except grpc.RpcError as exc:
                code = exc.code()
                details = exc.details() or ""
                hint = connection_hint(code, details, self.security.uses_tls) if in_setup else ""
                if code == grpc.StatusCode.ALREADY_EXISTS:
                    in_use_since = in_use_since or time.monotonic()
                    if time.monotonic() - in_use_since > IN_USE_GRACE_KEEPALIVES * self.security.keepalive_s:
                        self._fail(f"learner refused this actor ({code.name}): {details}")
                        return
                else:
                    in_use_since = None
                if code in FATAL_CODES:
                    seq = self.outbox.first_pending()
                    poison = code == grpc.StatusCode.INVALID_ARGUMENT and not in_setup and seq is not None
                    state = self.outbox.dir.parent
                    self._fail(f"learner refused this actor ({code.name}): {details}" + (
                        f"; it refuses batch seq {seq} every time: inspect it with `hilrl outbox list --state-dir "
                        f"{state}` and set it aside (kept, not sent) with `hilrl outbox set-aside --state-dir "
                        f"{state} --seq {seq}` (see docs/troubleshooting.md)" if poison else ""))
                    return
                tls_failure = code == grpc.StatusCode.UNAVAILABLE and is_tls_handshake_failure(details)
                handshake_failures = handshake_failures + 1 if tls_failure else 0
                if handshake_failures >= HANDSHAKE_ATTEMPTS:
                    self._fail(f"cannot connect to the learner at {self.target} over TLS ({code.name}, "
                               f"{handshake_failures} attempts): {details}{hint}")
                    return
                not_storing = "not storing" in details
                self._retry(backoff, f"{code.name}: {details}{hint}", reachable=not_storing)
            except NeverFits as exc:
                self._fail(str(exc))
                return
            except OSError as exc:  # recording an acknowledgement in the state directory failed (disk full, ...)
                self.connected.clear()
                delay = backoff.next()
                log.error("cannot record the learner's acknowledgements in %s (%s): the batches stay in the outbox "
                          "(resent, stored once); reconnecting in %.1fs", self.outbox.dir, exc, delay)
                self.stop.wait(delay)
            except RuntimeError as exc:
                self._retry(backoff, str(exc))

    def _fail(self, message: str) -> None:
        self.fatal = message
        log.error(message)
        self.stop.set()

    def _retry(self, backoff: Backoff, why: str, reachable: bool = False) -> None:
        """``reachable``: the learner answered but could not store (its disk is full or failing; RESOURCE_EXHAUSTED
        or UNAVAILABLE "learner not storing ..."): retried like a lost link, the batches stay in the outbox."""
        self.connected.clear()
        delay = backoff.next()
        what = "did not store the batches" if reachable else "unreachable"
        log.warning("learner %s %s (%s); %d batches kept in the outbox; retrying in %.1fs",
                    self.target, what, why, len(self.outbox), delay)
        self.stop.wait(delay)

    def _batches(self) -> Iterator[pb.TransitionBatch]:
        sent = self.outbox.last_acked
        while not self.stop.is_set():
            for batch in self.outbox.pending_after(sent, timeout=0.2):
                batch.weight_version_applied = self.weight_version_applied
                if self.loop_stats is not None:
                    batch.loop.CopyFrom(self.loop_stats)
                yield batch
                sent = batch.seq

    # ------------------------------------------------------------------ subscriber

    def _subscriber(self) -> None:
        backoff = Backoff()
        while not self.stop.is_set():
            if not self.connected.wait(timeout=0.2):
                continue
            try:
                request = pb.SubscribeRequest(actor_id=self.actor_id, have_version=self._received_version)
                for event in self._subscribe(request):
                    backoff.reset()
                    if isinstance(event, Chunk):
                        self._receive(event)
                    elif event.WhichOneof("kind") == "stage":
                        self.stage = codec.STAGE_NAMES.get(event.stage, self.stage)
                    else:
                        self._receive(event.weights)
            except grpc.RpcError as exc:
                if self.stop.is_set():
                    return
                delay = backoff.next()
                log.warning("weight subscription lost (%s); retrying in %.1fs", exc.code().name, delay)
                self.stop.wait(delay)

    def _receive(self, c: Chunk | pb.WeightsChunk) -> None:
        """Add one chunk; once a version is complete, its sha256 verified and its policy built (on views into the
        received buffer), it is ready for `take_policy`. A bad version is logged and the current kept."""
        try:
            version = self._weights.add(c.version, c.offset, c.total_size, c.data, c.sha256)
        except BlobError as exc:
            log.error("%s; keeping the current weights", exc)
            return
        if version is not None:
            self._received_version = version

    def _build_policy(self, tensors: dict) -> Policy:
        if self.policy_config is None:
            raise BlobError("no policy config from the learner yet")
        return policy_from_tensors(self.policy_config, tensors)


class Chunk(NamedTuple):
    """A `WeightsChunk` whose data is a view of the received message."""

    version: int
    offset: int
    total_size: int
    data: memoryview
    sha256: str


_WEIGHTS_TAG = pb.LearnerEvent.WEIGHTS_FIELD_NUMBER << 3 | 2


def parse_event(message: bytes) -> pb.LearnerEvent | Chunk:
    """A received `LearnerEvent`; a weights chunk is read by hand, its data a view of ``message``: protobuf's
    parser copies each chunk's megabyte twice, and on this path that costs more than the network."""
    if message[:1] == bytes([_WEIGHTS_TAG]):
        try:
            return _chunk(memoryview(message))
        except (IndexError, ValueError):
            pass  # anything unusual: protobuf parses it (or refuses it)
    return pb.LearnerEvent.FromString(message)


def _chunk(view: memoryview) -> Chunk:
    size, pos = _varint(view, 1)
    end = pos + size
    if end != len(view):
        raise ValueError("not one weights chunk")
    fields: dict[int, int | memoryview] = {}
    while pos < end:
        tag, pos = _varint(view, pos)
        kind = tag & 7
        if kind == 0:
            fields[tag >> 3], pos = _varint(view, pos)
        elif kind == 2:
            n, pos = _varint(view, pos)
            if pos + n > end:
                raise ValueError("field past the end")
            fields[tag >> 3], pos = view[pos:pos + n], pos + n
        elif kind in (1, 5):  # fixed 64/32-bit fields: none in a WeightsChunk, skipped like unknown fields
            pos += 8 if kind == 1 else 4
        else:
            raise ValueError(f"wire type {kind}")
    if pos != end:
        raise ValueError("field past the end")
    ints = [fields.get(n, 0) for n in (1, 4, 3)]
    data, sha256 = fields.get(5, memoryview(b"")), fields.get(2, memoryview(b""))
    if not all(isinstance(i, int) for i in ints) or not isinstance(data, memoryview) or \
            not isinstance(sha256, memoryview):
        raise ValueError("field of another type")
    version, offset, total = ints
    return Chunk(version, offset, total, data, bytes(sha256).decode())


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = view[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")
