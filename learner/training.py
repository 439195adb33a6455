"""The training loop: wait for demos, TD3+BC offline, then online TD3 on the 50/50 dual buffer.

Runs in one thread beside the gRPC server. Sampling happens under the core's lock (a copy of the
minibatch), the gradient step outside it, so ingest never waits for a backward pass.

The sampled minibatch goes to the training device as it is stored (`buffers.torch_batch.to_torch`:
uint8 images stay uint8, pinned memory and asynchronous copies on CUDA); the state vector is
assembled, normalised and the images augmented and converted to float there. The update's metrics
stay on the device and are read (one host sync) only when they are logged.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hilrl.buffers.durable import replace_dir
from hilrl.buffers.sequences import sample_buffer_sequences, sample_sequences
from hilrl.buffers.spec import Spec
from hilrl.buffers.torch_batch import state_tensor, to_torch
from hilrl.learner.chunked import ChunkedTD3
from hilrl.learner.core import OFFLINE, ONLINE, WAITING, LearnerCore
from hilrl.learner.encoder_pretrain import pretrain_learner_encoder
from hilrl.learner.features import FeatureCache, cached_batch, dual_indices, feature_cache
from hilrl.learner.networks import compute_state_stats, policy_metadata
from hilrl.learner.td3 import TD3

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device auto or cpu)")
    return torch.device(name)


def device_batch(batch: dict, spec: Spec, device: torch.device) -> dict:
    """A sampled batch in the update's layout on `device`: one-step transitions (``DualBuffer.sample``, for
    `TD3.update`) or h-step windows (``buffers.sequences``, with "valid" and "action_mask", for
    `ChunkedTD3.update`); both carry "human".

    Everything crosses to the device once, as stored (uint8 images stay uint8; pinned and
    asynchronous on CUDA); the state vector is assembled there.
    """
    t = to_torch(batch, device)
    out = {
        "human": t["human"],
        "state": state_tensor(t["obs"], spec),
        "next_state": state_tensor(t["next_obs"], spec),
        "action": t["action"],
        "reward": t["reward"],
        "done": (t["done"] if "done" in t else t["terminated"]).float(),  # windows: a terminal at their end
    }
    for key in ("valid", "action_mask"):  # windows only
        if key in t:
            out[key] = t[key]
    if spec.image_features:
        out["images"] = {f.name: t["obs"][f.name] for f in spec.image_features}
        out["next_images"] = {f.name: t["next_obs"][f.name] for f in spec.image_features}
    return out


def bc_weight_schedule(weight: float, decay_steps: int, online_updates: int) -> float:
    """The online BC weight after `online_updates` updates: `weight`, or decaying linearly to 0 over
    `decay_steps` updates (0 = constant)."""
    return weight if decay_steps <= 0 else weight * max(0.0, 1.0 - online_updates / decay_steps)


def actor_holds_still(warmup_steps: int, pretrained: bool, online_updates: int) -> bool:
    """Critic warm-up: whether online update number `online_updates` leaves the actor alone. Only a policy
    that had an offline stage (`pretrained`) is held, for its first `warmup_steps` online updates, while the
    critic adapts to the policy's own data; an untrained policy has nothing to protect."""
    return pretrained and online_updates < warmup_steps


def warmup_note(warmup_steps: int, offline_updates: int) -> str:
    """What the learner says about the critic warm-up when it goes online (`actor_holds_still`'s rule)."""
    if warmup_steps <= 0:
        return "critic warm-up off (--critic-warmup-steps 0): the actor trains from the first online update"
    if offline_updates <= 0:
        return (f"critic warm-up skipped: --critic-warmup-steps {warmup_steps} applies after an offline stage "
                f"only, and none ran (untrained actor, nothing to protect)")
    return f"critic warm-up: the actor holds still for the first {warmup_steps} online updates"


class WandbMirror:
    """A TensorBoard SummaryWriter that also sends each scalar and figure to a W&B run. TensorBoard steps
    differ per tag (updates, episodes), so each W&B row carries its own "step" key rather than W&B's step."""

    def __init__(self, writer: Any, run: Any) -> None:
        self.writer, self.run = writer, run

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        self.run.log({tag: value, "step": step})

    def add_figure(self, tag: str, figure: Any, step: int, close: bool = True) -> None:
        import wandb

        self.run.log({tag: wandb.Image(figure), "step": step})
        self.writer.add_figure(tag, figure, step, close=close)

    def close(self) -> None:
        self.writer.close()


class Trainer:
    def __init__(self, core: LearnerCore) -> None:
        self.core = core
        self.cfg = core.cfg
        self.device = resolve_device(self.cfg.device)
        weights = self.cfg.algo.encoder_weights
        if weights and not Path(weights).is_file():  # fail at start-up, not when the first actor connects
            raise SystemExit(f"--algo.encoder-weights {weights}: no such file (a local safetensors file of "
                             "ResNet trunk weights with torchvision key names)")
        if self.cfg.chunk < 1:
            raise SystemExit(f"--chunk {self.cfg.chunk}: the action chunk length must be at least 1 (1 = plain TD3)")
        if self.cfg.torch_threads > 0:
            torch.set_num_threads(self.cfg.torch_threads)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.td3: TD3 | None = None
        self.features: FeatureCache | None = None  # --algo.feature-views
        self.writer = None
        self.run_dir = core.run_dir
        self._last_report = 0.0
        self._policy_successes: list[float] = []
        self._policy_episodes = 0
        self._published_step = -1
        self._empty_side: str | None = None  # the dual-buffer side that was empty at the last online sample
        self._last_log: float | None = None

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir.tensorboard))
        run = self._start_wandb()
        if run is not None:
            self.writer = WandbMirror(self.writer, run)
        try:
            self._run(stop)
        finally:
            if self.td3 is not None:
                if self.core.stage == ONLINE and self._published_step != self.core.learner_step:
                    self._publish()  # the final weights, so policy.safetensors is what training ended with
                self.checkpoint()
            if not self.core.weights.flush():  # the weight files are written on their own thread
                log.error("the newest weight files were not written within 60 s")
            self.writer.close()
            if run is not None:
                run.finish()

    def _start_wandb(self):
        """--wandb-project: a W&B run that gets every TensorBoard scalar and figure too (`WandbMirror`)."""
        if not self.cfg.wandb_project:
            return None
        import wandb

        run = wandb.init(project=self.cfg.wandb_project, dir=str(self.run_dir.root), mode=self.cfg.wandb_mode,
                         config=json.loads(json.dumps(asdict(self.cfg), default=str)),
                         resume="allow", id=f"hilrl-{self.core.run_id}")
        log.info("W&B run %s (%s)", run.id, self.cfg.wandb_mode)
        return run

    def _run(self, stop: threading.Event) -> None:
        core = self.core
        with core.lock:  # no spec yet: wait for the first actor (stop is an Event, so poll it)
            while core.spec is None and not stop.is_set():
                core.lock.wait(0.2)
        if stop.is_set():
            return
        self._build()
        online_updates = 0
        while not stop.is_set():
            self._report()
            stage = core.stage
            if stage == WAITING:
                if core.demo_episodes >= self.cfg.demo_episodes and self._has_data() and (
                        self.cfg.demo_episodes > 0 or core.episodes_ended > 0):  # no demos: one whole episode
                    self._start_offline(stop)
                else:
                    stop.wait(0.05)
            elif stage == OFFLINE:
                if core.offline_steps_done >= self.cfg.offline_steps:
                    self._publish(checkpoint=False)  # weights v1 exist before anyone sees "online"
                    log.info(warmup_note(self.cfg.critic_warmup_steps, core.offline_steps_done))
                    core.set_stage(ONLINE)
                    self.checkpoint()  # after the switch: a learner resumed from it does not redo the end
                    continue
                if len(core.buffers.human) == 0:  # resumed mid-offline before the demos are back
                    stop.wait(0.05)
                    continue
                self._update(bc_weight=1.0, human_only=True)
                core.count_offline_update()
                self._maybe_checkpoint()  # after counting the update, so a resumed run repeats none
            else:
                if online_updates >= self.cfg.utd_ratio * core.online_transitions or not self._has_data():
                    stop.wait(0.005)
                    continue
                done_online = core.learner_step - core.offline_steps_done  # persisted: survives --resume
                warming_up = actor_holds_still(self.cfg.critic_warmup_steps, core.offline_steps_done > 0, done_online)
                self._update(bc_weight=self.online_bc_weight(done_online), human_only=False,
                             update_actor=not warming_up)
                online_updates += 1
                published = online_updates % self.cfg.publish_every == 0
                if published:
                    self._publish()  # checkpoints too
                self._maybe_checkpoint(checkpointed=published)

    def online_bc_weight(self, online_updates: int) -> float:
        """The BC weight after `online_updates` online updates (`bc_weight_schedule` of the config)."""
        return bc_weight_schedule(self.cfg.online_bc_weight, self.cfg.online_bc_decay_steps, online_updates)

    def _has_data(self) -> bool:
        b = self.core.buffers
        return b is not None and (len(b.human) + len(b.policy)) > 0

    def _build(self) -> None:
        core = self.core
        assert core.spec is not None
        algo = ChunkedTD3 if self.cfg.chunk > 1 else TD3  # --chunk h > 1: action-chunked critic (chunked.py)
        self.td3 = algo(core.policy_config(), self.cfg.algo, self.device, seed=self.cfg.seed)
        self.features = feature_cache(self.td3, self.cfg.chunk)
        low, high = np.array(core.spec.action.low), np.array(core.spec.action.high)
        self.td3.set_normalization(np.zeros(core.spec.state_dim), np.ones(core.spec.state_dim), low, high)
        latest = self.run_dir.latest_checkpoint()
        if self.cfg.resume and latest is not None:
            self.td3.load(latest)
            log.info("resumed training state from %s (step %d)", latest, core.learner_step)

    def _start_offline(self, stop: threading.Event) -> None:
        states = self.core.normalization_states()
        assert states is not None and self.core.spec is not None
        mean, std = compute_state_stats(states)
        self.td3.set_normalization(mean, std, self.core.spec.action.low, self.core.spec.action.high)
        side = "human" if len(self.core.buffers.human) else "policy"  # type: ignore[union-attr]
        log.info("normalisation from %d %s transitions; offline TD3+BC for %d updates",
                 len(states), side, self.cfg.offline_steps)
        if pretrain_learner_encoder(self.td3, self.cfg, self.core.spec, self.core.buffers.human,  # type: ignore
                                    self.run_dir.root / "encoder.safetensors", self.device, self.core.lock, stop):
            self.core.set_stage(OFFLINE)  # not when stopped mid-pretraining: a resumed run pretrains again

    # ------------------------------------------------------------------ one update

    def _sample(self, human_only: bool) -> dict:
        """One minibatch as tensors on the training device (the TD3 batch layout, images as uint8)."""
        core, cfg = self.core, self.cfg
        if not human_only:
            self._note_mix()
        if cfg.chunk > 1:
            return self._sample_chunks(human_only)
        if self.features is not None:  # --algo.feature-views: cached frozen-encoder features
            assert core.buffers is not None and core.spec is not None
            buffers = core.buffers
            return cached_batch(self.features, lambda: dual_indices(buffers, cfg.batch_size, cfg.human_ratio,
                                                                    self.rng, human_only), core.spec, core.lock,
                                self.rng)
        with core.lock:
            assert core.buffers is not None and core.spec is not None
            if human_only:
                idx = core.buffers.human.sample_indices(cfg.batch_size, self.rng)
                batch = core.buffers.human.gather(idx)
                batch["human"] = np.ones(len(idx), np.float32)
            else:
                batch = core.buffers.sample(cfg.batch_size, cfg.human_ratio, self.rng)
            spec = core.spec
        return device_batch(batch, spec, self.device)  # outside the lock: the gathered arrays are copies

    def _note_mix(self) -> None:
        """Say (once per change) when a side of the dual buffer is empty and the other fills whole batches."""
        b = self.core.buffers
        assert b is not None
        empty = "policy" if len(b.policy) == 0 else "human" if len(b.human) == 0 else None
        if empty != self._empty_side:
            if empty is not None:
                log.info("the %s buffer is empty: minibatches come wholly from the %s buffer until it has data",
                         empty, "human" if empty == "policy" else "policy")
            elif self._empty_side is not None:
                log.info("both buffers hold data: minibatches are %.0f%% human / %.0f%% policy again",
                         100 * self.cfg.human_ratio, 100 * (1 - self.cfg.human_ratio))
            self._empty_side = empty

    def _sample_chunks(self, human_only: bool) -> dict:
        """--chunk h: a minibatch of contiguous h-step windows (buffers/sequences.py), same 50/50 mix."""
        core, cfg = self.core, self.cfg
        with core.lock:
            assert core.buffers is not None and core.spec is not None
            if human_only:
                batch = sample_buffer_sequences(core.buffers.human, cfg.batch_size, cfg.chunk, self.rng)
            else:
                batch = sample_sequences(core.buffers, cfg.batch_size, cfg.human_ratio, cfg.chunk, self.rng)
            spec = core.spec
        return device_batch(batch, spec, self.device)

    def _update(self, bc_weight: float, human_only: bool, update_actor: bool = True) -> None:
        assert self.td3 is not None
        batch = self._sample(human_only)
        metrics = self.td3.update(batch, bc_weight=bc_weight, update_actor=update_actor, return_tensors=True)
        step = self.core.count_update()
        if step % self.cfg.log_every == 0 and self.writer is not None:
            now = time.monotonic()
            values = torch.stack([*metrics.values(), batch["human"].mean()]).tolist()  # the one host sync
            for k, v in zip(metrics, values, strict=False):
                self.writer.add_scalar(f"train/{k}", v, step)
            self.writer.add_scalar("train/bc_weight", bc_weight, step)
            self.writer.add_scalar("train/batch_human_share", values[-1], step)
            if self._last_log is not None:
                self.writer.add_scalar("train/updates_per_s", self.cfg.log_every / (now - self._last_log), step)
            self._last_log = now
            b = self.core.buffers
            self.writer.add_scalar("buffer/human", len(b.human), step)
            self.writer.add_scalar("buffer/policy", len(b.policy), step)

    def _maybe_checkpoint(self, checkpointed: bool = False) -> None:
        """The periodic work after a counted update: checkpoint (unless just written) and Q figure."""
        step = self.core.learner_step
        if step % self.cfg.checkpoint_every == 0 and not checkpointed:
            self.checkpoint()
        if self.cfg.plot_q_every and step % self.cfg.plot_q_every == 0:
            self._plot_q(step)

    def _plot_q(self, step: int) -> None:
        """Q along the newest complete stored episodes (what `hilrl plot-q` draws) as a TensorBoard figure."""
        pcfg = self.td3.policy.cfg if self.td3 is not None else None
        if self.writer is None or pcfg is None or pcfg.cameras or pcfg.chunk > 1 or self.core.store is None:
            return
        from hilrl.learner.q_figure import log_q_figure

        # the ingest lock keeps a compaction from deleting rows while they are read
        log_q_figure(self.writer, self.td3.policy, self.td3.critic, self.core.store.path, step,
                     lock=self.core.store_read_guard())

    def _publish(self, checkpoint: bool = True) -> None:
        assert self.td3 is not None
        policy = self.td3.policy
        version = self.core.weights.publish(policy.state_dict(), policy_metadata(policy))
        self._published_step = self.core.learner_step
        if checkpoint:
            self.checkpoint()  # training state, stage and actor records consistent with the newest version
        if self.writer is not None:
            self.writer.add_scalar("weights/version", version, self.core.learner_step)
        log.info("published weights v%d at learner step %d", version, self.core.learner_step)

    # ------------------------------------------------------------------ reporting and checkpoints

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._last_report < 10.0:
            return
        self._last_report = now
        core = self.core
        for e in core.take_episode_events():
            if e["interventions"] == 0:
                self._policy_successes.append(float(e["success"]))
            if self.writer is not None and not e["all_human"]:  # policy episodes, with or without takeover
                self._policy_episodes += 1
                self.writer.add_scalar("episodes/success", float(e["success"]), self._policy_episodes)
                self.writer.add_scalar("episodes/intervention_rate", e["interventions"] / max(e["length"], 1),
                                       self._policy_episodes)
        recent = self._policy_successes[-20:]
        if self.writer is not None and recent:
            self.writer.add_scalar("episodes/autonomous_success_rate_last20", float(np.mean(recent)),
                                   core.learner_step)
        s = core.status()
        if self.writer is not None:
            for a in s["actors"]:
                for key in ("loop_period_p50_ms", "loop_period_p99_ms", "overruns", "watchdog_holds"):
                    self.writer.add_scalar(f"actors/{a['id']}/{key}", a[key], core.learner_step)
        log.info("stage=%s step=%d weights=v%d human=%d policy=%d demos=%d/%d actors=%d%s", s["stage"],
                 s["learner_step"], s["weight_version"], s["buffers"]["human"]["size"],
                 s["buffers"]["policy"]["size"], s["demo_episodes"], s["demo_episodes_needed"], len(s["actors"]),
                 f" autonomous_success(last {len(recent)})={np.mean(recent):.2f}" if recent else "")

    def checkpoint(self) -> Path:
        """Write a complete checkpoint: into a temporary directory, fsync, DONE marker, rename; keep the last K."""
        assert self.td3 is not None
        path = self.run_dir.checkpoint(self.core.learner_step)
        if not self.run_dir.is_complete(path):  # else this very step is saved already (e.g. publish, then shutdown)
            tmp = self.run_dir.checkpoint_tmp(self.core.learner_step)
            shutil.rmtree(tmp, ignore_errors=True)
            self.td3.save(tmp)
            self.core.save_state(tmp / self.run_dir.state.name)  # the counters that match these weights
            self.run_dir.mark_complete(tmp)
            replace_dir(tmp, path)  # fsyncs every file (DONE included) and both directories
        self.core.save_state()
        for old in self.run_dir.complete_checkpoints()[: -max(self.cfg.keep_checkpoints, 1)]:
            shutil.rmtree(old, ignore_errors=True)
        return path

