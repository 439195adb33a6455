"""`hilrl learner`: the gRPC server, the health service and the training thread in one process."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hilrl.buffers.durable import atomic_write
from hilrl.learner.auth import BearerTokenServerInterceptor
from hilrl.learner.config import LearnerConfig
from hilrl.learner.core import LearnerCore
from hilrl.learner.limits import ServerLimits
from hilrl.learner.memory import BuffersTooLarge
from hilrl.learner.service import SERVICE_NAME, LearnerService, add_to_server
from hilrl.learner.training import Trainer
from hilrl.protos.transport import SecurityConfigError, channel_options, is_loopback

log = logging.getLogger(__name__)


@dataclass
class Security:
    """What `serve` binds with: TLS credentials (None = plaintext) and the bearer token (None = none)."""

    credentials: grpc.ServerCredentials | None
    token: str | None
    warning: str | None = None  # the loud --insecure warning, when it applies


def check_security(cfg: LearnerConfig) -> Security:
    """Load TLS files and the token, and apply the binding policy.

    Plaintext (or no token) only on loopback; any other address needs TLS *and* a token unless
    --insecure is given (then ``warning`` says what is exposed). Raises ``SystemExit`` with an
    actionable message otherwise, and for unusable TLS/token options.
    """
    try:
        credentials, token = cfg.server_credentials(), cfg.token()
    except SecurityConfigError as exc:
        raise SystemExit(f"hilrl learner: {exc}") from None
    missing = [what for what, ok in (("TLS (--tls-cert and --tls-key)", credentials is not None),
                                     ("a bearer token (--token-file or HILRL_TOKEN)", token is not None)) if not ok]
    if is_loopback(cfg.host) or not missing:
        return Security(credentials, token)
    if not cfg.insecure:
        raise SystemExit(f"hilrl learner: refusing to serve on {cfg.host} without {' and '.join(missing)}: "
                         "only loopback may go without them. Use --host 127.0.0.1, configure them "
                         "(see deploy/make-certs.sh), or pass --insecure if this network is trusted.")
    warning = (f"INSECURE: serving on {cfg.host} without {' and '.join(missing)} because of --insecure; "
               "anyone who can reach this port can " + ("read the traffic and " if credentials is None else "")
               + ("send transitions and fetch weights" if token is None else "talk to the learner"))
    return Security(credentials, token, warning)


@dataclass
class Built:
    """A started learner server (not yet announced in the run directory)."""

    server: grpc.Server
    port: int
    service: LearnerService
    health: health.HealthServicer
    limits: ServerLimits


def build_server(cfg: LearnerConfig, core: LearnerCore, security: Security) -> Built:
    """The gRPC server for `core`, sized by --max-actors (see learner/limits.py), listening and serving."""
    limits = ServerLimits(cfg.max_actors, cfg.stream_buffer_mb << 20)
    interceptors = [BearerTokenServerInterceptor(security.token)] if security.token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="grpc"),
                         options=channel_options(cfg.max_message_mb, cfg.keepalive_s, server=True),
                         interceptors=interceptors, maximum_concurrent_rpcs=limits.max_concurrent_rpcs)
    service = LearnerService(core, limits)
    add_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bind = f"{cfg.host}:{cfg.port}"
    if security.credentials is None:
        port = server.add_insecure_port(bind)
    else:
        port = server.add_secure_port(bind, security.credentials)
    if port == 0:
        raise SystemExit(f"could not listen on {cfg.host}:{cfg.port} (port in use?)")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Built(server, port, service, health_servicer, limits)


def serve(cfg: LearnerConfig) -> int:
    security = check_security(cfg)
    if security.warning:
        log.warning("!" * 20 + " %s " + "!" * 20, security.warning)
    core = LearnerCore(cfg)
    try:
        core.open()
    except BuffersTooLarge as exc:
        raise SystemExit(f"hilrl learner: {exc}") from None
    if cfg.resume:
        log.info("resumed %s: stage %s, learner step %d, weights v%d", cfg.output_dir, core.stage,
                 core.learner_step, core.weights.version)
    built = build_server(cfg, core, security)
    server, port, health_servicer = built.server, built.port, built.health
    address = f"{cfg.host}:{port}"
    atomic_write(core.run_dir.address, json.dumps({"address": address, "pid": os.getpid()}).encode())
    mode = ("mutual TLS" if cfg.tls_ca else "TLS") if security.credentials else "plaintext"
    print(f"hilrl learner listening on {address} ({mode}, {'bearer token' if security.token else 'no token'}; "
          f"output: {cfg.output_dir})", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    trainer = Trainer(core)
    failure: list[BaseException] = []

    def train() -> None:
        try:
            trainer.run(stop)
        except BaseException as exc:  # surface training crashes instead of serving a dead learner
            log.exception("training loop failed")
            failure.append(exc)
            stop.set()

    thread = threading.Thread(target=train, name="trainer", daemon=True)
    thread.start()
    stop.wait()
    log.info("shutting down: no new calls, finishing the ones in flight, writing a final checkpoint")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    core.stop()
    server.stop(grace=5).wait()
    core.ingest.close()  # store what the log holds (the rest waits there for the next start)
    thread.join(timeout=60)
    core.save_state()
    print(json.dumps(core.status()), flush=True)
    return 1 if failure else 0
