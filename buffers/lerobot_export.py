"""LeRobotDataset export: hilrl steps (a buffer store, a recording) -> a local LeRobotDataset.

Each episode's frames, then one extra frame holding the observation *after* its last step
(``complementary_info.is_final_observation`` = true, zero action and reward): lerobot's tools see an
ordinary dataset, and :func:`hilrl.buffers.lerobot_io.import_lerobot` turns that frame back into
the final observation (export -> import is bit-exact). The robot's own state (``joint_pos`` on an
arm, ``agent_pos`` on the sim, see `robot_state`) is written as LeRobot's ``observation.state``, any other
state feature X as ``observation.X``, cameras as ``observation.images.X``: a policy that ``lerobot-train``
trains on the export reads the names a real arm's LeRobot pipeline uses. ``meta/hilrl.json`` keeps our
spec and the renaming (``names``: dataset key -> our name), so the import gives our names back.
Exporting one side of the dual buffer writes every maximal run of that side's steps as an episode of
its own.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from hilrl.buffers.assembler import Discard, Step, episode_runs
from hilrl.buffers.lerobot_io import FINAL, IMAGES, META, STATE, Side, robot_state
from hilrl.buffers.spec import Spec


def episodes_from_items(items: Iterable[tuple[str, Step | Discard]], side: Side = "all",
                        discarded: set[tuple[str, int]] | None = None) -> Iterator[list[Step]]:
    """Closed runs of steps (each step's successor is the next one, the last carries final_obs).

    `items` is a (source, step) stream in arrival order (sources may interleave). Discarded
    episodes are left out; a run without an end (the actor restarted, or the episode is still going)
    loses its last step, whose observation becomes the final observation of the one before, exactly
    as the learner's assembler does. `side` keeps only human (is_intervention) or policy runs.
    """
    discarded = set(discarded or ())
    held: dict[int, Step] = {}  # the steps of the runs not over yet, by position
    position = itertools.count()

    def keys() -> Iterator[tuple[str, int, int, bool]]:
        for source, item in items:
            if isinstance(item, Discard):
                discarded.add((source, item.episode))
                continue
            held[next(position)] = item
            yield source, item.episode, item.step, item.terminated or item.truncated

    for source, positions, _ in episode_runs(keys()):
        run = [held.pop(i) for i in positions]
        if (source, run[-1].episode) in discarded:
            continue
        last = run[-1]
        if last.final_obs is None or not (last.terminated or last.truncated):
            if len(run) < 2:
                continue
            run = run[:-1]
            run[-1] = _copy(run[-1], final_obs=last.obs, truncated=True)
        yield from _split(run, side)


def _copy(step: Step, **changes: object) -> Step:
    values = {**step.__dict__, **changes}
    return Step(**values)


def _split(run: list[Step], side: Side) -> Iterator[list[Step]]:
    if side == "all":
        yield run
        return
    want = side == "human"
    start = 0
    for i in range(1, len(run) + 1):
        if i == len(run) or run[i].is_intervention != run[start].is_intervention:
            if run[start].is_intervention == want:
                part = run[start:i]
                if i < len(run):  # the other side took over: its first observation ends this run
                    part[-1] = _copy(part[-1], final_obs=run[i].obs, terminated=False, truncated=True)
                yield part
            start = i


def state_keys(spec: Spec) -> dict[str, str]:
    """Our state feature name -> its dataset key: the robot's own state is ``observation.state``."""
    own = robot_state(f.name for f in spec.state_features)
    return {f.name: STATE if f.name == own else f"observation.{f.name}" for f in spec.state_features}


def lerobot_features(spec: Spec) -> dict[str, dict]:
    """LeRobotDataset features for our spec (images as PNG ``image`` features; no video codec needed)."""
    feats: dict[str, dict] = {}
    keys = state_keys(spec)
    for f in spec.state_features:
        feats[keys[f.name]] = {"dtype": f.dtype, "shape": f.shape or (1,), "names": None}
    for f in spec.image_features:
        feats[f"{IMAGES}{f.name}"] = {"dtype": "image", "shape": f.shape, "names": ["height", "width", "channels"]}
    feats["action"] = {"dtype": "float32", "shape": (spec.action_dim,), "names": None}
    for key, dtype in (("next.reward", "float32"), ("next.done", "bool"), ("next.truncated", "bool"),
                       ("complementary_info.is_intervention", "bool"), (FINAL, "bool")):
        feats[key] = {"dtype": dtype, "shape": (1,), "names": None}
    return feats


def export_lerobot(episodes: Iterable[list[Step]], spec: Spec, output: str | Path, fps: int = 10,
                   task: str = "", repo_id: str | None = None) -> dict:
    """Write closed step runs (see `episodes_from_items`) as a LeRobotDataset at `output` (must not exist)."""
    output = Path(output)
    if output.exists():
        raise FileExistsError(f"{output} already exists; choose a new --output directory")
    runs = iter(episodes)
    first = next(runs, None)
    if first is None:
        raise ValueError("nothing to export: no complete run of steps of the chosen --source")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset.create(repo_id or f"local/{output.name}", fps=fps, features=lerobot_features(spec),
                               root=output, use_videos=False)
    n_episodes = n_steps = 0
    keys = state_keys(spec)

    def frame(obs: dict[str, np.ndarray], action: np.ndarray, reward: float, done: bool, truncated: bool,
              human: bool, final: bool) -> dict:
        out: dict = {keys[f.name]: np.asarray(obs[f.name], dtype=f.dtype).reshape(f.shape or (1,))
                     for f in spec.state_features}
        out.update({f"{IMAGES}{f.name}": np.asarray(obs[f.name], dtype=np.uint8) for f in spec.image_features})
        out.update({"action": np.asarray(action, dtype=np.float32), "next.reward": np.array([reward], np.float32),
                    "next.done": np.array([done]), "next.truncated": np.array([truncated]),
                    "complementary_info.is_intervention": np.array([human]), FINAL: np.array([final]),
                    "task": task})
        return out

    try:
        for run in itertools.chain([first], runs):
            for s in run:
                ds.add_frame(frame(s.obs, s.action, s.reward, s.terminated or s.truncated, s.truncated,
                                   s.is_intervention, False))
            last = run[-1]
            assert last.final_obs is not None
            ds.add_frame(frame(last.final_obs, np.zeros(spec.action_dim, np.float32), 0.0,
                               last.terminated or last.truncated, last.truncated, last.is_intervention, True))
            ds.save_episode()
            n_episodes += 1
            n_steps += len(run)
    finally:
        ds.finalize()
    names = {key: name for name, key in keys.items() if key != f"observation.{name}"}
    (output / META).write_text(json.dumps({"format": "hilrl-lerobot-export", "version": 1,
                                           "spec": spec.to_dict(), "names": names}, indent=2))
    return {"output": str(output), "episodes": n_episodes, "steps": n_steps, "frames": n_steps + n_episodes,
            "fps": fps}
