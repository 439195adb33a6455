"""Weight latency: publish -> applied on the actor, over real gRPC on loopback.

The learner side is the real one, in this process: `LearnerCore` (its durable weight files) behind
`LearnerService` on a real gRPC server with the product's channel options. The actor side is a real
`LearnerLink` in another process (Hello, weight subscription, sha256 check, building the `Policy`), polled
by a stand-in control loop every 1 ms. Each sample is the time from the learner starting to publish (what
`Trainer._publish` does: `WeightPublisher.publish` of the policy's tensors) until `take_policy()` on the actor returns
that version. Policies of ~1 M and ~10 M parameters (state-only MLPs, 18-d state, 4-d action).

Next to each size, a reference measured in the same run (`bare_grpc`): the same number of bytes hashed, sent over
a bare gRPC stream (1 MB messages), copied into one buffer and hashed again by a client in another process.

Run: ``python benchmarks/weight_latency.py`` (about 1 min) or ``--quick``; ``--json`` writes the figures.
Before/after in one run: also run it with an older checkout first on PYTHONPATH (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from transport_throughput import MAX_MESSAGE_MB, _learner_server
from transport_throughput import STATE_SPEC as SPEC

SIZES = {"1M": (1024, 1024), "10M": (3200, 3200)}
WARMUP = 3  # publishes per size not counted


def _actor(target: str, state_dir: str, ready, applied) -> None:
    import torch

    from hilrl.actor.link import LearnerLink
    from hilrl.actor.outbox import Outbox

    torch.set_num_threads(1)
    link = LearnerLink(target, "weights-bench", SPEC, Outbox(Path(state_dir)), MAX_MESSAGE_MB)
    link.start()
    link.connected.wait(60)
    ready.set()
    while not link.stop.is_set():
        new = link.take_policy()
        if new is not None:
            applied.put((new[0], time.time()))
        time.sleep(0.001)


def publish(core, policy) -> int:
    """What the trainer does to publish (learner/training.py `Trainer._publish`, without the checkpoint)."""
    if hasattr(core.weights, "publish"):
        from hilrl.learner.networks import policy_metadata

        return core.weights.publish(policy.state_dict(), policy_metadata(policy))
    try:  # older checkouts, for a before/after comparison: the core published encoded bytes
        from hilrl.learner.networks import encode_policy
    except ImportError:  # from before weights were encoded once
        from hilrl.learner.networks import policy_to_safetensors_bytes as encode_policy
    return core.publish(encode_policy(policy))


def measure(hidden: tuple[int, ...], repeats: int, work: Path) -> dict:
    """publish -> applied samples (ms) for one policy size, and how long `publish` itself blocks the trainer."""
    import torch

    from hilrl.learner.networks import Policy, PolicyConfig

    torch.manual_seed(0)
    policy = Policy(PolicyConfig(SPEC.state_dim, SPEC.action_dim, hidden))
    params = sum(p.numel() for p in policy.parameters())
    out = work / f"run-{params}"
    core, server, address = _learner_server(out, None, hidden)  # the transport benchmark's real learner server
    ctx = mp.get_context("spawn")
    ready, applied = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_actor, args=(address, str(work / f"state-{params}"), ready, applied), daemon=True)
    proc.start()
    deadline = time.monotonic() + 120
    while not ready.is_set():
        if proc.exitcode is not None or time.monotonic() > deadline:
            raise RuntimeError("the actor process failed to connect (see its traceback above)")
        time.sleep(0.05)
    latency, blocking = [], []
    # Not counted: the first publish (it also waits for the weight subscription to open) and the next two, which
    # allocate the learner's and the actor's reused buffers: a trainer publishes hundreds of versions per run.
    for i in range(repeats + WARMUP):
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.001)
        t0 = time.time()
        version = publish(core, policy)
        t1 = time.time()
        while True:
            v, t = applied.get(timeout=120)
            if v == version:
                break
        if i >= WARMUP:
            latency.append((t - t0) * 1e3)
            blocking.append((t1 - t0) * 1e3)
        time.sleep(0.2)  # a trainer publishes every N updates, not back to back
    proc.kill()
    proc.join()
    server.stop(grace=None).wait()
    shutil.rmtree(out, ignore_errors=True)
    return {"parameters": params, "samples": len(latency),
            "applied_p50_ms": round(float(np.percentile(latency, 50)), 1),
            "applied_p90_ms": round(float(np.percentile(latency, 90)), 1),
            "publish_blocks_trainer_p50_ms": round(float(np.percentile(blocking, 50)), 1)}


CHUNK = 1 << 20  # the learner's WEIGHT_CHUNK_BYTES


def _bare_client(target: str, nbytes: int, repeats: int, out) -> None:
    """The least an actor can do with the bytes: receive 1 MB messages, copy them into one buffer, hash them."""
    from hilrl.protos.transport import channel_options

    call = grpc.insecure_channel(target, options=channel_options(MAX_MESSAGE_MB)).unary_stream(
        "/bench.Bare/Stream", request_serializer=lambda x: x, response_deserializer=lambda x: x)
    buffer, times = bytearray(nbytes), []
    for _ in range(repeats + 1):
        t0, offset, digest = time.perf_counter(), 0, hashlib.sha256()
        for message in call(b""):
            data = memoryview(message)[8:]
            buffer[offset:offset + len(data)] = data
            digest.update(data)
            offset += len(data)
        times.append((time.perf_counter() - t0) * 1e3)
    out.put(times[1:])


def bare_grpc(nbytes: int, repeats: int) -> dict:
    """The same work done the plainest way: the sender hashes the bytes, then streams them over bare gRPC on
    loopback (1 MB messages, one copy each); a client in another process copies them into one buffer and hashes
    them. No encoding, no policy, no version; the hashes are not overlapped with the streaming."""
    from hilrl.protos.transport import channel_options

    data = memoryview(bytearray(os.urandom(nbytes)))

    def stream(request, context):
        hashlib.sha256(data).hexdigest()
        for offset in range(0, nbytes, CHUNK):
            yield b"".join((b"\0" * 8, data[offset:offset + CHUNK]))

    server = grpc.server(futures.ThreadPoolExecutor(4), options=channel_options(MAX_MESSAGE_MB, server=True))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "bench.Bare", {"Stream": grpc.unary_stream_rpc_method_handler(stream)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_bare_client, args=(f"127.0.0.1:{port}", nbytes, repeats, out), daemon=True)
    proc.start()
    times = out.get(timeout=300)
    proc.join()
    server.stop(grace=None).wait()
    return {"bare_grpc_p50_ms": round(float(np.percentile(times, 50)), 1),
            "bare_grpc_p90_ms": round(float(np.percentile(times, 90)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 publishes per size instead of 20")
    parser.add_argument("--repeats", type=int, default=None, help="publishes per size (default 20, quick 5)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--label", default="", help="a name for this run in the JSON (e.g. before/after)")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 20)
    work = Path(tempfile.mkdtemp(prefix="hilrl-weights-"))
    rows = {}
    try:
        print(f"load before: {os.getloadavg()[0]:.2f}")
        print("| policy | parameters | publish -> applied p50 ms | p90 ms | publish blocks the trainer p50 ms "
              "| the bytes over bare gRPC (sha256, send, copy, sha256) p50 / p90 ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name in args.sizes:
            r = measure(SIZES[name], repeats, work)
            r.update(bare_grpc(r["parameters"] * 4, repeats))
            rows[name] = r
            print(f"| {name} | {r['parameters']:,} | {r['applied_p50_ms']} | {r['applied_p90_ms']} "
                  f"| {r['publish_blocks_trainer_p50_ms']} | {r['bare_grpc_p50_ms']} / {r['bare_grpc_p90_ms']} |",
                  flush=True)
        load = os.getloadavg()[0]
        print(f"load after: {load:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        runs = json.loads(args.json.read_text()) if args.json.exists() else {}
        runs[args.label or time.strftime("%Y-%m-%dT%H:%M:%S")] = {"load_1min": round(load, 2), "sizes": rows}
        args.json.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
