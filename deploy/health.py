"""`hilrl health`: ask the learner's standard gRPC health service (no token needed); exit 0 when SERVING.

For container health checks and load balancers; `hilrl status` is the richer, token-protected view.
"""

from __future__ import annotations

import json
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hilrl.deploy.status import StatusConfig
from hilrl.protos.transport import SecurityConfigError, client_channel, connection_hint

SERVICE = "hilrl.v1.Learner"


def check_health(cfg: StatusConfig) -> int:
    try:
        with client_channel(cfg.learner, 4, cfg) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE),
                                                              timeout=cfg.timeout_s)
    except SecurityConfigError as exc:
        print(f"hilrl health: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        hint = connection_hint(exc.code(), exc.details() or "", cfg.uses_tls)
        print(f"hilrl health: cannot reach the learner at {cfg.learner} ({exc.code().name}: {exc.details()}){hint}",
              file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(json.dumps({"learner": cfg.learner, "status": status}))
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
