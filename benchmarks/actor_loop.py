"""Actor control-loop timing with a real learner: period p50/p99, overruns, ticks vs expected, actor RSS.

Each case starts a learner and a sim actor as two processes on loopback (the learner waits for
demonstrations forever, so it only ingests and stores; the scripted expert demonstrates, so every tick
runs the sim, the expert, the safety clamp and the recording, and every batch is streamed):

* ``normal``: streaming on for ``--seconds``;
* ``frozen``: ``--before-s`` of streaming, then the learner SIGSTOPped for ``--freeze-s``, SIGCONT, then
  ``--after-s`` more. The actor must keep its rate; its outbox holds what the learner cannot take.

``ticks/expected`` = ticks / (time inside episodes x fps): resets between episodes are not ticks.
RSS is the actor's resident memory (``/proc/<pid>/status`` VmRSS) when streaming is steady (before)
and at the end (after). Usage: ``python benchmarks/actor_loop.py [--fps 10,30] [--freeze-s 20]``.
Timings depend on the machine's load; compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hilrl(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", MUJOCO_GL="egl")
    out, err = open(log.with_suffix(".out"), "wb"), open(log.with_suffix(".err"), "wb")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "hilrl.deploy.cli", *args], stdout=out, stderr=err, env=env,
                            start_new_session=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_for(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {text!r} in {path}:\n{path.read_text(errors='replace')[-2000:]}")


def run_case(fps: int, case: str, args: argparse.Namespace, work: Path) -> dict:
    port = free_port()
    d = work / f"{case}-{fps}hz"
    d.mkdir()
    learner = hilrl(["learner", "--port", str(port), "--output-dir", str(d / "learner"), "--demo-episodes", "1000000",
                     "--torch-threads", "1"], d / "learner")
    actor = hilrl(["actor", "--learner", f"127.0.0.1:{port}", "--env", "sim", "--fps", str(fps), "--seed", "0",
                   "--state-dir", str(d / "actor"), "--flush-timeout-s", "60"], d / "actor")
    try:
        wait_for(d / "actor.err", "connected to learner", 120)
        if case == "normal":
            time.sleep(min(5.0, args.seconds / 2))
            before = rss_mb(actor.pid)
            time.sleep(args.seconds - min(5.0, args.seconds / 2))
        else:
            time.sleep(args.before_s)
            before = rss_mb(actor.pid)
            learner.send_signal(signal.SIGSTOP)
            time.sleep(args.freeze_s)
            learner.send_signal(signal.SIGCONT)
            time.sleep(args.after_s)
        after = rss_mb(actor.pid)
        actor.send_signal(signal.SIGTERM)
        actor.wait(120)
        lines = (d / "actor.out").read_text().strip().splitlines()
        summary = json.loads(lines[-1]) if lines else {}
    finally:
        for p in (actor, learner):
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    expected = summary.get("episode_s", 0.0) * fps
    return {"fps": fps, "case": case, "ticks": summary.get("ticks", 0), "ratio": summary.get("ticks", 0) / expected
            if expected else float("nan"), "p50": summary.get("loop_period_p50_ms"),
            "p99": summary.get("loop_period_p99_ms"), "overruns": summary.get("overruns"),
            "watchdog": summary.get("watchdog_holds"), "lost": summary.get("learner_lost"),
            "unacked": summary.get("unacked"), "rss_before": before, "rss_after": after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fps", default="10,30", help="control rates to measure, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the normal case")
    ap.add_argument("--before-s", type=float, default=10.0, help="frozen case: streaming before the freeze")
    ap.add_argument("--freeze-s", type=float, default=20.0, help="frozen case: how long the learner is SIGSTOPped")
    ap.add_argument("--after-s", type=float, default=10.0, help="frozen case: streaming after SIGCONT")
    ap.add_argument("--cases", default="normal,frozen", help="normal, frozen or both")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hilrl-actor-loop-") as tmp:
        for fps in (int(f) for f in args.fps.split(",")):
            for case in args.cases.split(","):
                rows.append(run_case(fps, case, args, Path(tmp)))
                print(f"  done: {fps} Hz {case}", file=sys.stderr, flush=True)
    print(f"\nactor loop, sim + scripted expert, real learner on loopback (freeze {args.freeze_s:.0f} s), "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    head = ("fps", "case", "ticks", "ticks/expected", "period p50 ms", "p99 ms", "overruns", "watchdog holds",
            "learner lost", "unacked at exit", "RSS before MB", "RSS after MB")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['fps']} | {r['case']} | {r['ticks']} | {r['ratio']:.3f} | {r['p50']} | {r['p99']} | "
              f"{r['overruns']} | {r['watchdog']} | {r['lost']} | {r['unacked']} | {r['rss_before']:.0f} | "
              f"{r['rss_after']:.0f} |")


if __name__ == "__main__":
    main()
