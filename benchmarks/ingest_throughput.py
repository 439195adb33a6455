"""Durable, acknowledged ingest against the raw gRPC ceiling and the disk, measured in one run.

Every row streams transitions with two 128x128x3 uint8 cameras + an 18-d state (32 per batch) over real gRPC on
loopback (the actor processes and servers of `benchmarks/transport_throughput.py`):

* **raw gRPC sink**: the same messages into a server that acknowledges without parsing (the transport's ceiling);
* **learner, acked**: the real `LearnerService` + `LearnerCore`; an acknowledgement means "in the fsynced ingest
  log" (`learner/ingest.py`). After the window the actors stop and the benchmark waits until the writer has
  moved every logged batch into the zarr store and the replay buffers: the **backlog at the end** of the window
  and the **drain** time are reported, and **stored/s** counts the acknowledged transitions over window + drain
  (what the learner sustains, not what it queues);
* **disk**: the work directory's own ceiling, fsyncs/s of 4 kB appends and MB/s of 3 MB write+fsync rounds
  (the ingest log's group commits); the log and the store each write every byte once, so transitions/s can
  reach at most about half of that MB/s over 98.5 kB;
* ``--e2e``: real ``hilrl learner`` and ``hilrl actor --env replay:REC --fps 0`` processes (their outboxes write
  durably too) replaying a camera recording; stored transitions/s from the first to the last.

Run: ``python benchmarks/ingest_throughput.py --quick`` (5 s windows, about 2 min), ``--seconds 120`` (the
sustained run), ``--e2e`` adds the real processes, ``--no-tls`` skips the TLS rows. An older checkout can be
measured with the same file (``PYTHONPATH`` pointing at it): the rows then have no backlog (it stored before
acknowledging).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hilrl.buffers.assembler import Step
from hilrl.protos.transport import ServerSecurity

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transport_throughput as tt  # noqa: E402 - the actor processes and servers of the transport benchmark

SPEC, BATCH_STEPS = tt.SPEC, tt.BATCH_STEPS


def stream(kind: str, actors: int, certs: Path | None, seconds: float, work: Path) -> dict:
    """Stream for `seconds` from `actors` processes; for the learner, also wait until everything is stored."""
    creds = ServerSecurity(tls_cert=certs / "server.crt", tls_key=certs / "server.key").server_credentials() \
        if certs else None
    out = work / f"{kind}-{actors}-{bool(certs)}"
    core = None
    if kind == "sink":
        server, address = tt._sink_server(creds)
    else:
        core, server, address = tt._learner_server(out, creds)
    ctx = mp.get_context("spawn")
    ready = [ctx.Event() for _ in range(actors)]
    go, results = ctx.Event(), ctx.Queue()
    ca = str(certs / "ca.crt") if certs else None
    procs = [ctx.Process(target=tt._actor, args=(address, f"actor-{i}", ca, kind == "sink", seconds, ready[i], go,
                                              results), daemon=True) for i in range(actors)]
    for p in procs:
        p.start()
    tt._wait_ready(ready, procs)
    go.set()
    got = [results.get(timeout=seconds + 300) for _ in procs]
    elapsed = max(e for _, _, e in got)
    acked = sum(t for t, _, _ in got)
    row = {"acked_per_s": acked / elapsed, "mb_per_s": sum(b for _, b, _ in got) / elapsed / 1e6, "acked": acked}
    for p in procs:
        p.join(30)
    if core is not None:
        ingest = getattr(core, "ingest", None)
        status = ingest.status() if ingest is not None else {}
        row["backlog_batches"] = status.get("ingest_backlog_batches", 0)
        row["backlog_mb"] = status.get("ingest_backlog_bytes", 0) / 1e6
        t = time.perf_counter()
        if ingest is not None:
            assert ingest.drain(600), "the writer did not drain the backlog in 10 min"
        row["drain_s"] = time.perf_counter() - t
        row["stored_per_s"] = acked / (elapsed + row["drain_s"])
        assert core.store.commit["steps"] == acked, (core.store.commit, acked)  # exactly what was acknowledged
        if ingest is not None:
            row["log_mb_left"] = ingest.log.disk_bytes() / 1e6
    server.stop(grace=None).wait()
    if core is not None and getattr(core, "ingest", None) is not None:
        core.ingest.close()
    shutil.rmtree(out, ignore_errors=True)
    return row


def disk_ceiling(work: Path, seconds: float = 3.0) -> dict:
    """fsyncs/s of 4 kB appends and MB/s of 3 MB write+fsync rounds in `work`."""
    path = work / "disk-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        small, n, t = b"x" * 4096, 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            os.write(fd, small)
            os.fsync(fd)
            n += 1
        fsyncs = n / (time.perf_counter() - t)
        block, total, t = os.urandom(3 << 20), 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            os.write(fd, block)
            os.fsync(fd)
            total += len(block)
        mb = total / (time.perf_counter() - t) / 1e6
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"fsyncs_per_s": fsyncs, "write_fsync_mb_per_s": mb}


# --------------------------------------------------------------------------- real processes


def make_recording(path: Path, episodes: int) -> int:
    """A replay recording of `episodes` 64-step episodes with the benchmark's camera spec; returns its steps."""
    from hilrl.buffers.recording import StepRecorder

    rng = np.random.default_rng(0)
    frames = [{f.name: (rng.integers(0, 256, f.shape, dtype=np.uint8) if f.dtype == "uint8"
                        else rng.standard_normal(f.shape).astype(np.float32)) for f in SPEC.observation}
              for _ in range(16)]
    with StepRecorder(path, SPEC) as rec:
        for e in range(episodes):
            for i in range(64):
                rec.add(Step(obs=frames[(e + i) % 16], action=rng.uniform(-1, 1, 4).astype(np.float32), reward=0.0,
                             terminated=i == 63, truncated=False, is_intervention=bool(i % 2), episode=e, step=i,
                             final_obs=frames[e % 16] if i == 63 else None))
    return episodes * 64


def e2e(actors: int, episodes: int, work: Path) -> dict:
    """`actors` real `hilrl actor --env replay:REC --fps 0` processes into one real `hilrl learner`."""
    rec = work / "rec.zarr"
    if not rec.exists():
        make_recording(rec, episodes)
    out = work / f"e2e-{actors}"
    hilrl = [str(Path(sys.executable).parent / "hilrl")]
    learner = subprocess.Popen([*hilrl, "learner", "--port", "0", "--output-dir", str(out), "--demo-episodes",
                                "100000", "--torch-threads", "1", "--hidden", "32,32", "--human-capacity", "20000",
                                "--policy-capacity", "20000"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    try:
        line = learner.stdout.readline()
        address = line.split(" listening on ")[1].split(" ")[0]
        procs = [subprocess.Popen([*hilrl, "actor", "--learner", address, "--env", f"replay:{rec}", "--fps", "0",
                                   "--state-dir", str(work / f"state-{actors}-{i}"), "--actor-id", f"arm-{i}",
                                   "--max-episodes", str(episodes)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for i in range(actors)]
        want, first, last, stored = actors * episodes * 64, None, None, 0
        deadline = time.monotonic() + 900
        while stored < want and time.monotonic() < deadline:
            stored = _stored(address)
            now = time.perf_counter()
            if stored and first is None:
                first = (now, stored)
            last = (now, stored)
            time.sleep(0.2)
        for p in procs:
            p.wait(60)
    finally:
        learner.terminate()
        learner.wait(120)
        shutil.rmtree(out, ignore_errors=True)
    assert first is not None and last is not None
    return {"stored": last[1], "wanted": want, "stored_per_s": (last[1] - first[1]) / max(last[0] - first[0], 1e-9)}


def _stored(address: str) -> int:
    from hilrl.deploy.status import fetch_status

    try:
        return sum(a["transitions_received"] for a in fetch_status(address)["actors"])
    except Exception:  # noqa: BLE001 - not answering yet
        return 0


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None, help="streaming window per row (default 20, quick 5)")
    parser.add_argument("--quick", action="store_true", help="5 s windows")
    parser.add_argument("--actors", default="1,4", help="actor counts, comma-separated")
    parser.add_argument("--no-tls", action="store_true", help="skip the TLS rows")
    parser.add_argument("--e2e", action="store_true", help="also real hilrl learner/actor processes")
    parser.add_argument("--e2e-episodes", type=int, default=10, help="episodes of 64 steps per e2e actor")
    parser.add_argument("--work-dir", type=Path, default=None, help="where stores and logs go (default: tmp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    work = Path(tempfile.mkdtemp(prefix="hilrl-ingest-", dir=args.work_dir))
    rows: list[dict] = []
    try:
        load = os.getloadavg()[0]
        disk = disk_ceiling(work)
        nbytes = tt._batch_template(0).ByteSize() / BATCH_STEPS
        print(f"transition {nbytes / 1e3:.1f} kB; {seconds:g} s windows; load {load:.1f}; disk: "
              f"{disk['fsyncs_per_s']:,.0f} fsyncs/s (4 kB), {disk['write_fsync_mb_per_s']:,.0f} MB/s write+fsync "
              f"(3 MB) = {disk['write_fsync_mb_per_s'] * 1e6 / nbytes / 2:,.0f} transitions/s written twice\n")
        print("| actors | TLS | raw sink /s | learner acked /s | of raw | backlog at end | drain s | stored /s "
              "| of raw |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        certs = None if args.no_tls else tt.make_certs(work)
        for tls in [False, True] if certs else [False]:
            for actors in (int(a) for a in args.actors.split(",")):
                raw = stream("sink", actors, certs if tls else None, seconds, work)
                got = stream("learner", actors, certs if tls else None, seconds, work)
                rows.append({"actors": actors, "tls": tls, "raw": raw, "learner": got, "load": os.getloadavg()[0]})
                print(f"| {actors} | {'on' if tls else 'off'} | {raw['acked_per_s']:,.0f} | {got['acked_per_s']:,.0f} "
                      f"| {got['acked_per_s'] / raw['acked_per_s']:.0%} | {got['backlog_batches']} batches "
                      f"({got['backlog_mb']:,.0f} MB) | {got['drain_s']:.1f} | {got['stored_per_s']:,.0f} "
                      f"| {got['stored_per_s'] / raw['acked_per_s']:.0%} |", flush=True)
        if args.e2e:
            for actors in (1, 4):
                r = e2e(actors, args.e2e_episodes, work)
                rows.append({"e2e": actors, **r})
                print(f"e2e: {actors} real actor processes (--env replay --fps 0): {r['stored']:,} of {r['wanted']:,} "
                      f"stored, {r['stored_per_s']:,.0f} transitions/s", flush=True)
        print(f"\nload after: {os.getloadavg()[0]:.1f}")
        if args.json:
            args.json.write_text(json.dumps({"disk": disk, "load_before": load, "seconds": seconds, "rows": rows},
                                            indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
