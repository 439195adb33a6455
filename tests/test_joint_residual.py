"""A joint-space residual session on the fake SO-101: `hilrl actor --env so101 --action-mode joint
--residual-base ...` with a real `hilrl learner --residual --demo-episodes 0 --offline-steps 0` process.

The actor runs in this process through `hilrl.actor.main.run` (the command's own code: `make_real_arm`,
`NoTakeover`, `residual_env`, the loop, the gRPC link), with lerobot's follower replaced by the duck-typed
`FakeFollower` and pygame's joystick by `FakeGamepad` (tests/fakes.py). Nobody can demonstrate on a
joint-mode arm, so before the first weights the actor runs the base alone (the untrained residual); the
learner starts from that first episode. Checked: no step is a human's, weights v1 are exactly the base
on every recorded observation, later weights move it but never by more than the bound in degrees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from conftest import free_port
from fakes import FakeFollower, fake_gamepad

from hilrl.actor.config import ActorConfig
from hilrl.buffers.recording import read_steps
from hilrl.buffers.spec import state_vector
from hilrl.hardware.gamepad import GO_BUTTON
from hilrl.hardware.so_arm import ArmConfig, SOArm
from hilrl.learner.networks import Policy, PolicyConfig, load_policy_file, policy_to_safetensors_bytes
from hilrl.learner.residual import BASE_ACTION

SCALE = 0.01  # the residual's bound: 0.01 x 180 = 1.8 degrees per joint, 0.01 x 50 = 0.5 gripper units


def joint_base(path: Path) -> Path:
    """A small fixed policy on the arm's joint spec (a stand-in for a joint-space ACT): targets near 0 degrees."""
    spec = SOArm(ArmConfig(port="/dev/null"), robot=FakeFollower()).spec
    policy = Policy(PolicyConfig(spec.state_dim, spec.action_dim, (8,)))
    policy.set_normalization(np.zeros(spec.state_dim), np.full(spec.state_dim, 50.0), spec.action.low,
                             spec.action.high)
    with torch.no_grad():
        for p in policy.actor.parameters():
            p.mul_(0.2)  # within the fake arm's calibrated +-87.9 degrees: the safety clamp never cuts it
    path.write_bytes(policy_to_safetensors_bytes(policy))
    return path


def test_joint_space_residual_session_on_the_fake_so101(spawn, tmp_path: Path, monkeypatch, caplog,
                                                        one_torch_thread) -> None:
    from hilrl.actor.main import run

    caplog.set_level(logging.INFO)
    port, out = free_port(), tmp_path / "learner"
    learner = spawn("learner", "--port", str(port), "--output-dir", str(out), "--residual", "--residual-scale",
                    str(SCALE), "--demo-episodes", "0", "--offline-steps", "0", "--publish-every", "5",
                    "--keep-weight-versions", "1000", "--batch-size", "16", "--torch-threads", "1", "--hidden",
                    "16,16", name="learner")
    robot = FakeFollower()
    monkeypatch.setattr("hilrl.hardware.so_arm.port_exists", lambda port: True)
    monkeypatch.setattr("hilrl.hardware.so_arm.make_robot", lambda cfg: robot)
    cfg = ActorConfig(learner=f"127.0.0.1:{port}", env="so101", robot_port="/dev/ttyACM0", action_mode="joint",
                      residual_base=f"checkpoint:{joint_base(tmp_path / 'base.safetensors')}", fps=30,
                      max_episode_steps=15, max_episodes=0, exploration_noise=SCALE, seed=0,
                      state_dir=tmp_path / "actor", record=tmp_path / "steps.zarr", flush_timeout_s=60)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    done = threading.Event()
    with fake_gamepad() as pad:
        def operator() -> None:
            """Presses go whenever the arm waits at an episode's start; once the learner has published v3 and the
            actor had a moment to apply it, stops the actor as Ctrl-C would (or after 300 s whatever happened)."""
            import pygame

            start, published = time.monotonic(), None
            while not done.wait(0.1):
                with contextlib.suppress(pygame.error):  # until the actor has opened the gamepad
                    pad.tap(GO_BUTTON)
                if published is None and len(list((out / "weights").glob("v*.safetensors"))) >= 3:
                    published = time.monotonic()
                if time.monotonic() - start > 300 or (published is not None and time.monotonic() - published > 3):
                    os.kill(os.getpid(), signal.SIGINT)  # the actor's own stop (its signal handler)
                    return

        helper = threading.Thread(target=operator, daemon=True)
        helper.start()
        try:
            assert run(cfg) == 0, learner.stderr[-3000:]
        finally:
            done.set()
            helper.join()
            for sig, handler in saved.items():
                signal.signal(sig, handler)
    messages = [r.getMessage() for r in caplog.records]
    assert any("running the residual base alone" in m for m in messages), messages
    assert any("at most +-[1.8, 1.8, 1.8, 1.8, 1.8, 0.5]" in m for m in messages), messages
    assert learner.stop() == 0 and "Traceback" not in learner.stderr

    spec, stream = read_steps(tmp_path / "steps.zarr")
    steps = list(stream)
    assert len(steps) >= 2 * 15 and not any(s.is_intervention for s in steps)  # nobody took over
    assert json.loads((out / "spec.json").read_text())["action"]["shape"] == [6]
    states = torch.from_numpy(np.stack([state_vector(s.obs, spec) for s in steps]))
    bases = torch.from_numpy(np.stack([s.obs[BASE_ACTION] for s in steps]))
    versions = sorted((out / "weights").glob("v*.safetensors"))
    half = torch.from_numpy((np.asarray(spec.action.high) - np.asarray(spec.action.low)) / 2)
    with torch.no_grad():
        first = load_policy_file(versions[0])(states)
        last = load_policy_file(versions[-1])(states)
    torch.testing.assert_close(first, bases, rtol=0, atol=1e-4)  # degrees: v1 is exactly the base
    moved = (last - bases).abs()
    assert moved.max() > 1e-5, "the published updates never changed the action"
    assert (moved <= SCALE * half + 1e-4).all(), f"correction beyond the bound: {moved.max(0).values}"
    executed = np.stack([s.action for s in steps[:15]]) - bases[:15].numpy()  # episode 0: the base + noise
    assert np.abs(executed).max() < 6 * SCALE * 180
