"""The gRPC servicer: translates hilrl.v1 messages to LearnerCore calls and back.

Beyond translating it validates (every rejection is a specific status code with a message a user can act
on: bytes that do not parse are INVALID_ARGUMENT, not gRPC's INTERNAL) and hands batches that already
wait in one stream to the core together, so they share one durable store commit.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import queue
import threading
from collections.abc import Iterator

import grpc
from google.protobuf.message import DecodeError, Message

from hilrl.buffers.store import StoreError
from hilrl.learner.actors import ActorIdTaken, ActorInUse, ReservedActorId
from hilrl.learner.core import LearnerCore, SpecMismatch
from hilrl.learner.limits import ByteBudget, ServerLimits, StreamSlots
from hilrl.learner.memory import BuffersTooLarge
from hilrl.learner.weights import EncodedWeights
from hilrl.protos import codec
from hilrl.protos.v1 import learner_pb2 as pb
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

WEIGHT_CHUNK_BYTES = 1 << 20
SERVICE_NAME = "hilrl.v1.Learner"


class Malformed:
    """Stands in for a request whose bytes do not parse, so the servicer can answer INVALID_ARGUMENT
    (gRPC itself would answer INTERNAL, "Exception deserializing request!")."""

    def __init__(self, kind: str, error: str) -> None:
        self.message = f"malformed {kind}: the bytes are not a valid protobuf message ({error})"


def _parser(cls: type[Message]):
    def parse(data: bytes) -> Message | Malformed:
        try:
            return cls.FromString(data)
        except (DecodeError, ValueError) as exc:
            return Malformed(cls.__name__, str(exc) or type(exc).__name__)
    return parse


def _reject_malformed(request: object, context: grpc.ServicerContext) -> None:
    if isinstance(request, Malformed):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


def add_to_server(service: LearnerService, server: grpc.Server) -> None:
    """Register ``service`` like the generated ``add_LearnerServicer_to_server``, except that requests that
    do not parse reach the servicer as `Malformed` and get INVALID_ARGUMENT."""
    def ser(cls: type[Message]):
        return cls.SerializeToString

    handlers = {
        "Hello": grpc.unary_unary_rpc_method_handler(
            service.Hello, request_deserializer=_parser(pb.HelloRequest), response_serializer=ser(pb.HelloReply)),
        "StreamTransitions": grpc.stream_stream_rpc_method_handler(
            service.StreamTransitions, request_deserializer=_parser(pb.TransitionBatch),
            response_serializer=ser(pb.Ack)),
        "SubscribeWeights": grpc.unary_stream_rpc_method_handler(  # weight chunks come serialized already
            service.SubscribeWeights, request_deserializer=_parser(pb.SubscribeRequest),
            response_serializer=_serialize),
        "GetStatus": grpc.unary_unary_rpc_method_handler(
            service.GetStatus, request_deserializer=_parser(pb.StatusRequest),
            response_serializer=ser(pb.StatusReply)),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)])


class LearnerService(pb_grpc.LearnerServicer):
    def __init__(self, core: LearnerCore, limits: ServerLimits | None = None) -> None:
        self.core = core
        self.limits = limits or ServerLimits()
        self.streams = StreamSlots(self.limits.max_actors, "transition streams")
        self.subscriptions = StreamSlots(self.limits.max_actors, "weight subscriptions")

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:
        _reject_malformed(request, context)
        if request.protocol_version != codec.PROTOCOL_VERSION:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"protocol version {request.protocol_version} is not supported by this learner "
                          f"(it speaks {codec.PROTOCOL_VERSION}); upgrade the older side")
        if not request.actor_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "actor_id is empty")
        try:
            spec = codec.decode_spec(request.spec)
            info = self.core.hello(request.actor_id, spec, request.instance_id, request.session_id, context.peer())
        except (codec.DecodeError, ReservedActorId) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (SpecMismatch, ActorIdTaken) as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ActorInUse as exc:
            log.warning("actor %s refused: %s", request.actor_id, exc)
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except BuffersTooLarge as exc:
            log.error("actor %s refused: %s", request.actor_id, exc)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"learner cannot hold this spec's buffers: {exc}")
        except StoreError as exc:  # the output directory's store holds another spec
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except OSError as exc:  # creating the store or spec.json failed; nothing was adopted, the actor retries
            log.error("actor %s: adopting its spec failed: %s", request.actor_id, exc)
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
                grpc.StatusCode.UNAVAILABLE
            context.abort(code, f"learner not storing: could not create its store for this spec ({exc})")
        log.info("actor %s connected (peer %s)", request.actor_id, context.peer())
        return pb.HelloReply(
            protocol_version=codec.PROTOCOL_VERSION,
            run_id=info["run_id"],
            policy_config_json=json.dumps(info["policy_config"].to_dict()),
            weight_version=info["weight_version"],
            last_acked_seq=info["last_acked_seq"],
            stage=codec.STAGE_VALUES[info["stage"]],
            max_message_bytes=min(filter(None, (request.max_message_bytes, self.core.cfg.max_message_mb << 20))),
        )

    def StreamTransitions(self, request_iterator: Iterator[pb.TransitionBatch],
                          context: grpc.ServicerContext) -> Iterator[pb.Ack]:
        """Log and acknowledge batches in order. Batches that are already waiting in the stream when the
        ingest is free are logged together (one record; see `_queued_groups`), so an actor catching up after a
        partition or a learner restart is not held to one fsync per batch."""
        if refused := self.streams.enter():
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        actor_id = None
        try:
            for group in _queued_groups(request_iterator, context, self.limits.stream_buffer_bytes):
                stored: list[tuple[int, list]] = []
                error: tuple[grpc.StatusCode, str] | None = None
                for batch in group:
                    error = self._check(batch)
                    if error is not None:
                        break
                    try:
                        stored.append((batch.seq, codec.decode_items(batch, self.core.spec)))
                    except codec.DecodeError as exc:
                        error = (grpc.StatusCode.INVALID_ARGUMENT, f"batch {batch.seq} rejected: {exc}")
                        break
                if stored and actor_id is None:  # the stream's first batch names its actor
                    try:
                        self.core.stream_started(group[0].actor_id, context.peer())
                    except ActorInUse as exc:
                        log.warning("actor %s: %s", group[0].actor_id, exc)
                        context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
                    actor_id = group[0].actor_id
                if stored:  # the valid batches before a bad one are stored and acknowledged first
                    try:
                        applied = group[len(stored) - 1].weight_version_applied
                        duplicates = self.core.ingest.batches(actor_id, stored, applied)
                    except ValueError as exc:  # StoreInputError: nothing was stored; resending cannot help
                        error = (grpc.StatusCode.INVALID_ARGUMENT, f"batch rejected: {exc}")
                    except OSError as exc:  # nothing new is stored (all or nothing); the actor keeps it, retries
                        error = _store_failed(exc, self.core.store_problem)
                    except Exception as exc:  # noqa: BLE001 - a bug, not the batch's fault: say so, let it retry
                        log.exception("actor %s: storing %d batches failed", actor_id, len(stored))
                        error = (grpc.StatusCode.INTERNAL, f"the learner failed to store the batch ({exc!r}); "
                                                           "it stays in the actor's outbox and is resent")
                    else:
                        last = group[len(stored) - 1]
                        if last.HasField("loop"):
                            self.core.note_loop(actor_id, _loop_fields(last.loop))
                        for (seq, _), duplicate in zip(stored, duplicates, strict=True):
                            yield pb.Ack(seq=seq, duplicate=duplicate)
                if error is not None:
                    log.warning("actor %s: %s", getattr(group[0], "actor_id", "?"), error[1])
                    context.abort(*error)
        finally:
            self.streams.leave()
            if actor_id is not None:
                self.core.disconnected(actor_id, context.peer())

    def _check(self, batch: pb.TransitionBatch | Malformed) -> tuple[grpc.StatusCode, str] | None:
        if isinstance(batch, Malformed):
            return grpc.StatusCode.INVALID_ARGUMENT, batch.message
        if batch.seq == 0:
            return grpc.StatusCode.INVALID_ARGUMENT, "batch seq 0: sequence numbers start at 1"
        if batch.actor_id not in self.core.actors or self.core.spec is None:
            return (grpc.StatusCode.FAILED_PRECONDITION,
                    f"actor {batch.actor_id!r} has not said Hello; call Hello first")
        return None

    def SubscribeWeights(self, request: pb.SubscribeRequest,
                         context: grpc.ServicerContext) -> Iterator[pb.LearnerEvent | bytes]:
        _reject_malformed(request, context)
        if refused := self.subscriptions.enter():
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        stage_seen: str | None = None
        have = request.have_version
        me = object()  # this stream, for the core's "every subscriber has been sent the new version" wait
        self.core.weights.subscriber_has(me, have)
        try:
            while context.is_active() and not self.core.stopping:
                stage, weights = self.core.weights.wait_for_change(stage_seen, have, timeout=1.0)
                if stage != stage_seen:
                    stage_seen = stage
                    yield pb.LearnerEvent(stage=codec.STAGE_VALUES[stage])
                if weights.version > have:
                    yield from weight_chunks(weights)
                    have = weights.version
                    self.core.weights.subscriber_has(me, have)
        finally:
            self.core.weights.subscriber_has(me, None)
            self.subscriptions.leave()

    def GetStatus(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        _reject_malformed(request, context)
        return codec.encode_status(self.core.status())


def _store_failed(exc: OSError, problem: str) -> tuple[grpc.StatusCode, str]:
    """The status for a failed store write: RESOURCE_EXHAUSTED when the disk is full, UNAVAILABLE otherwise;
    both are retried by the actor (with backoff, keeping its outbox)."""
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return (grpc.StatusCode.RESOURCE_EXHAUSTED if full else grpc.StatusCode.UNAVAILABLE), f"learner {problem}"


def weight_chunks(weights: EncodedWeights) -> Iterator[bytes]:
    """One version as serialized `LearnerEvent`s, each a slice of its one encoded buffer naming the version and total
    size; the last also carries the sha256 (so the first chunks stream while it is computed). Framed by hand (a
    message is the concatenation of its encoded fields), so each chunk's bytes are copied once, straight from the
    buffer, instead of into a message and again out of it."""
    total = len(weights.data)
    for offset, data, sha256 in weights.chunks(WEIGHT_CHUNK_BYTES):
        head = pb.WeightsChunk(version=weights.version, sha256=sha256, total_size=total,
                               offset=offset).SerializeToString()
        head += _DATA_TAG + _varint(len(data))
        yield b"".join((_WEIGHTS_TAG, _varint(len(head) + len(data)), head, data))


_DATA_TAG = bytes([pb.WeightsChunk.DATA_FIELD_NUMBER << 3 | 2])  # field 5, length-delimited
_WEIGHTS_TAG = bytes([pb.LearnerEvent.WEIGHTS_FIELD_NUMBER << 3 | 2])  # field 2, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _serialize(message: Message | bytes) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


_END = object()
GROUP_MAX_BATCHES = 16
GROUP_MAX_BYTES = 32 << 20


def _queued_groups(requests: Iterator, context: grpc.ServicerContext,
                   buffer_bytes: int = ServerLimits.stream_buffer_bytes) -> Iterator[list]:
    """The stream's messages in order, as lists: each list is the next message plus those already queued
    behind it from the same actor (at most GROUP_MAX_BATCHES / GROUP_MAX_BYTES). A reader thread keeps up
    to GROUP_MAX_BATCHES messages and `buffer_bytes` queued (the group being stored included), so gRPC
    flow control still holds back a fast sender and a stream's memory stays bounded."""
    queued: queue.Queue = queue.Queue(maxsize=GROUP_MAX_BATCHES)
    budget = ByteBudget(buffer_bytes)
    sizes: dict[int, int] = {}  # id(message) -> its ByteSize(), computed once (it walks the whole message)

    def put(item: object) -> bool:
        size = item.ByteSize() if isinstance(item, Message) else 0
        if size:
            sizes[id(item)] = size
        while size and not budget.take(size, timeout=0.5):
            if not context.is_active():
                return False
        while context.is_active():
            try:
                queued.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for message in requests:
                if not put(message):
                    return
        except Exception:  # noqa: BLE001 - the call ended (cancelled, link lost): the handler just stops
            pass
        put(_END)

    threading.Thread(target=read, name="stream-reader", daemon=True).start()
    carry: object = None
    held = 0  # bytes of the group handed out last, released when the caller asks for the next one
    while True:
        budget.give(held)
        first = carry if carry is not None else _get(queued, context)
        carry = None
        if first is _END or first is None:
            return
        group = [first]
        if not isinstance(first, Malformed):
            size = sizes.get(id(first), 0)
            while len(group) < GROUP_MAX_BATCHES and size < GROUP_MAX_BYTES:
                try:
                    message = queued.get_nowait()
                except queue.Empty:
                    break
                if message is _END or isinstance(message, Malformed) or message.actor_id != first.actor_id:
                    carry = message
                    break
                group.append(message)
                size += sizes.get(id(message), 0)
        held = sum(sizes.pop(id(m), 0) for m in group if isinstance(m, Message))
        yield group


def _get(queued: queue.Queue, context: grpc.ServicerContext) -> object:
    while context.is_active():
        try:
            return queued.get(timeout=0.5)
        except queue.Empty:
            continue
    return None


def _loop_fields(loop: pb.LoopStats) -> dict:
    """An actor's LoopStats as ActorRecord fields (non-finite periods from a broken actor become 0)."""
    finite = [v if math.isfinite(v) else 0.0 for v in (loop.period_p50_ms, loop.period_p99_ms)]
    return {"loop_period_p50_ms": finite[0], "loop_period_p99_ms": finite[1], "overruns": loop.overruns,
            "watchdog_holds": loop.watchdog_holds, "safety_clamps": loop.safety_clamps}
