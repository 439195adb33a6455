"""`hilrl actor`: wire state directory, outbox, learner link and control loop together."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading

import torch

from hilrl.actor.config import ActorConfig
from hilrl.actor.envs import make_env, make_real_arm
from hilrl.actor.human import Schedule
from hilrl.actor.link import LearnerLink
from hilrl.actor.loop import ActorLoop
from hilrl.actor.outbox import Outbox, StateDir, StateDirInUse, default_state_dir
from hilrl.actor.safety import parse_workspace
from hilrl.actor.standalone import CheckpointLink, LocalEpisodes, NullOutbox
from hilrl.buffers.recording import StepRecorder
from hilrl.protos.transport import SecurityConfigError

log = logging.getLogger(__name__)

EXIT_REFUSED = 3


def make_arm(cfg: ActorConfig, takeover_after: int):
    if cfg.env in ("so101", "so100"):
        env, human = make_real_arm(cfg)
    else:
        env, human = make_env(cfg.env, cfg.seed, cfg.demo_noise, takeover_after, cameras=cfg.sim_cameras,
                              image_size=cfg.sim_image_size)
    if getattr(cfg, "residual_base", None):  # residual mode: base(s) rides in every observation
        from hilrl.actor.residual_base import residual_env

        env = residual_env(env, cfg)
    return env, human


def run_checkpoint(cfg: ActorConfig) -> int:
    """Run a trained policy with no learner: evaluation and demos (``hilrl actor --checkpoint DIR``)."""
    from dataclasses import replace

    from hilrl.learner.networks import load_policy_file
    from hilrl.learner.rundir import resolve_policy_file

    if cfg.env.startswith("replay:"):
        print("hilrl actor: --checkpoint runs a policy; it cannot be combined with --env replay:PATH", file=sys.stderr)
        return 2
    if cfg.record is not None and cfg.record.exists():
        print(f"hilrl actor: --record {cfg.record} already exists; choose a new path", file=sys.stderr)
        return 2
    policy_file = resolve_policy_file(cfg.checkpoint)
    try:
        policy = load_policy_file(policy_file)
    except (ValueError, OSError) as exc:
        print(f"hilrl actor: --checkpoint {cfg.checkpoint}: {exc}", file=sys.stderr)
        return 2
    if getattr(policy.cfg, "cameras", ()):  # a camera policy needs the sim's images
        cfg = replace(cfg, sim_cameras=True)
    env, human = make_arm(cfg, takeover_after=0)
    if env.spec.state_dim != policy.cfg.state_dim or env.spec.action_dim != policy.cfg.action_dim:
        env.close()
        print(f"hilrl actor: {policy_file} expects state {policy.cfg.state_dim} / action {policy.cfg.action_dim}, "
              f"--env {cfg.env} gives {env.spec.state_dim} / {env.spec.action_dim}"
              + ("; it is a residual policy: add --residual-base (the base it was trained on)"
                 if getattr(policy.cfg, "residual_scale", 0) > 0 and not cfg.residual_base else ""), file=sys.stderr)
        return 2
    log.info("running %s with no learner (nothing is streamed)", policy_file)
    cfg = replace(cfg, exploration_noise=0.0)
    stop = _stop_on_signals()
    recorder = StepRecorder(cfg.record, env.spec) if cfg.record is not None else None
    try:
        summary = ActorLoop(cfg, env, human, CheckpointLink(policy), NullOutbox(), LocalEpisodes(), stop, recorder,
                            standalone=True).run()
    finally:
        _close(env, human, recorder)
    summary["checkpoint"] = str(policy_file)
    print(json.dumps(summary), flush=True)
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _close(env, human, recorder) -> None:
    env.close()
    if human is not None:
        human.close()
    if recorder is not None:
        recorder.close()


def check_options(cfg: ActorConfig) -> str | None:
    """What is wrong with the schedule / safety options, or None."""
    try:
        schedule = Schedule(cfg.schedule)
        parse_workspace(cfg.workspace)
    except ValueError as exc:
        return str(exc)
    if cfg.env in ("so101", "so100") and cfg.action_mode == "joint" and "human" in schedule.cycle:
        return "--schedule with human episodes needs --action-mode ee: the human drives in end-effector space"
    if (cfg.residual_base_map or cfg.residual_base_device) and not (cfg.residual_base or "").startswith("lerobot:"):
        return "--residual-base-map and --residual-base-device are for --residual-base lerobot:PATH"
    if cfg.rest_pose and cfg.env not in ("so101", "so100"):
        return f"--rest-pose is for a real arm (--env so101/so100); the sim resets itself (--env {cfg.env})"
    if cfg.max_action_delta < 0 or cfg.watchdog_periods < 0 or cfg.learner_lost_after_s <= 0:
        return "--max-action-delta and --watchdog-periods must be >= 0, --learner-lost-after-s > 0"
    return None


def run(cfg: ActorConfig) -> int:
    torch.set_num_threads(1)  # a small MLP per tick; leave the cores to the sim and the learner
    problem = check_options(cfg)
    if problem:
        print(f"hilrl actor: {problem}", file=sys.stderr)
        return 2
    if cfg.checkpoint is not None:
        return run_checkpoint(cfg)
    try:  # unusable TLS/token options fail now, before the state directory and the sim
        cfg.channel_credentials()
        cfg.check_target(cfg.learner, cfg.token())  # no bearer token in plaintext off loopback
    except SecurityConfigError as exc:
        print(f"hilrl actor: {exc}", file=sys.stderr)
        return 2
    state_dir = cfg.state_dir or default_state_dir(cfg.actor_id)
    try:
        state = StateDir(state_dir, cfg.actor_id)
    except StateDirInUse as exc:
        print(f"hilrl actor: {exc}", file=sys.stderr)
        return 2
    outbox = Outbox(state.path / "outbox", max_bytes=int(cfg.outbox_max_mb * 2**20))
    own = cfg.max_message_mb << 20  # batches fit this and the learner's limit (the one remembered, until Hello)
    outbox.set_message_limit(min(own, outbox.message_limit or own))
    recovered = outbox.recover_journal(state.actor_id)
    if recovered:
        log.info("outbox: %d steps of a batch the earlier run never closed (it was killed) were recovered from "
                 "its journal", recovered)
    if len(outbox):
        log.info("outbox holds %d unacknowledged batches from an earlier run; they will be resent", len(outbox))
    if cfg.record is not None and cfg.record.exists():
        print(f"hilrl actor: --record {cfg.record} already exists; choose a new path", file=sys.stderr)
        return 2
    env, human = make_arm(cfg, cfg.takeover_after)
    link = LearnerLink(cfg.learner, state.actor_id, env.spec, outbox, cfg.max_message_mb, security=cfg, state=state,
                       new_run=cfg.new_run)
    log.info("actor %s (state %s) -> learner %s", state.actor_id, state.path, cfg.learner)
    link.start()

    stop = _stop_on_signals()
    recorder = StepRecorder(cfg.record, env.spec) if cfg.record is not None else None
    try:
        summary = ActorLoop(cfg, env, human, link, outbox, state, stop, recorder).run()
    finally:
        _close(env, human, recorder)
    if link.fatal is None and len(outbox):
        log.info("waiting up to %.0fs for the learner to acknowledge %d batches", cfg.flush_timeout_s, len(outbox))
        outbox.wait_empty(cfg.flush_timeout_s)
    link.close()
    summary["unacked"] = len(outbox)
    summary["actor_id"] = state.actor_id
    state.close()
    if link.fatal is not None:
        print(f"hilrl actor: {link.fatal}", file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return EXIT_REFUSED if link.fatal is not None else 0
