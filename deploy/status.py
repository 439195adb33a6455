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


def fetch_status(address: str, timeout_s: float = 5.0, security: ClientSecurity | None = None) -> dict:
    """The learner's status; raises grpc.RpcError when it cannot be reached or refuses the call.

    ``security`` None = plaintext, with the token from HILRL_TOKEN when that is set.
    """
    with client_channel(address, 16, security) as channel:
        return codec.decode_status(pb_grpc.LearnerStub(channel).GetStatus(pb.StatusRequest(), timeout=timeout_s))


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
