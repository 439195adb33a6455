"""Residual mode on the actor: run the frozen base policy and put its action into every observation.

`ResidualBaseEnv` wraps any env of the actor (sim or real arm): each observation it returns carries the
extra float32 feature ``base_action`` = ``base(obs)``, and its spec declares it, so the handshake tells
the learner (which refuses a mismatch) and every stored transition holds ``base(s)`` and ``base(s')``.
The learner's `ResidualActor` (learner/networks.py) adds the bounded correction to that base; the actor
loop itself is unchanged: it runs whatever `Policy` the learner publishes.

Bases (``--residual-base``):

* ``expert``: the sim's scripted expert (hardware/expert.py), noise-free, with ``--residual-bias`` as a
  fixed xyz offset (the study's miscalibrated base).
* ``checkpoint:PATH``: one of our own policies (a learner --output-dir or a policy .safetensors file),
  loaded locally and never trained.

* ``lerobot:PATH``: a LeRobot ACT/Diffusion ``pretrained_model`` directory, run through LeRobot's own
  classes with its action-chunk queue (`hilrl.actor.lerobot_base`); its action must be in this env's
  action units. A step that is not the policy's (a takeover, a hold) drops the rest of its chunk
  (`ResidualBaseEnv.drop_plan`, called by the actor loop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from hilrl.buffers.spec import Feature, Spec, state_vector
from hilrl.hardware.arm import Arm, EndEffector
from hilrl.learner.residual import BASE_ACTION

if TYPE_CHECKING:
    from hilrl.actor.replay import ReplaySource

Base = Callable[[dict[str, np.ndarray]], np.ndarray]


class ResidualOptions(Protocol):
    """The ``--residual-base*`` options `residual_env` reads (`ActorConfig` and `EvalConfig` both have them)."""

    env: str
    residual_base: str | None
    residual_bias: tuple[float, ...]
    residual_base_map: tuple[str, ...]
    residual_base_device: str | None


class ResidualBaseEnv(Arm):
    """The `Arm` ``env`` with ``base_action`` added to every observation (reset, step and the final observation).

    Its surface is the `Arm` protocol (hardware/arm.py) and `drop_plan`, nothing more: the arm's other
    attributes (a sim's ``scene``, a real arm's ``cameras``, ...) are not forwarded; reach them on ``env``.
    """

    def __init__(self, env: Arm, base: Base, reset_base: Callable[[], None] | None = None) -> None:
        if BASE_ACTION in env.spec.observation_names:
            raise ValueError(f"the environment already has an observation feature {BASE_ACTION!r}")
        self.env = env
        self.base = base
        self.reset_base = reset_base
        a = env.spec.action
        self.low, self.high = np.asarray(a.low, np.float32), np.asarray(a.high, np.float32)
        feature = Feature(BASE_ACTION, "float32", a.shape, a.low, a.high)
        self.spec = replace(env.spec, observation=(*env.spec.observation, feature))

    @property
    def needs_go(self) -> bool:  # type: ignore[override]
        return self.env.needs_go

    def hold_action(self) -> np.ndarray:
        return self.env.hold_action()

    def end_effector(self) -> EndEffector | None:
        return self.env.end_effector()

    def joint_limits(self) -> tuple[np.ndarray, np.ndarray] | None:
        return self.env.joint_limits()

    def _with_base(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        action = np.asarray(self.base(obs), dtype=np.float32).reshape(self.low.shape)
        if not np.all(np.isfinite(action)):
            raise ValueError(f"the residual base produced a non-finite action {action}")
        return {**obs, BASE_ACTION: np.clip(action, self.low, self.high)}

    def drop_plan(self) -> None:
        """The step about to run is not the policy's: a chunked base re-plans from the next observation."""
        drop = getattr(self.base, "drop_plan", None)
        if drop is not None:
            drop()

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        obs = self.env.reset(seed=seed)
        if self.reset_base is not None:
            self.reset_base()
        return self._with_base(obs)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._with_base(obs), reward, terminated, truncated, info

    def close(self) -> None:
        self.env.close()


def make_base(name: str, env_spec: Spec, bias: tuple[float, ...] = (), base_map: tuple[str, ...] = (),
              device: str | None = None) -> tuple[Base, Callable[[], None] | None]:
    """``(base, reset)`` for ``--residual-base``: ``expert``, ``checkpoint:PATH`` or ``lerobot:PATH`` (see the
    module docstring; ``base_map`` and ``device`` are ``--residual-base-map`` / ``--residual-base-device``)."""
    if (base_map or device) and not name.startswith("lerobot:"):
        raise SystemExit("--residual-base-map and --residual-base-device are for --residual-base lerobot:PATH")
    if name.startswith("lerobot:"):
        from hilrl.actor.lerobot_base import LeRobotBase, LeRobotBaseError

        try:
            base = LeRobotBase(Path(name.removeprefix("lerobot:")), env_spec, base_map, device)
        except LeRobotBaseError as exc:
            raise SystemExit(f"--residual-base {name}: {exc}") from exc
        return base, base.reset
    if name == "expert":
        from hilrl.hardware.expert import ScriptedExpert

        expert = ScriptedExpert(noise=0.0, bias=bias)
        return expert.act, expert.reset
    if name.startswith("checkpoint:"):
        from hilrl.learner.networks import load_policy_file
        from hilrl.learner.rundir import resolve_policy_file

        try:
            policy = load_policy_file(resolve_policy_file(Path(name.removeprefix("checkpoint:"))))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--residual-base {name}: {exc}") from exc
        cfg = policy.cfg
        if cfg.state_dim != env_spec.state_dim or cfg.action_dim != env_spec.action_dim or cfg.cameras:
            raise SystemExit(f"--residual-base {name}: the policy is for a {cfg.state_dim}-d state / "
                             f"{cfg.action_dim}-d action{' with cameras' if cfg.cameras else ''}, the env gives "
                             f"{env_spec.state_dim} / {env_spec.action_dim} (state-only bases are supported)")

        @torch.no_grad()
        def run(obs: dict[str, np.ndarray]) -> np.ndarray:
            return policy(torch.from_numpy(state_vector(obs, env_spec)).unsqueeze(0))[0].numpy()

        return run, None
    raise SystemExit(f"unknown --residual-base {name!r}; use expert, checkpoint:PATH or lerobot:PATH")


def residual_env(env: Arm | ReplaySource, cfg: ResidualOptions) -> ResidualBaseEnv:
    """The actor's env wrapped for ``cfg.residual_base``; replays and bad bases are refused (SystemExit, env closed)."""
    from hilrl.actor.replay import ReplaySource

    if isinstance(env, ReplaySource):
        env.close()
        raise SystemExit("--residual-base: a replayed recording already holds its observations; "
                         "drop --residual-base with --env replay:PATH")
    if cfg.residual_bias and (cfg.residual_base != "expert" or len(cfg.residual_bias) != 3):
        env.close()
        raise SystemExit(f"--residual-bias {list(cfg.residual_bias)}: give three values DX,DY,DZ, and only with "
                         "--residual-base expert")
    if cfg.residual_base == "expert" and cfg.env in ("so101", "so100"):
        env.close()
        raise SystemExit("--residual-base expert is the sim's scripted expert; on a real arm use "
                         "--residual-base checkpoint:PATH or lerobot:PATH")
    if cfg.residual_base is None:
        env.close()
        raise SystemExit("residual_env needs --residual-base")
    try:
        base, reset = make_base(cfg.residual_base, env.spec, tuple(cfg.residual_bias), tuple(cfg.residual_base_map),
                                cfg.residual_base_device)
    except SystemExit:
        env.close()
        raise
    return ResidualBaseEnv(env, base, reset)
