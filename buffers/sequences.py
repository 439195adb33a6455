"""Contiguous h-step windows from the replay rings, for the action-chunked critic (learner/chunked.py).

A window starting at transition ``t`` is ``(obs_t, a_t..a_{t+h-1}, r_t..r_{t+h-1}, obs_{t+h})``. Its
steps must be *contiguous*: the same episode, executed one after another, stored in the same buffer.
The ring buffer already knows this exactly: transition ``t+1`` continues ``t`` iff it *shares* ``t``'s
next-observation frame (``obs_frame[t+1] == next_frame[t]``; `ReplayBuffer.add` shares a frame only
when the new step has the same episode key, follows no terminal/truncation and starts from the
bit-identical observation). Frame numbers are unique, so equal numbers mean "the same stored frame";
nothing else (no step counter) is needed.

What a window returns, per row (``present`` = the steps that exist in the run, a prefix):

* ``valid`` — all ``h`` steps are present. Only valid rows enter the critic loss. A window is
  invalid when its run ends before the last step: a **terminal** inside the chunk (the Q-chunking
  paper masks these out), a **truncation** (time limit, interruption) inside the chunk (there is no
  ``obs_{t+h}`` of the same episode to bootstrap from, and bootstrapping across the episode boundary
  would be wrong), a takeover switch (the next step went to the other buffer), a discarded
  episode, or steps not yet received. A terminal or a truncation exactly *at* the last step keeps
  the window valid: ``done`` (terminal) stops the bootstrap, a truncation bootstraps from the stored
  final observation (timeouts are not terminals).
* ``action`` — ``[h, A]``; the steps after the run's end repeat its last action (padding, so the
  tensor is defined; ``action_mask`` marks the real steps and the BC term uses only those).
* ``reward`` — ``[h]``; 0 after the run's end.
* ``done`` — the last step of a valid window terminated.
* ``next_obs`` — the next observation of the run's last present step (``obs_{t+h}`` for valid rows).

Mixed human/policy windows: the dual buffer routes each step by who executed it, so a window never
mixes sources. A policy chunk cut by a takeover is invalid from the takeover on (its start state still
feeds the actor loss); the human's steps form windows of their own in the human buffer. We do not
label a mixed window "human": its actions were neither one open-loop chunk of the policy nor a
demonstration, and keeping windows per buffer keeps the 50/50 mix exact per row.

Window starts are drawn uniformly over the sampleable transitions (`ReplayBuffer.sample_indices`),
so every stored state still reaches the actor loss; invalid windows only leave the critic loss.
"""

from __future__ import annotations

import numpy as np

from hilrl.buffers.replay import DualBuffer, ReplayBuffer, concat_batches


def gather_sequences(buffer: ReplayBuffer, idx: np.ndarray, h: int) -> dict:
    """The ``h``-step windows starting at slot indices `idx` (live transitions), as arrays.

    Keys: "obs" / "next_obs" (feature dicts ``[B, ...]``), "action" ``[B, h, A]``, "reward" ``[B, h]``,
    "action_mask" ``[B, h]`` (float32, 1 where the step exists), "valid" ``[B]`` (float32), "done"
    ``[B]`` (bool).
    """
    if h < 1:
        raise ValueError(f"window length h must be at least 1, got {h}")
    idx = np.asarray(idx, dtype=np.int64)
    numbers = buffer.transition_numbers(idx)[:, None] + np.arange(h)  # absolute transition numbers [B, h]
    slots = numbers % buffer.capacity
    present = np.zeros(numbers.shape, dtype=np.bool_)
    present[:, 0] = buffer.valid[slots[:, 0]]
    for k in range(1, h):
        prev, cur = slots[:, k - 1], slots[:, k]
        continues = ((numbers[:, k] < buffer.added) & buffer.valid[cur]
                     & (buffer.obs_frame[cur] == buffer.next_frame[prev])
                     & ~buffer.terminated[prev] & ~buffer.truncated[prev])
        present[:, k] = present[:, k - 1] & continues
    last = np.maximum(present.sum(axis=1) - 1, 0)  # index of the run's last present step in the window
    rows = np.arange(len(idx))
    last_slot = slots[rows, last]
    pad = np.where(present, np.arange(h), last[:, None])  # steps after the end repeat the last one
    valid = present[:, -1]
    return {
        "obs": buffer.frames.get(buffer.obs_frame[slots[:, 0]]),
        "next_obs": buffer.frames.get(buffer.next_frame[last_slot]),
        "action": buffer.action[slots[rows[:, None], pad]],
        "reward": np.where(present, buffer.reward[slots], 0.0).astype(np.float32),
        "action_mask": present.astype(np.float32),
        "valid": valid.astype(np.float32),
        "done": valid & buffer.terminated[last_slot],
    }


def sample_sequences(buffers: DualBuffer, batch_size: int, human_ratio: float, h: int,
                     rng: np.random.Generator) -> dict:
    """A minibatch of windows, `human_ratio` of the rows from the human buffer (as `DualBuffer.sample`).

    The "human" entry marks (1.0) the rows drawn from the human buffer.
    """
    n_human, n_policy = buffers.split(batch_size, human_ratio)
    parts = []
    for buffer, n, flag in ((buffers.human, n_human, 1.0), (buffers.policy, n_policy, 0.0)):
        if n:
            part = gather_sequences(buffer, buffer.sample_indices(n, rng), h)
            part["human"] = np.full(n, flag, dtype=np.float32)
            parts.append(part)
    return concat_batches(parts)


def sample_buffer_sequences(buffer: ReplayBuffer, batch_size: int, h: int, rng: np.random.Generator,
                            human: float = 1.0) -> dict:
    """A minibatch of windows from one buffer (the offline stage samples the human buffer only)."""
    part = gather_sequences(buffer, buffer.sample_indices(batch_size, rng), h)
    part["human"] = np.full(batch_size, human, dtype=np.float32)
    return part
