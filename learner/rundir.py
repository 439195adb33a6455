"""The learner's output folder (`--output-dir`): the one place that knows where each of its files lives.

    run.json                   the run id; its presence means a run lives here (--resume continues it)
    spec.json                  the observation/action spec the learner adopted
    store/                     the durable buffer store (buffers/store.py)
    store/log/                 the ingest log: batches acknowledged but not stored yet (learner/ingest.py)
    learner.json               address and pid of the serving learner (written once it listens)
    learner_state.json         stage, update counters, normalisation, actor records
    policy.safetensors         the newest published weights (its metadata carries the policy config)
    weights_version.json       the newest published weight version
    weights/vNNNNNN.safetensors  the last --keep-weight-versions published weights
    checkpoints/step-NNNNNNNNN/  full training state (TD3's files) once it holds a DONE marker
    tensorboard/               TensorBoard event files (W&B, when enabled, writes under wandb/)

The learner (`learner/core.py`, `learner/training.py`, `learner/server.py`) and every reader
(`hilrl eval`, `hilrl plot-q`, `hilrl dataset`, `hilrl demo`, the actor's `--checkpoint`) go through
`RunDir`; nothing else spells these names. It also reads and writes the small records (run.json,
spec.json, weights_version.json, the published weight files); the store and the checkpoints write their own.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hilrl.buffers.durable import atomic_write, link_replace
from hilrl.buffers.spec import Spec

POLICY_FILE = "policy.safetensors"
DONE = "DONE"  # a checkpoint directory is complete once it holds this marker


@dataclass(frozen=True)
class RunDir:
    """Every path of one learner output folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def run_marker(self) -> Path:
        return self.root / "run.json"

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def address(self) -> Path:
        return self.root / "learner.json"

    @property
    def state(self) -> Path:
        return self.root / "learner_state.json"

    @property
    def policy(self) -> Path:
        return self.root / POLICY_FILE

    @property
    def weights_version(self) -> Path:
        return self.root / "weights_version.json"

    @property
    def weight_history(self) -> Path:
        return self.root / "weights"

    def weight_file(self, version: int) -> Path:
        """The kept copy of published weight version `version`."""
        return self.weight_history / f"v{version:06d}.safetensors"

    def weight_files(self) -> list[Path]:
        """The kept published weights, oldest first."""
        return sorted(self.weight_history.glob("v*.safetensors"))

    def read_run_id(self) -> str | None:
        """The id of the run that lives here; None: none yet."""
        return json.loads(self.run_marker.read_text())["run_id"] if self.run_marker.exists() else None

    def start_run(self) -> str:
        """A new run here: its id, written to run.json (the folder is created if needed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
        atomic_write(self.run_marker, json.dumps({"run_id": run_id}).encode())
        return run_id

    def read_spec(self) -> Spec | None:
        """The spec this run adopted; None: none yet."""
        return Spec.from_dict(json.loads(self.spec.read_text())) if self.spec.exists() else None

    def write_spec(self, spec: Spec) -> None:
        atomic_write(self.spec, json.dumps(spec.to_dict(), indent=2).encode())

    def read_published(self) -> tuple[int, bytes] | None:
        """The newest published weight version and the policy file's bytes (b"" if missing); None: none yet."""
        if not self.weights_version.exists():
            return None
        version = json.loads(self.weights_version.read_text())["version"]
        return version, self.policy.read_bytes() if self.policy.exists() else b""

    def write_weights_version(self, version: int) -> None:
        atomic_write(self.weights_version, json.dumps({"version": version}).encode())

    def write_weights(self, version: int, data: bytes, keep: int) -> None:
        """The policy file and the kept copy of weight version `version`; copies older than the newest `keep`
        are removed."""
        self.weight_history.mkdir(exist_ok=True)
        atomic_write(self.weight_file(version), data)
        link_replace(self.weight_file(version), self.policy)
        for old in self.weight_files()[: -keep]:
            old.unlink(missing_ok=True)

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        """The checkpoint directory of learner step `step`."""
        return self.checkpoints / f"step-{step:09d}"

    def checkpoint_tmp(self, step: int) -> Path:
        """Where the checkpoint of `step` is written before it is renamed into place."""
        return self.checkpoints / f".tmp-{self.checkpoint(step).name}"

    def complete_checkpoints(self) -> list[Path]:
        """The checkpoint directories that hold their DONE marker, oldest first (incomplete ones are ignored)."""
        return sorted(p.parent for p in self.checkpoints.glob(f"step-*/{DONE}"))

    def latest_checkpoint(self) -> Path | None:
        done = self.complete_checkpoints()
        return done[-1] if done else None

    def checkpoint_state(self) -> Path | None:
        """The learner state saved inside the latest complete checkpoint (None when there is none)."""
        latest = self.latest_checkpoint()
        return None if latest is None else latest / self.state.name

    def read_state(self) -> dict | None:
        """The newest saved learner state (by learner step): learner_state.json or the latest checkpoint's copy
        (newer after a kill between renaming the checkpoint into place and replacing the run's file); None: none."""
        states = [json.loads(p.read_text()) for p in (self.state, self.checkpoint_state())
                  if p is not None and p.exists()]
        return max(states, key=lambda st: st["learner_step"]) if states else None

    def write_state(self, state: dict, path: Path | None = None) -> None:
        """learner_state.json, or its copy at `path` (inside a checkpoint that is being written)."""
        atomic_write(path or self.state, json.dumps(state, indent=2).encode())

    @staticmethod
    def is_complete(checkpoint: Path) -> bool:
        return (checkpoint / DONE).exists()

    @staticmethod
    def mark_complete(checkpoint: Path) -> None:
        """Write the DONE marker into a finished (not yet renamed) checkpoint directory."""
        (checkpoint / DONE).write_text("complete\n")


def resolve_policy_file(path: Path) -> Path:
    """`path` itself if it is a policy file, else the published policy of the learner output folder `path`;
    exits with a message naming both choices when there is none."""
    candidate = RunDir(path).policy if path.is_dir() else path
    if not candidate.exists():
        raise SystemExit(f"no policy at {candidate}: give a learner --output-dir that has published weights, "
                         "or a policy .safetensors file")
    return candidate
