"""Learning works through the real commands: `hilrl record` -> `hilrl learner --demos` -> `hilrl eval`.

Offline TD3+BC (the learner's defaults) on scripted-expert demonstrations of the sim pick-cube
(state observations, random block) reaches >= 60 % success over 50 evaluation episodes, where the
untrained policy (the same learner with no offline updates) scores 0 %. The learner is SIGKILLed twice:
once mid-offline after a checkpoint (the resumed run continues from that checkpoint's step and finishes
the offline stage) and once after publishing (the policy the resumed learner publishes from its restored
state, weights v2, is bit for bit the policy published before the kill, weights v1).

HILRL_LEARNING_SEED picks the seed of the recording and the learner (default 0), to measure the margin.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import free_port, hilrl_status, ingest, run_hilrl, wait_until
from safetensors.torch import load_file

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("HILRL_LEARNING_SEED", "0"))
DEMOS = 20
OFFLINE_STEPS = 2400
CHECKPOINT_EVERY = 800
EVAL_EPISODES = 50
UNTRAINED_EVAL_EPISODES = 10  # an untrained policy never succeeds and runs every episode to 100 steps


def learner_args(port: int, out: Path, demos: Path, offline_steps: int, *extra: str) -> list[str]:
    return ["learner", "--port", str(port), "--output-dir", str(out), "--demos", str(demos),
            "--demo-episodes", str(DEMOS), "--offline-steps", str(offline_steps),
            "--checkpoint-every", str(CHECKPOINT_EVERY), "--torch-threads", "1", "--seed", str(SEED), *extra]


def evaluate(checkpoint: Path, episodes: int) -> dict:
    r = run_hilrl("eval", "--checkpoint", str(checkpoint), "--episodes", str(episodes), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def complete_checkpoints(out: Path) -> list[int]:
    return sorted(int(p.parent.name.removeprefix("step-")) for p in (out / "checkpoints").glob("step-*/DONE"))


def checkpointed(out: Path) -> int:
    """The newest complete checkpoint's step once the learner's state file agrees with it (else -1)."""
    steps, state = complete_checkpoints(out), out / "learner_state.json"
    if not steps or not state.exists():
        return -1
    try:
        return steps[-1] if json.loads(state.read_text())["learner_step"] == steps[-1] else -1
    except (json.JSONDecodeError, KeyError):
        return -1


def published(address: str, version: int):
    def check() -> dict | None:
        s = hilrl_status(address)
        return s if s and s["stage"] == "online" and s["weight_version"] >= version else None
    return check


@pytest.mark.timeout(1200)  # ~3 min on an idle 2-core machine; the guard allows for a heavily shared one
def test_offline_td3bc_learns_the_pick_and_survives_sigkill_and_resume(spawn, tmp_path: Path) -> None:
    demos = tmp_path / "demos.zarr"
    r = run_hilrl("record", "--output", str(demos), "--episodes", str(DEMOS), "--seed", str(SEED), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["success_rate"] >= 0.9

    # The untrained policy: same learner, no offline updates (weights v1 are the initial ones).
    port, untrained = free_port(), tmp_path / "untrained"
    learner = spawn(*learner_args(port, untrained, demos, 0), name="untrained")
    wait_until(published(f"127.0.0.1:{port}", 1), 300, "untrained weights v1",
               diagnose=lambda: learner.stderr[-2000:])
    assert learner.stop() == 0
    assert evaluate(untrained, UNTRAINED_EVAL_EPISODES)["success_rate"] == 0.0

    # Offline TD3+BC, SIGKILLed mid-offline once a checkpoint is complete.
    port, out = free_port(), tmp_path / "learner"
    address = f"127.0.0.1:{port}"
    learner = spawn(*learner_args(port, out, demos, OFFLINE_STEPS), name="learner")
    wait_until(lambda: checkpointed(out) >= CHECKPOINT_EVERY, 600, "a checkpoint mid-offline", interval=0.2,
               diagnose=lambda: learner.stderr[-2000:])
    learner.popen.send_signal(signal.SIGKILL)
    learner.wait(30)
    checkpoint_step = complete_checkpoints(out)[-1]
    assert checkpoint_step < OFFLINE_STEPS, "killed too late: the offline stage had already finished"
    assert json.loads((out / "learner_state.json").read_text())["learner_step"] == checkpoint_step

    learner = spawn(*learner_args(port, out, demos, OFFLINE_STEPS, "--resume"), name="resumed")
    first = wait_until(lambda: hilrl_status(address), 300, "the resumed learner", interval=0.2,
                       diagnose=lambda: learner.stderr[-2000:])
    assert first["learner_step"] >= checkpoint_step, first  # not restarted from 0 (that would be < 800 here)
    done = wait_until(published(address, 1), 900, "the offline stage to finish after --resume",
                      diagnose=lambda: learner.stderr[-2000:])
    assert done["learner_step"] == OFFLINE_STEPS and done["weight_version"] == 1, done
    before = evaluate(out, EVAL_EPISODES)
    assert before["episodes"] == EVAL_EPISODES
    print(f"seed {SEED}: offline TD3+BC success {before['success_rate']:.2f} over {EVAL_EPISODES} episodes")
    assert before["success_rate"] >= 0.6, before

    # SIGKILL after the publish checkpoint.
    final_step = done["learner_step"]
    assert complete_checkpoints(out)[-1] == final_step
    learner.popen.send_signal(signal.SIGKILL)
    learner.wait(30)
    learner = spawn(*learner_args(port, out, demos, OFFLINE_STEPS, "--resume"), name="resumed-again")
    # The publish checkpoint already says "online": the resumed learner comes back online with v1 and no
    # second offline pass; when stopped it publishes the policy training ended with (the restored one) as v2.
    status = wait_until(published(address, 1), 300, "the learner after the second kill, online",
                        diagnose=lambda: learner.stderr[-2000:])
    assert status["learner_step"] == final_step and status["stage"] == "online", status
    assert status["weight_version"] == 1, status
    assert learner.stop() == 0
    assert json.loads((out / "weights_version.json").read_text())["version"] == 2, "no v2 from the resumed state"
    v1, v2 = (load_file(out / "weights" / f"v{v:06d}.safetensors") for v in (1, 2))
    assert v1.keys() == v2.keys()
    changed = [k for k in v1 if not torch.equal(v1[k], v2[k])]
    assert not changed, f"the resumed learner's policy differs from the one published before the kill: {changed}"


def test_a_mid_offline_checkpoint_counts_the_update_it_follows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import numpy as np

    from hilrl.buffers.assembler import Step
    from hilrl.buffers.spec import Feature, Spec
    from hilrl.learner.config import LearnerConfig
    from hilrl.learner.core import LearnerCore
    from hilrl.learner.training import Trainer

    saved: list[tuple[str, int, int]] = []  # (stage, learner_step, offline_steps) at every state save
    original = LearnerCore.save_state

    def recording_save_state(self: LearnerCore, path: Path | None = None) -> None:
        saved.append((self.stage, self.learner_step, self.offline_steps_done))
        original(self, path)

    monkeypatch.setattr(LearnerCore, "save_state", recording_save_state)
    spec = Spec(observation=(Feature("x", "float32", (3,)),), action=Feature("a", "float32", (1,), (-1,), (1,)))
    cfg = LearnerConfig(output_dir=tmp_path, device="cpu", torch_threads=1, demo_episodes=1, offline_steps=6,
                        checkpoint_every=4, batch_size=8, hidden=(8,), publish_every=1000)
    core = LearnerCore(cfg)
    core.open()
    core.hello("a", spec)
    obs = [{"x": np.full(3, t, np.float32)} for t in range(4)]
    ingest(core, "a", [(1, [Step(obs[t], np.zeros(1, np.float32), 0.0, False, t == 2, True, 0, t,
                              obs[3] if t == 2 else None) for t in range(3)])], 0)[0]
    stop = threading.Event()
    thread = threading.Thread(target=Trainer(core).run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: core.stage == "online", 60, "the end of the offline stage", interval=0.05)
    finally:
        stop.set()
        thread.join(30)
    mid = [s for s in saved if s[0] == "offline" and s[1] == 4]
    assert mid, saved
    assert mid[0][2] == 4, f"checkpoint at learner step 4 recorded offline_steps {mid[0][2]}"
    # the checkpoint written with weights v1 already says "online": a learner resumed from it does not
    # go back to offline and publish the same weights again
    assert ("online", 6, 6) in saved and not [x for x in saved if x[1] == 6 and x[0] == "offline"], saved
