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
from hilrl.actor.link import LearnerLink
from hilrl.actor.loop import ActorLoop
from hilrl.actor.outbox import Outbox, StateDir, StateDirInUse, default_state_dir
from hilrl.buffers.recording import StepRecorder
from hilrl.protos.transport import SecurityConfigError

log = logging.getLogger(__name__)

EXIT_REFUSED = 3


def run(cfg: ActorConfig) -> int:
    torch.set_num_threads(1)  # a small MLP per tick; leave the cores to the sim and the learner
    try:  # unusable TLS/token options fail now, before the state directory and the sim
        cfg.channel_credentials()
        cfg.token()
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
    if len(outbox):
        log.info("outbox holds %d unacknowledged batches from an earlier run; they will be resent", len(outbox))
    if cfg.record is not None and cfg.record.exists():
        print(f"hilrl actor: --record {cfg.record} already exists; choose a new path", file=sys.stderr)
        return 2
    if cfg.env in ("so101", "so100"):
        env, human = make_real_arm(cfg)
    else:
        env, human = make_env(cfg.env, cfg.seed, cfg.demo_noise, cfg.takeover_after)
    link = LearnerLink(cfg.learner, state.actor_id, env.spec, outbox, cfg.max_message_mb, security=cfg)
    log.info("actor %s (state %s) -> learner %s", state.actor_id, state.path, cfg.learner)
    link.start()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    recorder = StepRecorder(cfg.record, env.spec) if cfg.record is not None else None
    try:
        summary = ActorLoop(cfg, env, human, link, outbox, state, stop, recorder).run()
    finally:
        env.close()
        if human is not None:
            human.close()
        if recorder is not None:
            recorder.close()
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
