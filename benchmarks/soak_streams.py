"""`soak.py streams`: many concurrent actor streams into one learner; short-call latency meanwhile.

A real `hilrl learner` process (``--max-actors`` = the stream count) takes ``--streams`` actor streams:
``--per-process`` of them in each worker process, each a real `LearnerLink` with its own `StateDir` and
`Outbox`, fed a recorded sim episode stream (``--recording``; the kills soak's recordings by default) at
``--hz`` steps/s in batches of 32. Meanwhile this process calls Hello, GetStatus and the health check in
turn, each about 5 times a second, and reports their p50/p99 latency and every error.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from soak import ROOT, Proc, free_port, learner_args, received, wait_for

from hilrl.buffers.recording import read_steps
from hilrl.protos import codec
from hilrl.protos.transport import channel_options
from hilrl.protos.v1 import learner_pb2 as pb
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc

BATCH = 32


def _default_recording() -> Path:
    kills = json.loads((ROOT / "docs" / "soak" / "kills.json").read_text())
    return Path(kills["work_dir"]) / "arm-0.zarr"


def _worker(target: str, ids: list[str], recording: str, hz: float, seconds: float, work: str) -> None:
    from hilrl.actor.link import LearnerLink
    from hilrl.actor.outbox import Outbox, StateDir

    spec, steps = read_steps(recording)
    items = [codec.encode_item(s) for s in steps]
    links = []
    for actor_id in ids:
        state = StateDir(Path(work) / actor_id, actor_id)
        outbox = Outbox(state.path / "outbox")
        link = LearnerLink(target, actor_id, spec, outbox, state=state)
        # Its own TCP connection, as an actor process has: gRPC shares one between equal channels of a process,
        # and the learner tells two actors' streams apart by their connection (their peer address).
        link.channel = grpc.insecure_channel(target, options=[*channel_options(16, server=False),
                                                              ("grpc.use_local_subchannel_pool", 1)])
        link.stub = pb_grpc.LearnerStub(link.channel)
        link.start()
        links.append((link, outbox))
    end = time.monotonic() + seconds

    def feed(outbox: Outbox, actor_id: str) -> None:
        k = 0
        while time.monotonic() < end:
            outbox.put(pb.TransitionBatch(actor_id=actor_id, items=items[k:k + BATCH]))
            k = (k + BATCH) % max(1, len(items) - BATCH)  # steps repeat; these actors' steps are not compared
            time.sleep(BATCH / hz)

    threads = [threading.Thread(target=feed, args=(outbox, actor_id), daemon=True)
               for (_, outbox), actor_id in zip(links, ids, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for link, outbox in links:
        outbox.wait_empty(30)
        link.close()


def _probe(address: str, seconds: float, spec_msg: pb.Spec) -> dict:
    channel = grpc.insecure_channel(address)
    stub, health = pb_grpc.LearnerStub(channel), health_pb2_grpc.HealthStub(channel)
    calls = {
        "hello": lambda: stub.Hello(pb.HelloRequest(protocol_version=codec.PROTOCOL_VERSION, actor_id="probe",
                                                    spec=spec_msg), timeout=10),
        "get_status": lambda: stub.GetStatus(pb.StatusRequest(), timeout=10),
        "health": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    errors: dict[str, list[str]] = {k: [] for k in calls}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for name, call in calls.items():
            t0 = time.perf_counter()
            try:
                call()
                times[name].append((time.perf_counter() - t0) * 1000)
            except grpc.RpcError as exc:
                errors[name].append(f"{exc.code().name}: {exc.details()}")
            time.sleep(0.066)
    channel.close()
    return {name: {"calls": len(t), "p50_ms": round(float(np.percentile(t, 50)), 1) if t else None,
                   "p99_ms": round(float(np.percentile(t, 99)), 1) if t else None, "errors": errors[name][:5],
                   "error_count": len(errors[name])} for name, t in times.items()}


def run_once(args: argparse.Namespace, hz: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="hilrl-streams-"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    learner = Proc(learner_args(port, work / "learner", "--max-actors", str(args.streams)), work, "learner")
    channel = grpc.insecure_channel(address)
    wait_for(lambda: received(pb_grpc.LearnerStub(channel)) is not None, 120, "the learner to serve")
    spec, _ = read_steps(args.recording)
    ids = [f"s{n:02d}" for n in range(args.streams)]
    groups = [ids[i:i + args.per_process] for i in range(0, len(ids), args.per_process)]
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_worker, args=(address, g, str(args.recording), hz, args.seconds + 20, str(work)))
               for g in groups]
    for w in workers:
        w.start()
    stub = pb_grpc.LearnerStub(channel)
    wait_for(lambda: (r := received(stub)) and sum(1 for i in ids if r.get(i, 0) > 0) == len(ids), 180,
             "every stream to deliver")
    before, t0 = sum((received(stub) or {}).values()), time.monotonic()
    latency = _probe(address, args.seconds, codec.encode_spec(spec))
    rate = (sum((received(stub) or {}).values()) - before) / (time.monotonic() - t0)
    for w in workers:
        w.join(timeout=120)
    learner.stop()
    channel.close()
    return {"hz_per_stream": hz, "streams": args.streams, "per_process": args.per_process,
            "seconds": args.seconds, "transitions_per_s": round(rate), "latency": latency,
            "load_avg_1m": os.getloadavg()[0]}


def streams(args: argparse.Namespace) -> dict:
    args.recording = Path(getattr(args, "recording", None) or _default_recording())
    runs = [run_once(args, hz) for hz in (10.0, 50.0)]
    return {"runs": runs, "p99_ms": {f"{r['hz_per_stream']:g}Hz": {k: v["p99_ms"] for k, v in r["latency"].items()}
                                     for r in runs},
            "errors": sum(v["error_count"] for r in runs for v in r["latency"].values()),
            "median_load": statistics.median(r["load_avg_1m"] for r in runs)}
