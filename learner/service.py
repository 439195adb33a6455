"""The gRPC servicer: translates hilrl.v1 messages to LearnerCore calls and back, nothing more."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import grpc

from hilrl.learner.core import LearnerCore, SpecMismatch
from hilrl.protos import codec
from hilrl.protos.v1 import learner_pb2 as pb
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

WEIGHT_CHUNK_BYTES = 1 << 20


class LearnerService(pb_grpc.LearnerServicer):
    def __init__(self, core: LearnerCore) -> None:
        self.core = core

    def Hello(self, request: pb.HelloRequest, context: grpc.ServicerContext) -> pb.HelloReply:
        if request.protocol_version != codec.PROTOCOL_VERSION:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"protocol version {request.protocol_version} is not supported by this learner "
                          f"(it speaks {codec.PROTOCOL_VERSION}); upgrade the older side")
        if not request.actor_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "actor_id is empty")
        try:
            spec = codec.decode_spec(request.spec)
            info = self.core.hello(request.actor_id, spec)
        except codec.DecodeError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except SpecMismatch as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.info("actor %s connected (peer %s)", request.actor_id, context.peer())
        return pb.HelloReply(
            protocol_version=codec.PROTOCOL_VERSION,
            run_id=info["run_id"],
            policy_config_json=json.dumps(info["policy_config"].to_dict()),
            weight_version=info["weight_version"],
            last_acked_seq=info["last_acked_seq"],
            stage=codec.STAGE_VALUES[info["stage"]],
            normalization=codec.encode_tensor_map(info["normalization"]),
        )

    def StreamTransitions(self, request_iterator: Iterator[pb.TransitionBatch],
                          context: grpc.ServicerContext) -> Iterator[pb.Ack]:
        actor_id = None
        try:
            for batch in request_iterator:
                if batch.actor_id not in self.core.actors or self.core.spec is None:
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                  f"actor {batch.actor_id!r} has not said Hello; call Hello first")
                actor_id = batch.actor_id
                try:
                    items = codec.decode_items(batch, self.core.spec)
                    duplicate = self.core.ingest(actor_id, batch.seq, items, batch.weight_version_applied)
                except (codec.DecodeError, ValueError) as exc:
                    log.warning("actor %s: rejected batch %d: %s", actor_id, batch.seq, exc)
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"batch {batch.seq} rejected: {exc}")
                yield pb.Ack(seq=batch.seq, duplicate=duplicate)
        finally:
            if actor_id is not None:
                self.core.disconnected(actor_id)

    def SubscribeWeights(self, request: pb.SubscribeRequest,
                         context: grpc.ServicerContext) -> Iterator[pb.LearnerEvent]:
        stage_seen: str | None = None
        have = request.have_version
        while context.is_active() and not self.core.stopping:
            stage, weights = self.core.wait_for_change(stage_seen, have, timeout=1.0)
            if stage != stage_seen:
                stage_seen = stage
                yield pb.LearnerEvent(stage=codec.STAGE_VALUES[stage])
            if weights.version > have:
                yield from weight_chunks(weights.version, weights.sha256, weights.blob)
                have = weights.version

    def GetStatus(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        s = self.core.status()
        return pb.StatusReply(
            protocol_version=codec.PROTOCOL_VERSION,
            run_id=s["run_id"],
            stage=codec.STAGE_VALUES[s["stage"]],
            learner_step=s["learner_step"],
            offline_steps=s["offline_steps"],
            weight_version=s["weight_version"],
            human=pb.BufferStatus(**s["buffers"]["human"]),
            policy=pb.BufferStatus(**s["buffers"]["policy"]),
            actors=[pb.ActorStatus(**a) for a in s["actors"]],
            demo_episodes=s["demo_episodes"],
            demo_episodes_needed=s["demo_episodes_needed"],
        )


def weight_chunks(version: int, sha256: str, blob: bytes) -> Iterator[pb.LearnerEvent]:
    total = len(blob)
    for offset in range(0, max(total, 1), WEIGHT_CHUNK_BYTES):
        chunk = pb.WeightsChunk(version=version, sha256=sha256, total_size=total, offset=offset,
                                data=blob[offset:offset + WEIGHT_CHUNK_BYTES])
        yield pb.LearnerEvent(weights=chunk)
