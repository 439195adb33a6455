"""The critic's Q values along recorded episodes, as a figure (the learner's TensorBoard hook and `hilrl plot-q`).

Practitioners judge a critic by its Q values along an episode: on a successful episode Q(s, a)
should rise toward the success, on a failed one it should stay low or fall. For each episode the
figure draws, over time, Q1(s, a_executed) (the critic's value of what was actually done),
Q1(s, pi(s)) (its value of what the policy would do), the reward, and the steps a human executed
(shaded). It is built by the pure function `q_figure`; the learner logs it to TensorBoard with
`log_q_figure`, and `hilrl plot-q` (deploy/plot_q.py) writes it to a PNG.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hilrl.buffers.spec import Spec
    from hilrl.buffers.step_table import StepTable
    from hilrl.learner.networks import Critic, Policy


@dataclass
class Episode:
    """One complete episode's steps (states are the raw state vectors the policy sees)."""

    name: str
    states: np.ndarray  # [T, state_dim] float32
    actions: np.ndarray  # [T, action_dim] float32, the executed actions
    rewards: np.ndarray  # [T] float32
    interventions: np.ndarray  # [T] bool, True where the human executed the step
    success: bool  # ended by termination with a positive reward


# ---------------------------------------------------------------------- reading episodes


def _episodes(table: StepTable, start: int, stop: int, sources: list[str] | None = None,
              discarded: set[tuple[str, int]] | frozenset = frozenset(),
              freed: np.ndarray | None = None) -> list[Episode]:
    """The complete episodes within rows [start, stop) of a step table, in order of their end (an episode begun
    before `start` or with rows a bounded store freed is left out). `freed`: per row, True where it was freed."""
    from hilrl.buffers.assembler import episode_runs
    from hilrl.buffers.spec import state_vector

    spec = table.spec
    obs = [f"obs/{f.name}" for f in spec.state_features]  # never the (large) images
    v = table.read([*obs, "action", *table.scalars], start, stop)
    states = state_vector({f.name: v[f"obs/{f.name}"] for f in spec.state_features}, spec)
    actions = np.asarray(v["action"], dtype=np.float32)
    reward = np.asarray(v["reward"], dtype=np.float32)
    terminated = np.asarray(v["terminated"])
    ended = terminated | np.asarray(v["truncated"])
    human = np.asarray(v["is_intervention"], dtype=bool)
    episode, step = np.asarray(v["episode"]), np.asarray(v["step"])
    source = np.asarray(v["source"]) if sources is not None else np.zeros(len(episode), np.int64)
    kept = np.flatnonzero(~freed) if freed is not None else np.arange(len(episode))
    out: list[Episode] = []
    stream = ((int(source[i]), int(episode[i]), int(step[i]), bool(ended[i])) for i in kept)
    for sid, run, closed in episode_runs(stream):
        idx = kept[run]
        name = sources[sid] if sources is not None else ""
        if not closed or step[idx[0]] != 0 or (name, int(episode[idx[0]])) in discarded:
            continue  # still going, begun before `start` or partly freed, or discarded
        title = f"{name} ep {episode[idx[0]]}" if name else f"ep {episode[idx[0]]}"
        out.append(Episode(title, states[idx], actions[idx], reward[idx], human[idx],
                           bool(terminated[idx[-1]] and reward[idx[-1]] > 0)))
    return out


def read_recording_episodes(path: Path) -> tuple[Spec, list[Episode]]:
    """The complete episodes of a step recording."""
    from hilrl.buffers.recording import open_recording

    table = open_recording(path)
    return table.spec, _episodes(table, 0, len(table))


def read_store_episodes(path: Path, tail_rows: int | None = None) -> tuple[Spec, list[Episode]]:
    """The complete, non-discarded episodes of a learner buffer store, read-only (up to its last commit);
    with `tail_rows`, only those within its last `tail_rows` steps."""
    from hilrl.buffers.store import StoreError, store_snapshot

    try:
        snap = store_snapshot(path)
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    n = snap.steps
    start = 0 if tail_rows is None else max(0, n - tail_rows)
    freed = snap.freed(np.arange(start, n))  # rows a bounded store freed read back as zeros
    return snap.spec, _episodes(snap.table, start, n, snap.sources, snap.discarded(), freed)


def q_series(policy: Policy, critic: Critic, episode: Episode) -> dict[str, np.ndarray]:
    """``q_data``: Q1(s_t, a_t) of the executed actions; ``q_pi``: Q1(s_t, pi(s_t)); both [T] float32.

    Exactly what the TD3 update sees: normalised states, actions mapped to [-1, 1] and clamped.
    """
    import torch

    device = next(critic.parameters()).device
    with torch.no_grad():
        s = policy.normalize_state(torch.as_tensor(episode.states, dtype=torch.float32, device=device))
        a = policy.normalize_action(torch.as_tensor(episode.actions, dtype=torch.float32, device=device))
        q_data = critic.q1(s, a.clamp(-1.0, 1.0))
        q_pi = critic.q1(s, policy.actor(s))
    return {"q_data": q_data.float().cpu().numpy(), "q_pi": q_pi.float().cpu().numpy()}


# ---------------------------------------------------------------------- the figure


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges where mask is True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def q_figure(policy: Policy, critic: Critic, episodes: list[Episode], title: str = "") -> Figure:
    """One subplot per episode: Q1(s, a) (green on success, red on failure), Q1(s, pi(s)) dashed,
    reward (right axis) and the human-executed steps shaded. Pure: no files, no global pyplot state."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not episodes:
        raise ValueError("no complete episodes to plot")
    ncols = min(4, len(episodes))
    nrows = math.ceil(len(episodes) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.9 * nrows + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(episodes):]:
        ax.set_visible(False)
    for ax, ep in zip(axes.flat, episodes, strict=False):
        q = q_series(policy, critic, ep)
        t = np.arange(len(ep.rewards))
        for start, stop in _spans(ep.interventions):
            ax.axvspan(start - 0.5, stop - 0.5, color="tab:orange", alpha=0.2, lw=0)
        color = "tab:green" if ep.success else "tab:red"
        ax.plot(t, q["q_data"], color=color, lw=1.8)
        ax.plot(t, q["q_pi"], color="0.35", lw=1.0, ls="--")
        ax.set_title(f"{ep.name}: {'success' if ep.success else 'failure'}, {len(t)} steps", color=color,
                     fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("Q", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        rax = ax.twinx()
        rax.step(t, ep.rewards, where="mid", color="tab:blue", lw=1.0, alpha=0.8)
        rax.set_ylim(-0.05, max(1.05, float(ep.rewards.max(initial=0.0)) * 1.05))
        rax.set_ylabel("reward", fontsize=8, color="tab:blue")
        rax.tick_params(labelsize=7, colors="tab:blue")
    fig.legend(handles=[
        _line("tab:green", "-", "Q1(s, a executed), success"), _line("tab:red", "-", "Q1(s, a executed), failure"),
        _line("0.35", "--", "Q1(s, pi(s))"), _line("tab:blue", "-", "reward (right axis)"),
        Patch(color="tab:orange", alpha=0.2, label="human executed (intervention)"),
    ], loc="outside lower center", ncols=5, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _line(color: str, style: str, label: str):
    from matplotlib.lines import Line2D

    return Line2D([], [], color=color, ls=style, label=label)


def figure_png(fig: Figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def log_q_figure(writer: Any, policy: Policy, critic: Critic, store_path: Path, step: int, episodes: int = 4,
                 tag: str = "critic/q_trajectories", lock: Any = None, tail_rows: int = 5000) -> bool:
    """Hook for the learner: add the Q-trajectory figure of the store's last `episodes` complete episodes to a
    TensorBoard `SummaryWriter` at `step`. `lock` (the learner core's lock) is held only while the store is
    read, not while drawing. Returns False, logging nothing, while no episode is complete or the store
    cannot be read right now (it is retried at the next call). Only the store's last `tail_rows` steps are read,
    so the cost does not grow with the store."""
    try:
        with lock if lock is not None else contextlib.nullcontext():
            _, eps = read_store_episodes(store_path, tail_rows)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("Q-trajectory figure skipped at step %d: %s", step, exc)
        return False
    if not eps:
        return False
    was_training = policy.training, critic.training
    policy.eval()
    critic.eval()
    try:
        fig = q_figure(policy, critic, eps[-episodes:], title=f"learner step {step}")
    finally:
        policy.train(was_training[0])
        critic.train(was_training[1])
    writer.add_figure(tag, fig, step, close=False)
    return True
