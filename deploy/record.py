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
    from hilrl.actor.loop import PolicyRunner
    from hilrl.buffers.assembler import Step
    from hilrl.buffers.recording import StepRecorder

    env, human = make_env(cfg.env, cfg.seed, cfg.demo_noise)
    clamp = PolicyRunner(env.spec, 0.0, np.random.default_rng(cfg.seed)).clamp
    successes = steps = 0
    with StepRecorder(cfg.output, env.spec) as recorder:
        for episode in tqdm(range(cfg.episodes), desc="recording", unit="ep"):
            obs, done, t = env.reset(), False, 0
            human.reset(demonstrating=True)
            while not done:
                action = clamp(human.action(obs))
                next_obs, reward, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                recorder.add(Step(obs, action, reward, terminated, truncated, True, episode, t,
                                  next_obs if done else None))
                obs, t = next_obs, t + 1
            successes += int(info.get("success", False))
            steps += t
    env.close()
    print(json.dumps({"output": str(cfg.output), "episodes": cfg.episodes, "steps": steps,
                      "success_rate": successes / max(cfg.episodes, 1)}))
    return 0
