"""`hilrl demo`: a learner and a simulated arm as two OS processes over loopback gRPC, end to end.

Demonstrations (scripted expert as the human) -> offline TD3+BC -> online TD3 with scripted
takeovers -> stop both processes -> evaluate the final published policy without takeover or noise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from hilrl.deploy.configtools import opt
from hilrl.learner.rundir import RunDir


@dataclass
class DemoConfig:
    output_dir: Path | None = opt(None, "where logs, checkpoints and the actor state go; "
                                        "none = hilrl-runs/demo-<timestamp>")
    train_minutes: float = opt(6.0, "wall-clock budget for demos + training before both processes are stopped")
    demo_episodes: int = opt(20, "scripted human demonstrations before offline training")
    offline_steps: int = opt(5000, "offline TD3+BC updates (the learner's default)")
    online_steps: int = opt(8000, "online TD3 updates; the demo stops early once they are done")
    publish_every: int = opt(250, "publish weights every N online updates")
    takeover_after: int = opt(50, "the scripted human takes over a policy episode after this many steps")
    eval_episodes: int = opt(50, "evaluation episodes (random block positions, no takeover, no noise)")
    seed: int = opt(0, "seed for learner, sim and evaluation")
    sim_cameras: bool = opt(False, "the camera pipeline end to end: 64x64 front + wrist cameras and agent_pos only (no "
                                   "block position), the learner's camera defaults (convnet encoder pretrained on "
                                   "the demos, frozen, cached features) on a budget cut to the demo's minutes. One "
                                   "run on a shared 2-core CPU: 7/10 evaluation successes, about 8.5 min in all "
                                   "(docs/camera-policy.md, 'The demo')")


# --sim-cameras: the learner's camera defaults (convnet encoder pretrained on the demos, then frozen, features
# cached per frame) on 64x64 cameras, with a budget cut to fit the demo's minutes on a CPU
CAMERA_EVAL_EPISODES = 10
CAMERA_IMAGE_SIZE = 64
CAMERA_OFFLINE_STEPS = 1000
CAMERA_LEARNER_ARGS = ("--batch-size", "64", "--encoder-pretrain-steps", "300")


def _offline_steps(cfg: DemoConfig) -> int:
    return min(cfg.offline_steps, CAMERA_OFFLINE_STEPS) if cfg.sim_cameras else cfg.offline_steps


def _spawn(args: list[str], log_path: Path, stdout_path: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    stdout = open(stdout_path or log_path, "ab")  # noqa: SIM115 - owned by the child process
    stderr = open(log_path, "ab")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "hilrl.deploy.cli", *args], stdout=stdout, stderr=stderr,
                            env=env, start_new_session=True)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for_address(proc: subprocess.Popen, info: Path, log_path: Path, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if info.exists():
            return json.loads(info.read_text())["address"]
        if proc.poll() is not None:
            raise SystemExit(f"the learner exited with code {proc.returncode}; its log ({log_path}):\n"
                             f"{_tail(log_path)}")
        time.sleep(0.2)
    raise SystemExit(f"the learner did not start within {timeout:.0f}s; see {log_path}")


def _stop(proc: subprocess.Popen, timeout: float = 90.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def run_demo(cfg: DemoConfig) -> int:
    from hilrl.deploy.status import fetch_status

    out = cfg.output_dir or Path("hilrl-runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    learner_dir, learner_log, actor_log = out / "learner", out / "learner.log", out / "actor.log"
    print(f"hilrl demo: learner + simulated arm over loopback gRPC; output in {out}", flush=True)
    learner = _spawn(["learner", "--port", "0", "--output-dir", str(learner_dir), "--seed", str(cfg.seed),
                      "--torch-threads", "1", "--demo-episodes", str(cfg.demo_episodes),
                      "--offline-steps", str(_offline_steps(cfg)), "--publish-every", str(cfg.publish_every),
                      "--keep-weight-versions", "100000",
                      *(CAMERA_LEARNER_ARGS if cfg.sim_cameras else ())],
                     learner_log)
    actor = None
    try:
        address = _wait_for_address(learner, RunDir(learner_dir).address, learner_log)
        actor = _spawn(["actor", "--learner", address, "--env", "sim", "--fps", "0", "--actor-id", "sim-0",
                        "--state-dir", str(out / "actor-state"), "--seed", str(cfg.seed),
                        "--takeover-after", str(cfg.takeover_after),
                        *(("--sim-cameras", "--sim-image-size", str(CAMERA_IMAGE_SIZE)) if cfg.sim_cameras else ())],
                       actor_log, out / "actor.summary.json")
        status = _train(cfg, address, learner, actor, fetch_status)
    finally:
        actor_rc = _stop(actor) if actor is not None else None
        learner_rc = _stop(learner)
    actor_summary = _last_json_line(out / "actor.summary.json")
    if learner_rc != 0 or actor_rc not in (0, None) or actor_summary is None:
        print(f"demo failed: learner exit {learner_rc}, actor exit {actor_rc}\n--- learner log ---\n"
              f"{_tail(learner_log)}\n--- actor log ---\n{_tail(actor_log)}", file=sys.stderr)
        return 1
    return _evaluate_and_report(cfg, out, status, actor_summary)


def _train(cfg: DemoConfig, address: str, learner, actor, fetch_status) -> dict:
    total = _offline_steps(cfg) + cfg.online_steps
    deadline = time.monotonic() + cfg.train_minutes * 60
    status: dict = {}
    with tqdm(total=total, desc="training", unit="upd", dynamic_ncols=True) as bar:
        while time.monotonic() < deadline:
            for name, proc in (("learner", learner), ("actor", actor)):
                if proc.poll() is not None:
                    raise SystemExit(f"the {name} exited early with code {proc.returncode}; see its log")
            try:
                status = fetch_status(address, timeout_s=5.0)
            except Exception:  # noqa: BLE001 - a busy learner may miss one poll; the next one will do
                time.sleep(1.0)
                continue
            bar.n = min(status["learner_step"], total)
            a = status["actors"][0] if status["actors"] else {}
            bar.set_postfix_str(f"{status['stage']} demos={status['demo_episodes']}/{status['demo_episodes_needed']} "
                                f"human={status['buffers']['human']['size']} "
                                f"policy={status['buffers']['policy']['size']} v{status['weight_version']} "
                                f"episodes={a.get('episodes', 0)}")
            bar.refresh()
            if status["learner_step"] >= total:
                break
            time.sleep(1.0)
    return status


def _last_json_line(path: Path) -> dict | None:
    for line in reversed(path.read_text().splitlines() if path.exists() else []):
        if line.startswith("{"):
            return json.loads(line)
    return None


def _evaluate_and_report(cfg: DemoConfig, out: Path, status: dict, actor_summary: dict) -> int:
    from hilrl.actor.evaluate import evaluate
    from hilrl.hardware.sim import SimPickCube
    from hilrl.learner.networks import load_policy_file

    policy_path = RunDir(out / "learner").policy
    if not policy_path.exists():
        print(f"demo failed: no policy was published (training did not reach the online stage within "
              f"{cfg.train_minutes} min); see {out / 'learner.log'}", file=sys.stderr)
        return 1
    policy = load_policy_file(policy_path)
    episodes = cfg.eval_episodes
    if cfg.sim_cameras and episodes > CAMERA_EVAL_EPISODES:  # rendering + an encoder pass per step: minutes each
        print(f"--sim-cameras: evaluating {CAMERA_EVAL_EPISODES} episodes, not {episodes}, to stay within the "
              f"demo's time (each costs up to 100 rendered steps)", flush=True)
        episodes = CAMERA_EVAL_EPISODES
    with SimPickCube(seed=cfg.seed + 10_000, cameras=cfg.sim_cameras, image_size=CAMERA_IMAGE_SIZE
                     if cfg.sim_cameras else 128) as env:
        result = evaluate(policy, env, episodes, seed=cfg.seed + 10_000)
    summary = {
        "episodes": actor_summary["episodes"],
        "demo_episodes": actor_summary.get("demo_episodes"),
        "interventions": actor_summary["interventions"],
        "takeovers": actor_summary["takeovers"],
        "weight_versions_applied": actor_summary["weight_version"],
        "learner_step": status.get("learner_step"),
        "eval_episodes": result["episodes"],
        "eval_success_rate": result["success_rate"],
        "eval_mean_length": result["mean_length"],
        "output_dir": str(out),
        "checkpoint": str(policy_path),
        "tensorboard": f"tensorboard --logdir {RunDir(out / 'learner').tensorboard}",
    }
    print("\n=== hilrl demo summary ===")
    print(f"training episodes: {summary['episodes']} ({summary['demo_episodes']} demonstrations), "
          f"human steps (interventions): {summary['interventions']} in {summary['takeovers']} takeovers")
    print(f"learner updates: {summary['learner_step']}, newest weight version applied by the actor: "
          f"v{summary['weight_versions_applied']}")
    print(f"evaluation: {result['successes']}/{result['episodes']} successes "
          f"({100 * result['success_rate']:.0f} %), no takeover, no exploration noise")
    print(f"logs: {out}/learner.log, {out}/actor.log   policy: {policy_path}")
    print(f"curves: {summary['tensorboard']}")
    print(json.dumps(summary))
    return 0
