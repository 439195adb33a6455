"""Bearer-token check for every learner method except the standard health service."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from hilrl.protos.transport import AUTH_HEADER, BEARER

log = logging.getLogger(__name__)

OPEN_PREFIX = "/grpc.health.v1.Health/"  # Check and Watch answer without a token (load balancers, probes)

MISSING = ("missing bearer token: this learner requires one; give the actor (or hilrl status) --token-file PATH "
           "or set HILRL_TOKEN to the learner's token")
MALFORMED = "malformed authorization metadata: expected 'authorization: Bearer <token>'"
WRONG = ("invalid bearer token: it does not match the learner's; check --token-file / HILRL_TOKEN "
         "on this client against the learner's")


def _abort_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same call shape as ``handler`` that fails with UNAUTHENTICATED."""

    def abort(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort, **kwargs)


class BearerTokenServerInterceptor(grpc.ServerInterceptor):
    """Refuses every call without ``authorization: Bearer <token>`` (constant-time compare) with
    UNAUTHENTICATED and a message saying what to do; the health service stays open."""

    def __init__(self, token: str, log_every_s: float = 10.0) -> None:
        self._expected = (BEARER + token).encode()
        self._log_every_s = log_every_s
        self._last_log = 0.0

    def check(self, metadata: tuple | list | None) -> str | None:
        """None when ``metadata`` carries the right token, else the refusal message."""
        values = [v for k, v in (metadata or ()) if k == AUTH_HEADER]
        if not values:
            return MISSING
        value = values[0].encode() if isinstance(values[0], str) else bytes(values[0])
        if not value.startswith(BEARER.encode()):
            return MALFORMED
        return None if hmac.compare_digest(value, self._expected) else WRONG

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIX):
            return continuation(handler_call_details)
        refusal = self.check(handler_call_details.invocation_metadata)
        if refusal is None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: reveal nothing about what exists
            handler = grpc.unary_unary_rpc_method_handler(lambda *_: None)
        now = time.monotonic()
        if now - self._last_log >= self._log_every_s:  # a misconfigured actor retrying must not flood the log
            self._last_log = now
            log.warning("refused %s: %s", method, refusal.split(":")[0])
        return _abort_handler(handler, refusal)
