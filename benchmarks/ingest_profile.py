"""Where the durable ingest path spends its time: one learner in process, actors streaming over real gRPC.

The learner of `benchmarks/ingest_throughput.py` (the real `LearnerService` + `LearnerCore`, its ingest log,
store and replay buffers) receives camera transitions from `--actors` processes for `--seconds`, then drains.
Two views, each optional:

* **stage timers** (default): wall time and thread CPU time of each stage, summed over the run and per
  transition: the stream handler's protobuf decode, the acknowledgement path (`Ingest.batches`: check, pack,
  log append + fsync), the writer's store commit (`_store_all`: rows, chunk encode + write, fsync, commit
  record, compaction) and its buffer insertion (`Ingest._applied`);
* ``--cprofile``: a cProfile of every Python thread started after setup (grouped by thread name), top
  functions by internal time. Its overhead inflates Python-heavy stages; read it for *where*, the timers for
  *how much*.

Run: ``python benchmarks/ingest_profile.py --seconds 20`` (add ``--cprofile`` for the function view).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing as mp
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transport_throughput as tt  # noqa: E402 - the actor processes and servers of the transport benchmark

STAGES: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])  # name -> [wall s, cpu s, calls]
_LOCK = threading.Lock()


def _timed(name: str, fn):
    def wrapper(*args, **kwargs):
        w, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            dw, dc = time.perf_counter() - w, time.thread_time() - c
            with _LOCK:
                s = STAGES[name]
                s[0] += dw
                s[1] += dc
                s[2] += 1
    return wrapper


def instrument() -> None:
    """Wrap each stage's function in a timer (module attributes, so every caller goes through them)."""
    from hilrl.buffers import frames, step_table, store
    from hilrl.buffers.durable import BatchLog
    from hilrl.learner import ingest, service
    from hilrl.protos import codec

    codec.decode_items = _timed("decode (stream thread)", codec.decode_items)
    service.codec = codec
    ingest.Ingest.batches = _timed("ack path: Ingest.batches (all)", ingest.Ingest.batches)
    ingest.check_batch = _timed("ack path: check_batch", ingest.check_batch)
    ingest.pack_items = _timed("ack path: pack_items", ingest.pack_items)
    BatchLog.append = _timed("ack path: log append + fsync", BatchLog.append)
    ingest._store_all = _timed("writer: store commit (all)", ingest._store_all)
    store.check_batch = _timed("writer: check_batch", store.check_batch)
    step_table.StepTable.rows = _timed("writer: rows (np.stack)", step_table.StepTable.rows)
    step_table.StepTable.put = _timed("writer: put (encode + write chunks)", step_table.StepTable.put)
    step_table.DurableLocalStore.sync = _timed("writer: fsync chunk files", step_table.DurableLocalStore.sync)
    store.BufferStore._write_commit = _timed("writer: commit record", store.BufferStore._write_commit)
    store.BufferStore.compact = _timed("writer: compaction", store.BufferStore.compact)
    ingest.Ingest._applied = _timed("writer: buffer insertion (_applied)", ingest.Ingest._applied)
    frames.FrameRing.write = _timed("writer: FrameRing.write (in _applied)", frames.FrameRing.write)


PROFILES: list[tuple[str, cProfile.Profile]] = []


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of every live thread of this process, summed by Python thread name (digits
    dropped, so a pool is one row) or, for threads Python did not start (gRPC's), by their OS name."""
    names = {t.native_id: t.name.rstrip("0123456789_-") for t in threading.enumerate()}
    tick, out = os.sysconf("SC_CLK_TCK"), defaultdict(float)
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        name = names.get(int(task.name)) or f"(os) {comm.rstrip('0123456789_-')}"
        out[name] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def _start_profile(frame, event, arg) -> None:  # noqa: ARG001 - the sys.setprofile signature
    p = cProfile.Profile()
    with _LOCK:
        PROFILES.append((threading.current_thread().name, p))
    p.enable()  # replaces this hook for the thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--cprofile", action="store_true", help="also a cProfile per thread group")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--round-mb", type=int, default=None, help="the writer's round size (WRITE_MAX_BYTES)")
    parser.add_argument("--json", type=Path, default=None, help="write the stage table here")
    args = parser.parse_args()
    instrument()
    if args.round_mb:
        from hilrl.learner import ingest
        ingest.WRITE_MAX_BYTES = args.round_mb << 20
    work = Path(tempfile.mkdtemp(prefix="hilrl-ingest-profile-"))
    try:
        core, server, address = tt._learner_server(work / "learner", None)
        if args.cprofile:
            threading.setprofile(_start_profile)
        ctx = mp.get_context("spawn")
        ready = [ctx.Event() for _ in range(args.actors)]
        go, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=tt._actor, args=(address, f"actor-{i}", None, False, args.seconds, ready[i], go,
                                                  results), daemon=True) for i in range(args.actors)]
        for p in procs:
            p.start()
        tt._wait_ready(ready, procs)
        load, cpu0, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
        threads0 = thread_cpu()
        go.set()
        got = [results.get(timeout=args.seconds + 300) for _ in procs]
        window = max(e for _, _, e in got)
        acked = sum(t for t, _, _ in got)
        assert core.ingest.drain(600)
        total = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        threads = {k: v - threads0.get(k, 0.0) for k, v in thread_cpu().items()}
        threading.setprofile(None)
        assert core.store.commit["steps"] == acked
        server.stop(grace=None).wait()
        core.ingest.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.actors} actor(s), {window:.1f} s window + drain = {total:.1f} s; {acked:,} transitions acked "
          f"({acked / window:,.0f}/s), stored {acked / total:,.0f}/s; learner process CPU {cpu:.1f} s "
          f"({cpu / acked * 1e6:,.0f} us per transition); load {load:.1f} -> {os.getloadavg()[0]:.1f}\n")
    print("| stage | calls | wall s | CPU s | CPU us / transition |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (wall, c, calls) in STAGES.items():
        print(f"| {name} | {calls:,} | {wall:.2f} | {c:.2f} | {c / acked * 1e6:,.0f} |")
    print("\n| thread (group) | CPU s | CPU us / transition |\n| --- | ---: | ---: |")
    for name, c in sorted(threads.items(), key=lambda kv: -kv[1]):
        if c >= 0.05:
            print(f"| {name} | {c:.2f} | {c / acked * 1e6:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"actors": args.actors, "window_s": window, "total_s": total, "acked": acked,
                                         "process_cpu_s": cpu, "load": load, "stages": dict(STAGES),
                                         "thread_cpu_s": threads}, indent=1))
    if args.cprofile:
        groups: dict[str, list[cProfile.Profile]] = defaultdict(list)
        for name, p in PROFILES:
            groups[name.rstrip("0123456789_-")].append(p)
        for name, ps in groups.items():
            stats = pstats.Stats(ps[0])
            for p in ps[1:]:
                stats.add(p)
            if stats.total_tt < 0.5:
                continue
            print(f"\n### thread group {name!r} ({len(ps)} threads, {stats.total_tt:.1f} s profiled)")
            stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
