"""Transport throughput over real gRPC on loopback.

* **Acknowledged transitions/s and MB/s**: transitions with two 128x128x3 uint8 cameras + an 18-d state
  (+ a 4-d action), 32 per batch, streamed by 1 and 4 actor processes to one learner, TLS off and on.
  The learner side is the real one, in this process: `LearnerService` on a real gRPC server with the
  product's channel options, `LearnerCore`, its ingest log and durable zarr store — an acknowledgement
  means "in the fsynced ingest log"; `benchmarks/ingest_throughput.py` also waits for the store. The
  actors are separate processes that stream
  pre-built batches through the generated stub as fast as acknowledgements allow (no sim, no outbox).
  Batches that queue up in a stream become one log record (learner/service.py); the "one store commit
  per batch" rows turn that off for comparison.
* **Raw gRPC ceiling**: the same messages, as bytes, into a trivial sink server (same channel options,
  same TLS) that acknowledges each one without parsing it: what the transport alone can carry here.
Weight latency (publish -> applied on the actor) has its own benchmark, `benchmarks/weight_latency.py`.

Run: ``python benchmarks/transport_throughput.py`` (about 3 min) or ``--quick`` (about 1.5 min); ``--seconds``
sets each streaming window. Needs openssl (deploy/make-certs.sh) for the TLS rows.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import subprocess
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from hilrl.buffers.assembler import Step
from hilrl.buffers.spec import Feature, Spec
from hilrl.protos import codec
from hilrl.protos.transport import ClientSecurity, ServerSecurity, channel_options, client_channel
from hilrl.protos.v1 import learner_pb2 as pb
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
SPEC = Spec(observation=(Feature("front", "uint8", (128, 128, 3)), Feature("wrist", "uint8", (128, 128, 3)),
                         Feature("state", "float32", (18,))),
            action=Feature("action", "float32", (4,), (-1,) * 4, (1,) * 4))
STATE_SPEC = Spec(observation=(Feature("state", "float32", (18,)),),
                  action=Feature("action", "float32", (4,), (-1,) * 4, (1,) * 4))
BATCH_STEPS = 32
EPISODE_BATCHES = 2  # episodes of 64 steps: every second batch ends one (with its final observation)
MAX_MESSAGE_MB = 16
SINK = "/bench.Sink/Stream"


# --------------------------------------------------------------------------- actor processes


def _batch_template(seed: int) -> pb.TransitionBatch:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(BATCH_STEPS):
        obs = {f.name: (rng.integers(0, 256, f.shape, dtype=np.uint8) if f.dtype == "uint8"
                        else rng.standard_normal(f.shape).astype(np.float32)) for f in SPEC.observation}
        items.append(codec.encode_step(Step(obs=obs, action=rng.uniform(-1, 1, 4).astype(np.float32), reward=0.0,
                                            terminated=False, truncated=False, is_intervention=bool(i % 2),
                                            episode=0, step=i)))
    return pb.TransitionBatch(items=items)


def _batches(actor_id: str, template: pb.TransitionBatch, final: dict[str, pb.Tensor], deadline: float, sent: list):
    """Batch seq 1, 2, ... until the deadline; episode/step numbers advance like a real actor's."""
    seq = 0
    while time.perf_counter() < deadline:
        seq += 1
        batch = pb.TransitionBatch()
        batch.CopyFrom(template)
        batch.actor_id, batch.seq = actor_id, seq
        episode, part = divmod(seq - 1, EPISODE_BATCHES)
        for i, item in enumerate(batch.items):
            item.transition.episode, item.transition.step = episode, part * BATCH_STEPS + i
        if part == EPISODE_BATCHES - 1:
            last = batch.items[-1].transition
            last.terminated = True
            for name, tensor in final.items():
                last.final_observation[name].CopyFrom(tensor)
        sent.append(batch.ByteSize())
        yield batch


def _actor(target: str, actor_id: str, ca: str | None, sink: bool, seconds: float, ready, go, results) -> None:
    template = _batch_template(int(actor_id.rsplit("-", 1)[1]))
    final = dict(template.items[0].transition.observation)
    security = ClientSecurity(tls_ca=Path(ca) if ca else None)
    channel = client_channel(target, MAX_MESSAGE_MB, security)
    stub = pb_grpc.LearnerStub(channel)
    if not sink:
        stub.Hello(pb.HelloRequest(protocol_version=codec.PROTOCOL_VERSION, actor_id=actor_id,
                                   spec=codec.encode_spec(SPEC)), timeout=30)
    else:
        grpc.channel_ready_future(channel).result(timeout=30)
    ready.set()
    go.wait()
    start = time.perf_counter()
    sent: list[int] = []
    acked = 0
    if sink:
        call = channel.stream_stream(SINK)
        batches = (b.SerializeToString() for b in _batches(actor_id, template, final, start + seconds, sent))
        for _ in call(batches):
            acked += 1
    else:
        for _ack in stub.StreamTransitions(_batches(actor_id, template, final, start + seconds, sent)):
            acked += 1
    elapsed = time.perf_counter() - start
    channel.close()
    results.put((acked * BATCH_STEPS, sum(sent[:acked]), elapsed))


# --------------------------------------------------------------------------- servers


def _learner_server(out: Path, creds: grpc.ServerCredentials | None, hidden: tuple[int, ...] = (256, 256)):
    from hilrl.learner.config import LearnerConfig
    from hilrl.learner.core import LearnerCore
    from hilrl.learner.service import LearnerService, add_to_server

    core = LearnerCore(LearnerConfig(output_dir=out, demo_episodes=10**9, hidden=hidden, human_capacity=10_000,
                                     policy_capacity=10_000))
    core.open()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=channel_options(MAX_MESSAGE_MB, server=True))
    add_to_server(LearnerService(core), server)
    return core, server, _bind(server, creds)


def _sink_server(creds: grpc.ServerCredentials | None):
    def stream(requests, context):
        for _ in requests:
            yield b"k"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=channel_options(MAX_MESSAGE_MB, server=True))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "bench.Sink", {"Stream": grpc.stream_stream_rpc_method_handler(stream)})])
    return server, _bind(server, creds)


def _bind(server: grpc.Server, creds: grpc.ServerCredentials | None) -> str:
    port = server.add_secure_port("127.0.0.1:0", creds) if creds else server.add_insecure_port("127.0.0.1:0")
    server.start()
    return f"127.0.0.1:{port}"


# --------------------------------------------------------------------------- measurements


def stream_rate(kind: str, actors: int, certs: Path | None, seconds: float, work: Path,
                group: bool = True) -> tuple[float, float]:
    """(acknowledged transitions/s, MB/s) of ``actors`` processes streaming for ``seconds``; ``group=False``:
    the learner stores every batch in its own commit (for comparison with grouping queued batches)."""
    from hilrl.learner import service

    service.GROUP_MAX_BATCHES = 16 if group else 1
    creds = ServerSecurity(tls_cert=certs / "server.crt", tls_key=certs / "server.key").server_credentials() \
        if certs else None
    out = work / f"{kind}-{actors}-{bool(certs)}-{group}"
    core = None
    if kind == "sink":
        server, address = _sink_server(creds)
    else:
        core, server, address = _learner_server(out, creds)
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(actors)]
    go, results = ctx.Event(), ctx.Queue()
    ca = str(certs / "ca.crt") if certs else None
    procs = [ctx.Process(target=_actor, args=(address, f"actor-{i}", ca, kind == "sink", seconds, ready[i], go,
                                              results), daemon=True) for i in range(actors)]
    for p in procs:
        p.start()
    _wait_ready(ready, procs)
    go.set()
    got = [results.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    server.stop(grace=None).wait()
    if core is not None:  # once the ingest writer is done, the store holds exactly what was acknowledged
        if getattr(core, "ingest", None) is not None:
            core.ingest.close(600)
        acked = sum(t for t, _, _ in got)  # committed steps: len(store) drops rows that compaction freed
        assert core.store.commit["steps"] == acked, (core.store.commit["steps"], acked)
    shutil.rmtree(out, ignore_errors=True)
    elapsed = max(e for _, _, e in got)
    return sum(t for t, _, _ in got) / elapsed, sum(b for _, b, _ in got) / elapsed / 1e6


def _wait_ready(ready: list, procs: list, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(r.is_set() for r in ready):
        if any(p.exitcode is not None for p in procs) or time.monotonic() > deadline:
            raise RuntimeError("an actor process failed to connect (see its traceback above)")
        time.sleep(0.05)


def make_certs(work: Path) -> Path | None:
    if shutil.which("openssl") is None:
        print("openssl not found: skipping the TLS rows")
        return None
    subprocess.run(["bash", str(ROOT / "deploy" / "make-certs.sh"), str(work / "certs")], check=True,
                   capture_output=True, timeout=60)
    return work / "certs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None, help="streaming window per row (default 5, quick 2)")
    parser.add_argument("--quick", action="store_true", help="2 s windows")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the learner's store goes (default: tmp)")
    args = parser.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    work = Path(tempfile.mkdtemp(prefix="hilrl-transport-", dir=args.work_dir))
    try:
        certs = make_certs(work)
        nbytes = _batch_template(0).ByteSize() / BATCH_STEPS
        print(f"transition on the wire: {nbytes / 1e3:.1f} kB (2 x 128x128x3 uint8 + 18-d state + 4-d action), "
              f"{BATCH_STEPS} per batch; {seconds:g} s per row\n")
        print("| path | actors | TLS | transitions/s | MB/s | of raw ceiling |")
        print("| --- | ---: | --- | ---: | ---: | ---: |")
        for tls in ([False, True] if certs else [False]):
            for actors in (1, 4):
                raw = stream_rate("sink", actors, certs if tls else None, seconds, work)
                ack = stream_rate("learner", actors, certs if tls else None, seconds, work)
                on = "on" if tls else "off"
                print(f"| raw gRPC sink (ceiling) | {actors} | {on} | {raw[0]:,.0f} | {raw[1]:,.1f} | |", flush=True)
                print(f"| learner, stored + acked | {actors} | {on} | {ack[0]:,.0f} | {ack[1]:,.1f} "
                      f"| {ack[1] / raw[1]:.0%} |", flush=True)
                if not tls:
                    one = stream_rate("learner", actors, None, seconds, work, group=False)
                    print(f"| learner, one log record per batch | {actors} | {on} | {one[0]:,.0f} | {one[1]:,.1f} "
                          f"| {one[1] / raw[1]:.0%} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
