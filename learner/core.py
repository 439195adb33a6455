"""The learner's state: spec, dual buffer, actor records, stage, published weights.

Thread-safe; the gRPC service calls into it from many threads and the training loop
(`learner/training.py`) from one. Nothing here knows about protobuf.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.lerobot_io import read_demos
from hilrl.buffers.recording import RecordingError
from hilrl.buffers.replay import DualBuffer, EpisodeAssembler
from hilrl.buffers.spec import Spec, state_vector
from hilrl.buffers.store import BufferStore, StoreError, read_store
from hilrl.learner.actors import ActorTable, ReservedActorId
from hilrl.learner.config import LearnerConfig
from hilrl.learner.features import cached_feature_bytes
from hilrl.learner.ingest import Ingest
from hilrl.learner.memory import size_buffers
from hilrl.learner.networks import PolicyConfig, policy_config_for
from hilrl.learner.residual import residual_mismatch
from hilrl.learner.rundir import RunDir
from hilrl.learner.weights import WeightPublisher

log = logging.getLogger(__name__)

WAITING, OFFLINE, ONLINE = "waiting_for_demos", "offline", "online"
DATASET = "dataset:"  # store source prefix of seeded demonstration files (not actors)


class SpecMismatch(Exception):
    """An actor's spec differs from the learner's; the text names every difference."""


class LearnerCore:
    def __init__(self, cfg: LearnerConfig) -> None:
        if cfg.residual and (cfg.residual_scale <= 0 or cfg.chunk > 1):
            raise SystemExit(f"--residual needs --residual-scale > 0 (got {cfg.residual_scale}) and cannot be "
                             f"combined with --chunk {cfg.chunk} (one base action per observation)")
        self.cfg = cfg
        self.run_dir = RunDir(cfg.output_dir)
        mutex = threading.RLock()
        self.lock = threading.Condition(mutex)
        self.spec: Spec | None = None
        self.buffers: DualBuffer | None = None
        self.store: BufferStore | None = None
        self.assembler = EpisodeAssembler()
        self.actors = ActorTable()
        self.ingest = Ingest(self)  # dedup, the ingest log, acknowledgement, and the writer into store + buffers
        self.stage = WAITING
        self.learner_step = 0
        self.offline_steps_done = 0
        self.demo_episodes = 0
        self.episodes_ended = 0  # complete episodes of any kind (replayed on --resume too)
        self._demo_keys: set[int] = set()
        self.online_transitions = 0  # transitions received since the online stage began
        # Weight subscribers wait on the publisher's own condition (same mutex): a stored batch (notifying `lock`)
        # does not wake them, only a new stage, new weights or the shutdown do.
        self.weights = WeightPublisher(mutex, self.run_dir, cfg.keep_weight_versions, self)
        self.run_id = ""
        self.episode_events: list[dict] = []  # drained by the training loop for logging
        self.store_problem = ""  # why the newest append failed (disk full, ...); "" while storing works
        self.stopping = False

    # ------------------------------------------------------------------ start-up

    def open(self) -> None:
        """Prepare the output directory: a fresh run, or the previous one with --resume."""
        marker = self.run_dir.run_marker
        if marker.exists() and not self.cfg.resume:
            raise SystemExit(f"{self.run_dir.root} already holds a learner run; pass --resume to continue it, "
                             "or choose another --output-dir")
        if self.cfg.resume and not marker.exists():
            log.warning("--resume: no learner run in %s yet; starting a fresh one", self.run_dir.root)
        self.run_dir.root.mkdir(parents=True, exist_ok=True)
        self.run_id = self.run_dir.read_run_id() or self.run_dir.start_run()
        try:
            stored = self.run_dir.read_spec()
            if self.cfg.spec_file is not None:
                spec = Spec.from_dict(json.loads(Path(self.cfg.spec_file).read_text()))
                if stored is not None and (problem := stored.mismatch(spec)):
                    raise SystemExit(f"--spec-file {self.cfg.spec_file} differs from this run's {self.run_dir.spec}: "
                                     f"{problem}")
                self._adopt_spec(spec)
            elif stored is not None:
                self._adopt_spec(stored)
            elif (self.run_dir.store / "commit.json").exists():  # stopped between creating the store and spec.json
                self._adopt_spec(read_store(self.run_dir.store)[0])
        except (StoreError, ValueError, OSError) as exc:
            raise SystemExit(f"{self.run_dir.root}: cannot use the spec: {exc}") from exc
        if self.cfg.demos is not None and not self.cfg.resume:
            try:
                self.seed_demos(Path(self.cfg.demos))
            except RecordingError as exc:
                raise SystemExit(f"--demos: {exc}") from exc
        if self.cfg.resume:
            self.load_state()
            if self.store is not None:
                self.ingest.rebuild(DATASET)
                self.episode_events.clear()
                self.online_transitions = 0
        if (published := self.run_dir.read_published()) is not None:
            self.weights.restore(*published)

    def _adopt_spec(self, spec: Spec) -> None:
        if self.spec is not None:
            return
        human_capacity, policy_capacity = size_buffers(spec, self.cfg.human_capacity, self.cfg.policy_capacity,
                                                       cached_feature_bytes(spec, self.cfg))
        # All or nothing: the buffers, then the store, then spec.json (the run's record of its spec); a failure
        # on the way (StoreError: another spec's store is there; OSError: disk full, ...) leaves no spec adopted
        # and removes a store this call created, so the next Hello (or start) finds the learner as it was.
        buffers = DualBuffer(spec, human_capacity, policy_capacity)
        store_dir = self.run_dir.store
        fresh = not (store_dir / "commit.json").exists()
        store = None
        try:
            store = BufferStore(store_dir, spec,  # disk bounded by the buffer capacities
                                capacities=(human_capacity, policy_capacity))
            self.spec, self.buffers, self.store = spec, buffers, store  # the ingest log's recovery writes the store
            self.ingest.attach(store)
            self.run_dir.write_spec(spec)
        except BaseException:
            self.spec = self.buffers = self.store = None
            if fresh and store_dir.exists():
                (store_dir / "commit.json").unlink(missing_ok=True)  # the next BufferStore starts it over
            raise
        log.info("spec adopted: %s", "; ".join(f.describe() for f in (*spec.observation, spec.action)))

    def seed_demos(self, path: Path) -> int:
        """Load a demonstration recording into the store and the human buffer; returns its episodes."""
        spec, steps = read_demos(path, self.cfg.demo_map, like=self.spec)  # a recording or a LeRobotDataset
        if self.spec is None:
            self._adopt_spec(spec)
        elif problem := self.spec.mismatch(spec):
            raise SystemExit(f"--demos {path}: its spec does not match the learner's: {problem}")
        assert self.store is not None
        items: list[Step | Discard] = []
        for step in steps:
            step.is_intervention = True  # demonstrations are human data, whoever recorded them
            items.append(step)
        before = self.demo_episodes
        source = f"{DATASET}{path}"
        self.store.append(source, 1, items)
        with self.lock:
            self.ingest.apply(source, items, None)
        log.info("seeded the human buffer from %s: %d episodes, %d steps", path, self.demo_episodes - before,
                 len(items))
        return self.demo_episodes - before

    def policy_config(self) -> PolicyConfig:
        assert self.spec is not None
        cfg = policy_config_for(self.spec, tuple(self.cfg.hidden), self.cfg.encoder,  # cameras from the spec
                                residual_scale=self.cfg.residual_scale if self.cfg.residual else 0.0)
        return cfg if self.cfg.chunk == 1 else replace(cfg, chunk=self.cfg.chunk)  # --chunk h: chunked policy

    # ------------------------------------------------------------------ actors

    def hello(self, actor_id: str, spec: Spec, instance_id: str = "", session_id: str = "", peer: str = "") -> dict:
        """Register an actor; raises SpecMismatch when its spec differs from the learner's, ActorInUse when another
        actor process streams under `actor_id` now, ActorIdTaken when another state directory's batches are
        stored under it (`instance_id`/`session_id` empty: an actor that does not say; not checked)."""
        if actor_id.startswith(DATASET):  # the store keeps no seq for these sources: resends would be stored again
            raise ReservedActorId(f"actor id {actor_id!r} starts with {DATASET!r}, which names seeded demonstration "
                                  "files in this learner's store; give the actor another --actor-id")
        with self.lock:
            self.actors.check_identity(actor_id, instance_id, session_id)
            if problem := residual_mismatch(spec, self.cfg.residual):
                raise SpecMismatch(f"actor {actor_id!r}: {problem}")
            if self.spec is None:
                self._adopt_spec(spec)
                self.lock.notify_all()
            else:
                problem = self.spec.mismatch(spec)
                if problem:
                    raise SpecMismatch(f"actor {actor_id!r} spec does not match the learner's "
                                       f"({self.run_dir.spec}): {problem}")
            record = self.actors.hello(actor_id, instance_id, session_id, peer)
            return {"run_id": self.run_id, "policy_config": self.policy_config(), "stage": self.stage,
                    "weight_version": self.weights.version, "last_acked_seq": record.last_seq}

    def stream_started(self, actor_id: str, peer: str) -> None:
        """A transition stream of `actor_id` began on the connection `peer`; raises ActorInUse when another actor
        process said Hello under this id since this connection did."""
        with self.lock:
            self.actors.stream_started(actor_id, peer)

    def disconnected(self, actor_id: str, peer: str = "") -> None:
        with self.lock:
            self.actors.disconnected(actor_id, peer)

    def forget_demo(self, episode_key: int) -> None:
        """A discarded episode no longer counts as a demonstration (call under the lock)."""
        if episode_key in self._demo_keys:
            self._demo_keys.discard(episode_key)
            self.demo_episodes -= 1

    def count_transitions(self, n: int) -> None:
        """`n` transitions reached the buffers (call under the lock)."""
        if self.stage == ONLINE:
            self.online_transitions += n

    def episode_ended(self, episode_key: int, all_human: bool, event: dict) -> None:
        """An episode's last transition reached the buffers (call under the lock)."""
        self.episodes_ended += 1
        if all_human:
            self.demo_episodes += 1
            self._demo_keys.add(episode_key)
        self.episode_events.append(event)

    # ------------------------------------------------------------------ stage and weights

    def set_stage(self, stage: str) -> None:
        with self.lock:
            self.stage = stage
            if stage == ONLINE:
                self.online_transitions = 0
            self.lock.notify_all()
            self.weights.wake()
        log.info("stage -> %s", stage)

    def normalization_states(self) -> np.ndarray | None:
        """State vectors of the human buffer (or the policy one if no demos) for normalisation."""
        with self.lock:
            assert self.buffers is not None and self.spec is not None
            source = self.buffers.human if len(self.buffers.human) else self.buffers.policy
            if len(source) == 0:
                return None
            names = tuple(f.name for f in self.spec.state_features)  # never gather every stored image
            return state_vector(source.valid_slice(names), self.spec)

    def note_loop(self, actor_id: str, stats: dict) -> None:
        """Keep an actor's newest control-loop statistics (informational; shown by status and TensorBoard)."""
        with self.lock:
            self.actors.note_loop(actor_id, stats)

    # ------------------------------------------------------------------ what the training loop changes

    def count_update(self) -> int:
        """One more gradient update (offline or online); returns the new learner step.
        Only the training thread changes the counters, so no lock is taken (readers see whole ints)."""
        self.learner_step += 1
        return self.learner_step

    def count_offline_update(self) -> None:
        """The update just counted was an offline (TD3+BC on demonstrations) one."""
        self.offline_steps_done += 1

    def take_episode_events(self) -> list[dict]:
        """The episode ends stored since the last call (for logging), oldest first."""
        with self.lock:
            events, self.episode_events = self.episode_events, []
        return events

    def store_read_guard(self) -> threading.Lock:
        """Hold it (``with core.store_read_guard():``) to read the store from another thread: no batch is
        appended and no compaction deletes rows meanwhile. The core lock stays free."""
        return self.ingest.store_lock

    def stop(self) -> None:
        """Shutting down: wakes every waiting weight/stage subscriber so that it returns."""
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
            self.weights.wake()

    # ------------------------------------------------------------------ status

    def status(self) -> dict:
        with self.lock:
            human = self.buffers.human if self.buffers else None
            policy = self.buffers.policy if self.buffers else None
            return {
                "run_id": self.run_id,
                "store_problem": self.store_problem,
                "stage": self.stage,
                "learner_step": self.learner_step,
                "offline_steps": self.offline_steps_done,
                "weight_version": self.weights.version,
                "demo_episodes": self.demo_episodes,
                "demo_episodes_needed": self.cfg.demo_episodes,
                "buffers": {
                    "human": {"size": len(human), "capacity": human.capacity} if human else
                    {"size": 0, "capacity": self.cfg.human_capacity or 0},
                    "policy": {"size": len(policy), "capacity": policy.capacity} if policy else
                    {"size": 0, "capacity": self.cfg.policy_capacity or 0},
                },
                **self.ingest.status(),
                "actors": self.actors.status(self.weights.version),
            }

    # ------------------------------------------------------------------ persistence

    def save_state(self, path: Path | None = None) -> None:
        """Stage and training counters (buffers, demo count and actor records live in the store), to the run's
        learner_state.json or to `path` (a checkpoint's own copy, written before the checkpoint is renamed)."""
        with self.lock:
            state = {"stage": self.stage, "learner_step": self.learner_step,
                     "offline_steps": self.offline_steps_done, "demo_episodes": self.demo_episodes,
                     "actors": self.actors.saved()}
        self.run_dir.write_state(state, path)

    def load_state(self) -> None:
        """Stage and step counters of a previous run (see `save_state`), if it saved any: the run's
        learner_state.json, or the latest checkpoint's copy when that is newer (a kill after the checkpoint was
        renamed into place, before the run's file was replaced). (The normalisation statistics live in the
        policy and the training checkpoint; an older state file's copy is ignored.)"""
        state = self.run_dir.read_state()
        if state is None:
            return
        self.stage = state["stage"]
        self.learner_step = state["learner_step"]
        self.offline_steps_done = state["offline_steps"]

