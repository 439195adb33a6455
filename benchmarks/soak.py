"""Soak: exactly-once storage under many faults, and short-call latency under many streams (not in CI).

* ``kills``: 2+ sim actors (50 Hz, ``--record``) stream through a loopback TCP proxy (tests/tcp_proxy.py) to a
  learner that is SIGKILLed ``--kills`` times (restarted with ``--resume``) and partitioned from them
  ``--partitions`` times (the proxy blackholes both directions for a few seconds), in a random order, each at a
  random moment while both actors stream. At the end every actor's recording is compared, step by step (a hash
  of everything a step carries), with what the learner's store holds: lost and duplicated steps are counted.
  The CI keeps the short version (tests/test_faults.py, 3 kills and 1 partition).
* ``streams``: ``--streams`` concurrent actor streams (real `LearnerLink` + `Outbox`, a few per process)
  replay a recording into one learner process, while this process measures Hello, GetStatus and health
  latency (p50/p99) at ``--rate`` Hz (see benchmarks/soak_streams.py).

Run: ``nice -n 5 python benchmarks/soak.py kills --kills 20 --partitions 20 --seed 1`` (about 13 min on 2
loaded cores) and ``python benchmarks/soak.py streams``; each writes JSON (``--json``, default docs/soak/).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fault-test helpers: proxy, recording vs store comparison

from conftest import Proc, free_port  # noqa: E402 - a `hilrl ...` process with its output in files
from tcp_proxy import TcpProxy  # noqa: E402
from test_faults import actor_args, fingerprint, learner_args, recorded, stored_by_actor  # noqa: E402

from hilrl.protos.v1 import learner_pb2 as pb  # noqa: E402
from hilrl.protos.v1 import learner_pb2_grpc as pb_grpc  # noqa: E402


def received(stub: pb_grpc.LearnerStub) -> dict[str, int] | None:
    try:
        reply = stub.GetStatus(pb.StatusRequest(), timeout=3)
    except grpc.RpcError:
        return None
    return {a.id: a.transitions_received for a in reply.actors}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.3)
    raise SystemExit(f"soak: timed out after {timeout:.0f} s waiting for {what}")


def kills(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="hilrl-soak-"))
    port, out = free_port(), work / "learner"
    stub = pb_grpc.LearnerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    keepalive = ["--keepalive-s", "2"]
    n_learner = 0

    def start_learner(*extra: str) -> Proc:
        nonlocal n_learner
        n_learner += 1
        return Proc(learner_args(port, out, *keepalive, *extra), work, f"learner{n_learner}")

    learner = start_learner()
    wait_for(lambda: received(stub) is not None, 120, "the learner to serve")
    ids = [f"arm-{k}" for k in range(args.actors)]
    events = ["kill"] * args.kills + ["partition"] * args.partitions
    rng.shuffle(events)
    restarts, partitions, started = [], [], time.monotonic()
    with TcpProxy(port) as proxy:
        actors = {i: Proc(actor_args(proxy.address, work / i, i, *keepalive, "--seed", str(n), "--record",
                                     str(work / f"{i}.zarr")), work, i) for n, i in enumerate(ids)}
        for k, event in enumerate(events):
            floor = received(stub) or {}
            wait_for(lambda f=floor: (r := received(stub)) and all(r.get(i, 0) > f.get(i, 0) for i in ids), 180,
                     f"both actors streaming before event {k} ({event})")
            time.sleep(rng.uniform(0.5, 3.0))
            if event == "kill":
                learner.popen.send_signal(signal.SIGKILL)
                learner.popen.wait()
                time.sleep(rng.uniform(0.5, 2.0))  # the actors keep recording into their outboxes
                t0 = time.monotonic()
                learner = start_learner("--resume")
                wait_for(lambda: received(stub) is not None, 180, f"learner {n_learner} to serve")
                restarts.append(round(time.monotonic() - t0, 1))
            else:
                proxy.blackhole()
                hold = rng.uniform(2.0, 8.0)
                time.sleep(hold)
                proxy.heal()
                partitions.append(round(hold, 1))
            print(f"[{time.monotonic() - started:6.0f} s] event {k + 1}/{len(events)}: {event}", flush=True)
        floor = received(stub) or {}
        wait_for(lambda: (r := received(stub)) and all(r.get(i, 0) > floor.get(i, 0) + 50 for i in ids), 180,
                 "both actors streaming after the last event")
        summaries = {}
        for i, actor in actors.items():
            code = actor.stop(timeout=120)
            summaries[i] = json.loads(actor.stdout.strip().splitlines()[-1]) if code == 0 else {}
            assert code == 0, f"{i} exited {code}: {actor.stderr[-2000:]}"
    assert learner.stop() == 0, learner.stderr[-2000:]
    stored = stored_by_actor(out)
    per_actor, lost, duplicated, compared = {}, 0, 0, 0
    for i in ids:
        got = Counter(map(fingerprint, stored.get(i, [])))
        want = Counter(map(fingerprint, recorded(work / f"{i}.zarr")))
        missing, doubles = want - got, sum(n - 1 for n in got.values() if n > 1)
        extra = sum((got - want).values()) - doubles
        per_actor[i] = {"recorded": sum(want.values()), "stored": sum(got.values()), "lost": sum(missing.values()),
                        "duplicated": doubles, "stored_never_sent": extra, "unacked_at_exit": summaries[i]["unacked"]}
        lost, duplicated, compared = lost + sum(missing.values()), duplicated + doubles, compared + sum(want.values())
    result = {"kills": args.kills, "partitions": args.partitions, "seed": args.seed, "actors": args.actors,
              "steps_compared": compared, "lost": lost, "duplicated": duplicated, "per_actor": per_actor,
              "seconds": round(time.monotonic() - started), "learner_restart_s": restarts,
              "learner_restart_s_median": statistics.median(restarts) if restarts else None,
              "partition_s": partitions, "load_avg_1m_at_end": os.getloadavg()[0], "work_dir": str(work)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kills", help="learner SIGKILLs and link partitions, then recordings vs store")
    k.add_argument("--kills", type=int, default=20)
    k.add_argument("--partitions", type=int, default=20)
    k.add_argument("--actors", type=int, default=2)
    k.add_argument("--seed", type=int, default=1)
    k.add_argument("--json", type=Path, default=ROOT / "docs" / "soak" / "kills.json")
    s = sub.add_parser("streams", help="many actor streams; Hello/GetStatus/health latency")
    s.add_argument("--streams", type=int, default=32)
    s.add_argument("--per-process", type=int, default=8)
    s.add_argument("--seconds", type=float, default=30.0)
    s.add_argument("--recording", type=Path, default=None, help="a sim actor's --record (default: the kills soak's)")
    s.add_argument("--json", type=Path, default=ROOT / "docs" / "soak" / "streams.json")
    args = p.parse_args()
    if args.what == "kills":
        result = kills(args)
    else:
        from soak_streams import streams  # noqa: PLC0415 - only this subcommand needs it

        result = streams(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_actor"}, indent=1))
    if result.get("lost") or result.get("duplicated"):
        sys.exit(1)


if __name__ == "__main__":
    main()
