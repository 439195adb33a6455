"""`hilrl eval`: run a trained policy with no exploration noise and no takeover, print one JSON object."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hilrl.deploy.configtools import opt
from hilrl.learner.rundir import resolve_policy_file


@dataclass
class EvalConfig:
    checkpoint: Path = opt(Path("hilrl-runs/learner"), "a learner --output-dir (its newest policy.safetensors) "
                                                       "or a policy .safetensors file")
    env: str = opt("sim", "where to evaluate: 'sim' (gym-hil Panda pick-cube, random block positions)")
    episodes: int = opt(50, "evaluation episodes")
    seed: int = opt(10_000, "seed of the block positions (same seed = same positions for every policy)")
    residual_base: str | None = opt(None, "a residual policy's frozen base, as the actor ran it: 'expert', "
                                          "'checkpoint:PATH' or 'lerobot:PATH' (see hilrl actor --help)")
    residual_base_map: tuple[str, ...] = opt((), "--residual-base lerobot:PATH: POLICY_KEY=HILRL_NAME input "
                                                 "mapping, as the actor ran it")
    residual_base_device: str | None = opt(None, "--residual-base lerobot:PATH: device to run the base on")
    residual_bias: tuple[float, ...] = opt((), "--residual-base expert: the fixed DX,DY,DZ offset it was run with")


def run_eval(cfg: EvalConfig) -> int:
    from hilrl.actor.envs import make_env
    from hilrl.actor.evaluate import evaluate
    from hilrl.learner.networks import load_policy_file

    policy_file = resolve_policy_file(cfg.checkpoint)
    policy = load_policy_file(policy_file)
    residual = policy.cfg.residual_scale > 0
    if residual != bool(cfg.residual_base):
        raise SystemExit(f"{policy_file} is a residual policy: add --residual-base (the base it was trained on)"
                         if residual else "--residual-base is only for residual policies; drop it")
    env, _ = make_env(cfg.env, cfg.seed, 0.0, cameras=bool(policy.cfg.cameras),  # a camera policy needs images
                      image_size=policy.cfg.image_shape[0] if policy.cfg.cameras else 128)  # at its resolution
    if residual:  # its observations carry base(s), as on the actor
        from hilrl.actor.residual_base import residual_env

        env = residual_env(env, cfg)
    try:
        if env.spec.state_dim != policy.cfg.state_dim or env.spec.action_dim != policy.cfg.action_dim:
            raise SystemExit(f"{policy_file} expects state {policy.cfg.state_dim} / action {policy.cfg.action_dim}, "
                             f"--env {cfg.env} gives {env.spec.state_dim} / {env.spec.action_dim}")
        result = evaluate(policy, env, cfg.episodes, seed=cfg.seed)
    finally:
        env.close()
    print(json.dumps({"checkpoint": str(policy_file), **result}))
    return 0
