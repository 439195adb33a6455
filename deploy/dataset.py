"""`hilrl dataset export|import`: LeRobotDataset <-> hilrl stores and recordings (see docs/datasets.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hilrl.buffers.lerobot_io import LeRobotMapping
from hilrl.deploy.configtools import opt


@dataclass
class DatasetConfig:
    action: Literal["export", "import"] = field(metadata={"help": "what to do (also the first word: "
                                                                  "`hilrl dataset export ...`)"})
    store: Path | None = opt(None, "export: a learner's buffer store (<output-dir>/store, or the output dir)")
    recording: Path | None = opt(None, "export: a step recording (hilrl record / actor --record)")
    dataset: Path | None = opt(None, "import: a LeRobotDataset root directory (with meta/info.json)")
    output: Path | None = opt(None, "export: the LeRobotDataset directory to create; import: the recording "
                                    "(.zarr) to create")
    source: Literal["human", "policy", "all"] = opt("all", "export: the human steps (demos + takeovers), the "
                                                           "policy's own steps, or whole episodes")
    fps: int = opt(10, "export: frames per second written into the dataset (the actor's --fps)")
    task: str = opt("hilrl", "export: the task string of every frame")
    map: LeRobotMapping = field(default_factory=LeRobotMapping,
                                metadata={"help": "import: dataset feature -> hilrl feature mapping"})


def _items_of(cfg: DatasetConfig):
    """(spec, (source, step) stream, discarded episodes) of the export input."""
    from hilrl.buffers.recording import read_steps
    from hilrl.buffers.store import read_store
    from hilrl.learner.rundir import RunDir

    if (cfg.store is None) == (cfg.recording is None):
        raise SystemExit("hilrl dataset export: give exactly one of --store DIR or --recording PATH")
    if cfg.recording is not None:
        spec, steps = read_steps(cfg.recording)
        return spec, (("recording", s) for s in steps), set()
    path = Path(cfg.store)
    if not (path / "commit.json").exists() and (RunDir(path).store / "commit.json").exists():
        path = RunDir(path).store  # a learner output dir: its store
    spec, items, discarded = read_store(path)
    return spec, items, discarded


def run_dataset(cfg: DatasetConfig) -> int:
    from hilrl.buffers.lerobot_export import episodes_from_items, export_lerobot
    from hilrl.buffers.lerobot_io import import_lerobot
    from hilrl.buffers.recording import RecordingError, StepRecorder
    from hilrl.buffers.store import StoreError

    if cfg.output is None:
        raise SystemExit(f"hilrl dataset {cfg.action}: --output is required")
    try:
        if cfg.action == "export":
            spec, items, discarded = _items_of(cfg)
            runs = episodes_from_items(items, cfg.source, discarded)
            info = export_lerobot(runs, spec, cfg.output, fps=cfg.fps, task=cfg.task)
            print(json.dumps({**info, "source": cfg.source}))
            return 0
        if cfg.dataset is None:
            raise SystemExit("hilrl dataset import: --dataset DIR (a LeRobotDataset root) is required")
        from hilrl.buffers.joint_to_ee import EEReport

        ee_report = EEReport(cfg.map.ee_step_m) if cfg.map.to_ee else None
        spec, steps = import_lerobot(cfg.dataset, cfg.map, ee_report=ee_report)
        n = episodes = 0
        with StepRecorder(cfg.output, spec) as rec:
            for step in steps:
                rec.add(step)
                n += 1
                episodes += int(step.final_obs is not None)
        ee = {"ee_conversion": ee_report.summary()} if ee_report is not None else {}
        print(json.dumps({"output": str(cfg.output), "episodes": episodes, "steps": n,
                          "spec": spec.to_dict(), **ee}))
        return 0
    except (RecordingError, StoreError, FileExistsError, ValueError) as exc:
        raise SystemExit(f"hilrl dataset {cfg.action}: {exc}") from exc
