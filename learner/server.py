"""`hilrl learner`: the gRPC server, the health service and the training thread in one process."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hilrl.learner.config import LearnerConfig
from hilrl.learner.core import LearnerCore, atomic_write
from hilrl.learner.service import LearnerService
from hilrl.learner.training import Trainer
from hilrl.protos.transport import channel_options
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "hilrl.v1.Learner"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(cfg: LearnerConfig) -> int:
    if not is_loopback(cfg.host) and not cfg.insecure:
        raise SystemExit(f"refusing to serve plaintext gRPC on {cfg.host}: only loopback may be plaintext. "
                         "Use --host 127.0.0.1, or pass --insecure if this network is trusted.")
    core = LearnerCore(cfg)
    core.open()
    if cfg.resume:
        log.info("resumed %s: stage %s, learner step %d, weights v%d", cfg.output_dir, core.stage,
                 core.learner_step, core.weights.version)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="grpc"),
                         options=channel_options(cfg.max_message_mb))
    pb_grpc.add_LearnerServicer_to_server(LearnerService(core), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{cfg.host}:{cfg.port}")
    if port == 0:
        raise SystemExit(f"could not listen on {cfg.host}:{cfg.port} (port in use?)")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{cfg.host}:{port}"
    atomic_write(cfg.output_dir / "learner.json", json.dumps({"address": address, "pid": os.getpid()}).encode())
    print(f"hilrl learner listening on {address} (output: {cfg.output_dir})", flush=True)

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
    with core.lock:
        core.stopping = True
        core.lock.notify_all()
    server.stop(grace=5).wait()
    thread.join(timeout=60)
    core.save_state()
    print(json.dumps(core.status()), flush=True)
    return 1 if failure else 0
