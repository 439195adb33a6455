"""`hilrl plot-q`: the critic's Q values along recorded episodes, drawn to a PNG.

Practitioners judge a critic by its Q values along an episode: on a successful episode Q(s, a)
should rise toward the success, on a failed one it should stay low or fall. For each episode this
draws, over time, Q1(s, a_executed) (the critic's value of what was actually done), Q1(s, pi(s))
(its value of what the policy would do), the reward, and the steps a human executed (shaded).

Episodes come from a learner's buffer store (`<output-dir>/store`, read-only: a running learner is
not disturbed) or from a step recording (`hilrl record`, `hilrl actor --record`). The figure and the
episode reading live in `hilrl.learner.q_figure`, which the learner also uses to log the figure to
TensorBoard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hilrl.deploy.configtools import opt
from hilrl.learner.q_figure import figure_png, q_figure, q_series, read_recording_episodes, read_store_episodes
from hilrl.learner.rundir import RunDir

if TYPE_CHECKING:
    from hilrl.learner.networks import Critic, Policy

__all__ = ["PlotQConfig", "load_checkpoint", "q_figure", "q_series", "read_recording_episodes",
           "read_store_episodes", "resolve_checkpoint", "run_plot_q"]


@dataclass
class PlotQConfig:
    checkpoint: Path = opt(Path("hilrl-runs/learner"), "a learner --output-dir (its newest complete checkpoint) "
                                                       "or one checkpoint directory (checkpoints/step-N)")
    store: Path | None = opt(None, "take the episodes from this learner buffer store (<output-dir>/store)")
    recording: Path | None = opt(None, "take the episodes from this step recording (hilrl record, actor --record)")
    episodes: int = opt(8, "plot the last N complete episodes")
    output: Path = opt(Path("q-trajectories.png"), "PNG file to write")


# ---------------------------------------------------------------------- checkpoint


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory (with td3.json and DONE), or the newest complete one of a learner --output-dir."""
    path = Path(path)
    if (path / "td3.json").exists():
        if not RunDir.is_complete(path):
            raise ValueError(f"{path} is an incomplete checkpoint (no DONE marker); choose a complete one")
        return path
    latest = RunDir(path).latest_checkpoint()
    if latest is None:
        raise ValueError(f"no complete checkpoint in {path}: give a learner --output-dir that has "
                         "checkpoints/step-*/DONE, or one such checkpoint directory")
    return latest


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[Policy, Critic, int]:
    """Policy (with its normalisation) and twin critic of a learner checkpoint, and its update count."""
    import torch

    from hilrl.learner.networks import PolicyConfig
    from hilrl.learner.td3 import TD3, TD3Config

    ckpt = resolve_checkpoint(path)
    meta = json.loads((ckpt / "td3.json").read_text())
    if meta["policy_config"].get("cameras"):
        raise ValueError(f"{ckpt} is a camera policy (cameras {meta['policy_config']['cameras']}); plot-q draws "
                         "state-only policies so far")
    if int(meta["policy_config"].get("chunk", 1)) > 1:
        raise ValueError(f"{ckpt} has an action-chunked critic (--chunk {meta['policy_config']['chunk']}), which "
                         "scores whole chunks, not single steps; plot-q draws single-step critics so far")
    td3 = TD3(PolicyConfig.from_dict(meta["policy_config"]), TD3Config(), torch.device(device))
    td3.load(ckpt)
    td3.policy.eval().requires_grad_(False)
    td3.critic.eval().requires_grad_(False)
    return td3.policy, td3.critic, int(meta.get("total_it", 0))


# ---------------------------------------------------------------------- the command


def run_plot_q(cfg: PlotQConfig) -> int:
    if (cfg.store is None) == (cfg.recording is None):
        raise SystemExit("hilrl plot-q: give exactly one of --store DIR (a learner's <output-dir>/store) "
                         "or --recording PATH (a step recording)")
    if cfg.episodes < 1:
        raise SystemExit(f"--episodes must be at least 1, got {cfg.episodes}")
    from hilrl.buffers.recording import RecordingError

    try:
        policy, critic, step = load_checkpoint(cfg.checkpoint)
        if cfg.store is not None:
            spec, eps = read_store_episodes(cfg.store)
        else:
            spec, eps = read_recording_episodes(cfg.recording)
    except (ValueError, RecordingError, FileNotFoundError) as exc:
        raise SystemExit(f"hilrl plot-q: {exc}") from exc
    source = cfg.store if cfg.store is not None else cfg.recording
    if spec.state_dim != policy.cfg.state_dim or spec.action_dim != policy.cfg.action_dim:
        raise SystemExit(f"hilrl plot-q: the checkpoint expects state {policy.cfg.state_dim} / action "
                         f"{policy.cfg.action_dim}, {source} holds state {spec.state_dim} / action {spec.action_dim}")
    if not eps:
        raise SystemExit(f"hilrl plot-q: {source} holds no complete episode yet")
    eps = eps[-cfg.episodes:]
    fig = q_figure(policy, critic, eps, title=f"{resolve_checkpoint(cfg.checkpoint)} (update {step}) on {source}")
    figure_png(fig, cfg.output)
    summary = []
    for ep in eps:
        q = q_series(policy, critic, ep)
        summary.append({"episode": ep.name, "steps": len(ep.rewards), "success": ep.success,
                        "interventions": int(ep.interventions.sum()), "q_first": round(float(q["q_data"][0]), 6),
                        "q_last": round(float(q["q_data"][-1]), 6)})
    print(json.dumps({"output": str(cfg.output), "checkpoint_update": step, "episodes": summary}))
    return 0

