"""Server limits (issue 14, defect 8): streams beyond --max-actors are refused (RESOURCE_EXHAUSTED, naming the
option) while Hello, GetStatus and health keep answering; a stream reads at most --stream-buffer-mb ahead of the
store; a stored batch does not wake the weight subscribers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import ingest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_learner_core import SPEC, core, steps

from hilrl.learner.limits import ServerLimits
from hilrl.learner.server import Security, build_server
from hilrl.learner.service import _queued_groups
from hilrl.protos import codec
from hilrl.protos.v1 import learner_pb2 as pb
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc


class Active:
    def is_active(self) -> bool:
        return True


def test_the_worker_pool_leaves_room_for_short_calls() -> None:
    limits = ServerLimits(max_actors=32)
    assert limits.workers == 72 and limits.max_concurrent_rpcs == 136
    with pytest.raises(SystemExit, match="--max-actors"):
        ServerLimits(max_actors=0)


def test_streams_beyond_max_actors_are_refused_while_short_calls_answer(tmp_path: Path) -> None:
    c = core(tmp_path, port=0, max_actors=2)
    built = build_server(c.cfg, c, Security(None, None))
    channel = grpc.insecure_channel(f"127.0.0.1:{built.port}")
    stub, health = pb_grpc.LearnerStub(channel), health_pb2_grpc.HealthStub(channel)
    hold = threading.Event()

    def idle():  # a transition stream that sends nothing (yet)
        hold.wait()
        yield from ()

    calls = []
    try:
        for _ in range(2):
            calls.append(stub.SubscribeWeights(pb.SubscribeRequest()))
            calls.append(stub.StreamTransitions(idle()))
        time.sleep(1.0)
        for extra in (lambda: next(stub.SubscribeWeights(pb.SubscribeRequest(), timeout=10)),
                      lambda: next(stub.StreamTransitions(idle(), timeout=10))):
            with pytest.raises(grpc.RpcError) as refused:
                extra()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-actors 2" in refused.value.details()
        started = time.monotonic()
        reply = stub.Hello(pb.HelloRequest(protocol_version=codec.PROTOCOL_VERSION, actor_id="a",
                                           spec=codec.encode_spec(SPEC)), timeout=5)
        assert reply.run_id and stub.GetStatus(pb.StatusRequest(), timeout=5).run_id == reply.run_id
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - started < 5
        calls.pop().cancel()  # one stream ends: its slot is free again
        calls.pop().cancel()
        deadline = time.monotonic() + 20  # the server ends the cancelled calls' handlers when it gets to them
        while (built.service.streams.active, built.service.subscriptions.active) != (1, 1):
            assert time.monotonic() < deadline, (built.service.streams.active, built.service.subscriptions.active)
            time.sleep(0.1)
    finally:
        hold.set()
        for call in calls:
            call.cancel()
        built.server.stop(0)
        channel.close()


def test_a_stream_reads_at_most_its_buffer_ahead() -> None:
    produced = [0]

    def batches():
        for seq in range(1, 51):
            produced[0] += 1
            yield pb.TransitionBatch(actor_id="a" * (1 << 20), seq=seq)  # 1 MiB each

    groups = _queued_groups(batches(), Active(), buffer_bytes=4 << 20)
    first = next(groups)
    time.sleep(1.0)  # the reader runs ahead while the first group is "being stored"
    assert len(first) <= 4 and produced[0] <= 6  # 4 MiB of 1 MiB batches, and the one waiting for room
    seen = len(first) + sum(len(g) for g in groups)
    assert seen == 50


def test_a_stored_batch_does_not_wake_weight_subscribers(tmp_path: Path) -> None:
    c = core(tmp_path)
    c.hello("a", SPEC)
    reads = [0]

    class Counting(type(c)):
        @property
        def stopping(self) -> bool:  # read by a subscriber's wait predicate each time it wakes
            reads[0] += 1
            return self.__dict__["_stop"]

        @stopping.setter
        def stopping(self, value: bool) -> None:
            self.__dict__["_stop"] = value

    c.__dict__["_stop"] = c.__dict__.pop("stopping")
    c.__class__ = Counting
    waiter = threading.Thread(target=c.weights.wait_for_change, args=(c.stage, c.weights.version, 2.0))
    waiter.start()
    time.sleep(0.2)
    for seq in range(1, 21):
        ingest(c, "a", [(seq, steps(seq, 2, human=True))], 0)
    woken = reads[0]
    c.weights.publish(b"weights")
    waiter.join(timeout=5)
    assert woken <= 2 and not waiter.is_alive()  # before: one wake-up per stored batch
