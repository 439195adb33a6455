"""`hilrl record`: record human demonstrations to a file the learner can be seeded with (--demos)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hilrl.deploy.configtools import opt


@dataclass
class RecordConfig:
    output: Path = opt(Path("demos.zarr"), "recording to create (refuses to overwrite)")
    env: str = opt("sim", "what to record on: 'sim' (the scripted expert is the human)")
    episodes: int = opt(20, "demonstration episodes to record")
    seed: int | None = opt(0, "seed of the sim and of the scripted human")
    demo_noise: float = opt(0.1, "std of the noise the scripted human adds (sim only)")


def record(cfg: RecordConfig) -> int:
    from hilrl.actor.envs import make_env
    from hilrl.actor.loop import Decision, run_episode
    from hilrl.actor.policy_runner import PolicyRunner
    from hilrl.buffers.recording import StepRecorder

    env, human = make_env(cfg.env, cfg.seed, cfg.demo_noise)
    clamp = PolicyRunner(env.spec, 0.0, np.random.default_rng(cfg.seed)).clamp
    successes = steps = 0
    with StepRecorder(cfg.output, env.spec) as recorder:
        for episode in tqdm(range(cfg.episodes), desc="recording", unit="ep"):
            obs = env.reset()
            human.reset(demonstrating=True)
            result = run_episode(env, obs, lambda o, t: Decision(clamp(human.action(o)), human=True), episode,
                                 record=recorder.add)
            successes += int(result.success)
            steps += result.steps
    env.close()
    print(json.dumps({"output": str(cfg.output), "episodes": cfg.episodes, "steps": steps,
                      "success_rate": successes / max(cfg.episodes, 1)}))
    return 0
