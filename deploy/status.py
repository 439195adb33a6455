"""`hilrl status`: one JSON object on stdout, non-zero exit when the learner cannot be reached."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import grpc

from hilrl.deploy.configtools import opt
from hilrl.protos import codec
from hilrl.protos.transport import ClientSecurity, SecurityConfigError, client_channel, connection_hint
from hilrl.protos.v1 import learner_pb2 as pb
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc


@dataclass
class StatusConfig(ClientSecurity):
    """Where the learner is and how to reach it (TLS and token options come from ``ClientSecurity``)."""

    learner: str = opt("127.0.0.1:50051", "learner address HOST:PORT")
    timeout_s: float = opt(5.0, "give up after this many seconds")


def status_to_dict(reply: pb.StatusReply) -> dict:
    def buffer(b: pb.BufferStatus) -> dict:
        return {"size": b.size, "capacity": b.capacity}

    return {
        "stage": codec.STAGE_NAMES.get(reply.stage, "unknown"),
        "learner_step": reply.learner_step,
        "offline_steps": reply.offline_steps,
        "weight_version": reply.weight_version,
        "demo_episodes": reply.demo_episodes,
        "demo_episodes_needed": reply.demo_episodes_needed,
        "buffers": {"human": buffer(reply.human), "policy": buffer(reply.policy)},
        "actors": [
            {"id": a.id, "transitions_received": a.transitions_received, "last_acked_seq": a.last_acked_seq,
             "weight_version_applied": a.weight_version_applied, "policy_lag": a.policy_lag,
             "connected": a.connected, "episodes": a.episodes, "interventions": a.interventions,
             "loop_period_p50_ms": round(a.loop_period_p50_ms, 2), "loop_period_p99_ms": round(a.loop_period_p99_ms, 2),
             "overruns": a.overruns, "watchdog_holds": a.watchdog_holds, "safety_clamps": a.safety_clamps}
            for a in reply.actors
        ],
        "run_id": reply.run_id,
        "store_problem": reply.store_problem,
        "protocol_version": reply.protocol_version,
    }


def fetch_status(address: str, timeout_s: float = 5.0, security: ClientSecurity | None = None) -> dict:
    """The learner's status; raises grpc.RpcError when it cannot be reached or refuses the call.

    ``security`` None = plaintext, with the token from HILRL_TOKEN when that is set.
    """
    with client_channel(address, 16, security) as channel:
        return status_to_dict(pb_grpc.LearnerStub(channel).GetStatus(pb.StatusRequest(), timeout=timeout_s))


def print_status(cfg: StatusConfig) -> int:
    try:
        status = fetch_status(cfg.learner, cfg.timeout_s, cfg)
    except SecurityConfigError as exc:
        print(f"hilrl status: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code()
        what = ("the learner refused the call" if code == grpc.StatusCode.UNAUTHENTICATED
                else "cannot reach the learner")
        hint = connection_hint(code, exc.details() or "", cfg.uses_tls)
        print(f"hilrl status: {what} at {cfg.learner} ({code.name}: {exc.details()}){hint}", file=sys.stderr)
        return 1
    print(json.dumps(status))
    return 0
