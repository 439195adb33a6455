"""A LeRobot policy (ACT, Diffusion) as the frozen base of residual mode: ``--residual-base lerobot:PATH``.

``PATH`` is the ``pretrained_model`` directory ``lerobot-train`` writes (``config.json``,
``model.safetensors``, ``policy_preprocessor.json`` / ``policy_postprocessor.json`` and their state
files). Everything is loaded from that directory through LeRobot's own classes (`get_policy_class(...)
.from_pretrained`, `make_pre_post_processors`) with the hub switched off, and run as ``lerobot-record``
runs a policy: observation -> `prepare_observation_for_inference` -> preprocessor -> `select_action`
(ACT's ``n_action_steps`` queue, Diffusion's observation/action queues) -> postprocessor. `reset`
empties the queues (episode start); `drop_plan` does the same when a step is not the policy's (a
takeover, a hold), so the base re-plans from the observation it sees when the policy resumes.

Inputs: each of the policy's ``input_features`` is filled from one hilrl observation feature. The
default name of ``observation.X`` / ``observation.images.X`` is ``X``, and ``observation.state`` is the
robot's own state, ``state``, else ``joint_pos`` (real arm), else ``agent_pos`` (sim): what ``hilrl
dataset export`` writes, inverted. ``--residual-base-map KEY=NAME`` overrides any of them. Every input must exist
with the policy's shape (images: hilrl's ``(H, W, 3)`` uint8 is the policy's ``(3, H, W)``), and the
policy's ``action`` must have the actor's action shape; one error lists every problem.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hilrl.buffers.lerobot_io import STATE, robot_state
from hilrl.buffers.spec import Feature, Spec

SUPPORTED_TYPES = ("act", "diffusion")  # run and tested as bases; the VLA types need the hub and a task string
REQUIRED_FILES = ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json")


class LeRobotBaseError(ValueError):
    """The policy directory cannot be the base of this actor; the message says what to change."""


def parse_map(entries: tuple[str, ...]) -> dict[str, str]:
    """``("observation.state=joint_pos", ...)`` -> ``{policy key: hilrl name}``."""
    out: dict[str, str] = {}
    for entry in entries:
        key, sep, name = entry.partition("=")
        if not (key and sep and name):
            raise LeRobotBaseError(f"--residual-base-map entry {entry!r}: expected POLICY_KEY=HILRL_NAME, "
                                   "e.g. observation.state=joint_pos")
        out[key.strip()] = name.strip()
    return out


def default_name(key: str, names: set[str]) -> str:
    """hilrl feature name for a policy input key when no ``--residual-base-map`` entry names one."""
    short = key.removeprefix("observation.images.").removeprefix("observation.")
    if key == STATE:  # the robot's own state, as `hilrl dataset export` writes it
        return robot_state(names) or short
    return short


def _expected(ft: Any) -> tuple[tuple[int, ...], str]:
    """(hilrl shape, dtype) an input of this LeRobot feature type and shape must come from."""
    shape = tuple(int(d) for d in ft.shape)
    if ft.type.name == "VISUAL":
        if len(shape) != 3:
            raise LeRobotBaseError(f"image input of shape {list(shape)}: expected (channels, height, width)")
        return (shape[1], shape[2], shape[0]), "uint8"
    return shape, "float32"


def map_inputs(input_features: dict[str, Any], spec: Spec, entries: tuple[str, ...]) -> dict[str, Feature]:
    """``{policy key: hilrl feature}`` for every policy input; one error naming every missing/mismatched one."""
    explicit = parse_map(entries)
    features = {f.name: f for f in spec.observation}
    problems = [f"--residual-base-map names {k!r}, which is not an input of the policy" for k in explicit
                if k not in input_features]
    mapped: dict[str, Feature] = {}
    for key, ft in input_features.items():
        if ft.type.name not in ("STATE", "ENV", "VISUAL"):
            problems.append(f"input {key!r} of type {ft.type.name} (only state, environment state and images "
                            "are supported)")
            continue
        name = explicit.get(key) or default_name(key, set(features))
        shape, dtype = _expected(ft)
        have = features.get(name)
        if have is None:
            problems.append(f"input {key!r} ({dtype}{list(shape)}) has no hilrl observation {name!r}")
        elif (have.shape or (1,)) != shape or (dtype == "uint8") != have.is_image:
            problems.append(f"input {key!r} needs {dtype}{list(shape)}, hilrl observation {name!r} is "
                            f"{have.describe()}")
        else:
            mapped[key] = have
    if problems:
        offered = ", ".join(f.describe() for f in spec.observation)
        raise LeRobotBaseError("; ".join(problems) + f". The actor observes: {offered}. Name the hilrl feature "
                               "of each input with --residual-base-map POLICY_KEY=NAME[,...]; cameras arrive "
                               "cropped and resized to 128x128, so the policy must be trained at that resolution "
                               "(docs/residual.md)")
    return mapped


def check_directory(path: Path) -> dict:
    """The policy's ``config.json`` (as a dict) after checking the directory holds what lerobot-train writes."""
    if not path.is_dir():
        raise LeRobotBaseError(f"{path} is not a directory: give the pretrained_model directory lerobot-train "
                               "wrote (outputs/train/<run>/checkpoints/<step>/pretrained_model)")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        hint = ""
        for nested in ("pretrained_model", "checkpoints/last/pretrained_model"):
            if (path / nested / "config.json").is_file():
                hint = f"; did you mean {path / nested}?"
        raise LeRobotBaseError(f"{path} is not a LeRobot policy directory: {', '.join(missing)} missing (it has "
                               f"{sorted(p.name for p in path.iterdir())[:12]}){hint}")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise LeRobotBaseError(f"{path / 'config.json'}: not readable JSON ({exc})") from exc
    kind = config.get("type") if isinstance(config, dict) else None
    if kind not in SUPPORTED_TYPES:
        raise LeRobotBaseError(f"{path}: policy type {kind!r} cannot be a residual base here; supported: "
                               f"{', '.join(SUPPORTED_TYPES)} (the vision-language types need the hub and a task)")
    return config


def choose_device(config_device: str | None, override: str | None) -> str:
    """The device to run on: ``override`` or the config's; an error when this machine does not have it."""
    device = override or config_device or "cpu"
    kind = device.split(":")[0]
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if kind not in available:
        raise LeRobotBaseError(f"device {device!r}: expected cpu, cuda[:N] or mps")
    if not available[kind]:
        where = "--residual-base-device" if override else "its config.json"
        raise LeRobotBaseError(f"the policy is to run on {device!r} ({where}), which this machine does not have; "
                               f"run it on the CPU with --residual-base-device cpu")
    return device


def check_action_range(stats: dict, spec: Spec, tolerance: float = 0.05) -> None:
    """The training data's action range (the postprocessor's ``action`` min/max) must lie within the actor's
    action bounds, give or take ``tolerance`` of each range: otherwise the units differ."""
    low, high = np.asarray(spec.action.low, np.float64), np.asarray(spec.action.high, np.float64)
    if "min" not in stats or "max" not in stats or not low.size:
        return
    lo = np.asarray(stats["min"], np.float64).reshape(-1)
    hi = np.asarray(stats["max"], np.float64).reshape(-1)
    slack = tolerance * (high - low)
    bad = [i for i in range(low.size) if lo[i] < low[i] - slack[i] or hi[i] > high[i] + slack[i]]
    if bad:
        ranges = "; ".join(f"entry {i}: trained on [{lo[i]:.4g}, {hi[i]:.4g}], the actor allows [{low[i]:.4g}, "
                           f"{high[i]:.4g}]" for i in bad)
        raise LeRobotBaseError(f"the policy's actions are not in this actor's units ({ranges}): joint targets need "
                               "--action-mode joint and degrees (lerobot's use_degrees=true), [dx, dy, dz, g] "
                               "needs --action-mode ee (docs/residual.md)")


class LeRobotBase:
    """``base(obs) -> action`` for `ResidualBaseEnv`, with ``reset`` (episode start) and ``drop_plan``."""

    def __init__(self, path: str | Path, spec: Spec, mapping: tuple[str, ...] = (), device: str | None = None
                 ) -> None:
        path = Path(path)
        config = check_directory(path)
        self.device = choose_device(config.get("device"), device)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory only; never the hub
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        overrides = [f"--device={self.device}"]
        if config.get("pretrained_backbone_weights"):  # torchvision would download ImageNet weights that
            overrides.append("--pretrained_backbone_weights=null")  # model.safetensors overwrites anyway
        try:
            cfg = PreTrainedConfig.from_pretrained(path, cli_overrides=overrides)
        except Exception as exc:  # draccus reports a malformed config in many ways
            raise LeRobotBaseError(f"{path / 'config.json'}: LeRobot cannot parse it: {exc}") from exc
        self.inputs = map_inputs(cfg.input_features, spec, mapping)
        action = cfg.output_features.get("action")
        if action is None or tuple(action.shape) != spec.action.shape:
            got = list(action.shape) if action is not None else None
            raise LeRobotBaseError(
                f"the policy's action has shape {got}, the actor's is {list(spec.action.shape)} "
                f"({spec.action.describe()}): a joint-space policy needs --action-mode joint on the arm, an "
                "end-effector one [dx, dy, dz, g] needs --action-mode ee (docs/residual.md)")
        try:  # (lerobot prints "Loading weights ..." on stdout, which carries the actor's JSON summary)
            with contextlib.redirect_stdout(sys.stderr):
                self.policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg, strict=True)
            self.pre, self.post = make_pre_post_processors(
                cfg, pretrained_path=str(path),
                preprocessor_overrides={"device_processor": {"device": self.device}})
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise LeRobotBaseError(f"{path}: LeRobot could not load the policy: {exc}") from exc
        unnormalizer = next((st for st in self.post.steps if isinstance(getattr(st, "stats", None), dict)), None)
        if unnormalizer is not None:
            check_action_range(unnormalizer.stats.get("action", {}), spec)
        self.path = path
        self.type = cfg.type
        self.n_action_steps = int(getattr(cfg, "n_action_steps", 1))

    @torch.inference_mode()
    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        from lerobot.policies.utils import prepare_observation_for_inference

        frame = {key: np.asarray(obs[f.name], dtype=np.uint8 if f.is_image else np.float32).reshape(
            f.shape if f.is_image else (-1,)) for key, f in self.inputs.items()}
        batch = self.pre(prepare_observation_for_inference(frame, torch.device(self.device)))
        action = self.post(self.policy.select_action(batch))
        return action.reshape(-1).to("cpu", torch.float32).numpy()

    def reset(self) -> None:
        """Empty the policy's queues (``PreTrainedPolicy.reset``): a new episode."""
        self.policy.reset()

    def drop_plan(self) -> None:
        """A step that was not the policy's (takeover, hold): the rest of its action chunk is stale."""
        self.policy.reset()

    def describe(self) -> str:
        inputs = ", ".join(f"{k} <- {f.name}" for k, f in self.inputs.items())
        return f"LeRobot {self.type} from {self.path} on {self.device} ({inputs}; {self.n_action_steps} steps/chunk)"
