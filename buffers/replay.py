"""Compact preallocated ring replay storage and the dual human/policy buffer on top of it.

Layout. Every observation is stored once, as a *frame* in a `FrameRing` (spec dtypes: uint8 images
stay uint8). A transition slot holds the numbers of two frames, its observation's and its next
observation's, plus action, reward and flags. When a transition continues the previous one added
to the same buffer (same episode, no end in between, and its observation is bit-for-bit the
previous next observation) it *shares* that frame, so a run of consecutive steps costs one frame
per transition. Otherwise (first step of an episode; first step after a takeover starts or ends,
whose predecessor went to the other buffer; after a discard or an actor restart) its observation
gets a frame of its own. The next observation is always written as given, so it is exact at every terminal, every
truncation (timeout) and every human/policy switch.

Ring invariant. Transitions and frames are numbered by absolute, monotonic counters (`added`,
`frames.written`) and a transition's observation frame is older than its next-observation frame,
so transition ``i`` is alive iff

    i >= added - capacity   and   obs_frame[i] >= frames.written - frame_capacity

(its slot was not reused and its oldest frame was not overwritten). Frame numbers grow with
transition numbers, so the live transitions are always one contiguous run ``[lo, added)``: the
oldest transitions die first, whichever ring runs out. The frame ring has ``capacity / 8`` slots of
slack by default: while the live window averages at least 8 steps per contiguous run, frames never
run out before transitions; with shorter runs (worst case: human and policy alternating every
step, two frames per transition) the oldest transitions are retired early, exactly by the rule
above, and `len()` says so. ``frame_capacity=2 * capacity`` makes that impossible at naive memory.
`len()` counts the live transitions that were not discarded: only those are ever sampled.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from hilrl.buffers.assembler import Step, StepLinker
from hilrl.buffers.frames import FrameRing, observation_nbytes
from hilrl.buffers.spec import Spec

log = logging.getLogger(__name__)

DEFAULT_FRAME_SLACK = 0.125


@dataclass
class Transition:
    """One complete transition, as the learner stores it."""

    obs: dict[str, np.ndarray]
    action: np.ndarray
    reward: float
    next_obs: dict[str, np.ndarray]
    terminated: bool
    truncated: bool
    episode_key: int
    is_intervention: bool


def default_frame_capacity(capacity: int, slack: float = DEFAULT_FRAME_SLACK) -> int:
    """Frames for `capacity` transitions: one each, plus `slack` (a fraction) for run starts."""
    return capacity + max(1, math.ceil(capacity * slack))


class ReplayBuffer:
    """A fixed-capacity ring of transitions over a shared ring of observation frames."""

    def __init__(self, spec: Spec, capacity: int, frame_capacity: int | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        frame_capacity = default_frame_capacity(capacity) if frame_capacity is None else frame_capacity
        if frame_capacity < 2:
            raise ValueError(f"frame_capacity must be at least 2 (one transition's two frames), got {frame_capacity}")
        self.spec = spec
        self.capacity = capacity
        self.frames = FrameRing(spec, frame_capacity)
        self.obs_frame = np.full(capacity, -1, dtype=np.int64)
        self.next_frame = np.full(capacity, -1, dtype=np.int64)
        self.action = np.zeros((capacity, spec.action_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.bool_)
        self.truncated = np.zeros(capacity, dtype=np.bool_)
        self.is_intervention = np.zeros(capacity, dtype=np.bool_)
        self.episode_key = np.full(capacity, -1, dtype=np.int64)
        self.valid = np.zeros(capacity, dtype=np.bool_)  # alive and not discarded
        self.added = 0  # transitions ever added; transition i lives in slot i % capacity
        self._lo = 0  # the oldest live transition number; live = [_lo, added)
        self._discarded = 0  # discarded transitions among the live ones
        self._tail: tuple[int, int] | None = None  # (episode key, frame) the next add may continue from

    def __len__(self) -> int:
        return self.added - self._lo - self._discarded

    @property
    def oldest(self) -> int:
        """The oldest live transition number (live ones are ``[oldest, added)``, some maybe discarded)."""
        return self._lo

    def add(self, t: Transition) -> None:
        """Append one transition, retiring the oldest ones whose slot or frames are needed."""
        cap = self.capacity
        self._retire_until(self.added + 1 - cap)
        obs_frame = self._continued_frame(t)
        if obs_frame is None:
            obs_frame = self.frames.write(t.obs)
        next_frame = self.frames.write(t.next_obs)
        i = self.added % cap
        self.obs_frame[i] = obs_frame
        self.next_frame[i] = next_frame
        self.action[i] = t.action
        self.reward[i] = t.reward
        self.terminated[i] = t.terminated
        self.truncated[i] = t.truncated
        self.is_intervention[i] = t.is_intervention
        self.episode_key[i] = t.episode_key
        self.valid[i] = True
        self.added += 1
        oldest_frame = self.frames.oldest
        while self.obs_frame[self._lo % cap] < oldest_frame:  # ends at the newest: it holds newest frames
            self._retire_until(self._lo + 1)
        self._tail = None if (t.terminated or t.truncated) else (t.episode_key, next_frame)

    def _continued_frame(self, t: Transition) -> int | None:
        """The previous transition's next-observation frame, if `t` starts from exactly it."""
        if self._tail is None:
            return None
        key, frame = self._tail
        if key != t.episode_key or not self.frames.equals(frame, t.obs):
            return None
        return frame

    def _retire_until(self, lo: int) -> None:
        """Make every transition below number `lo` dead."""
        while self._lo < lo:
            slot = self._lo % self.capacity
            if not self.valid[slot]:
                self._discarded -= 1
            self.valid[slot] = False
            self._lo += 1

    def discard_episode(self, episode_key: int) -> int:
        """Stop sampling every stored step of an episode; returns how many were removed."""
        hit = self.valid & (self.episode_key == episode_key)
        n = int(hit.sum())
        self.valid[hit] = False
        self._discarded += n
        if self._tail is not None and self._tail[0] == episode_key:
            self._tail = None
        return n

    def sampleable(self) -> np.ndarray:
        """Slot indices of every sampleable transition (live and not discarded)."""
        return np.flatnonzero(self.valid)

    def transition_numbers(self, idx: np.ndarray) -> np.ndarray:
        """The absolute transition numbers of live slots `idx` (the n-th transition added is n)."""
        last = self.added - 1
        return last - (last - np.asarray(idx, dtype=np.int64)) % self.capacity

    def sample_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` slot indices drawn uniformly, with replacement, from the sampleable transitions."""
        size = len(self)
        if size == 0:
            raise ValueError("cannot sample from an empty buffer")
        window = self.added - self._lo
        if self._discarded == 0:
            return (self._lo + rng.integers(0, window, size=n)) % self.capacity
        if 2 * size < window:  # mostly discarded: draw from the explicit list
            return rng.choice(self.sampleable(), size=n, replace=True)
        out = np.empty(n, dtype=np.int64)  # rejection sampling: each draw is accepted with p >= 1/2
        filled = 0
        while filled < n:
            draw = (self._lo + rng.integers(0, window, size=2 * (n - filled))) % self.capacity
            draw = draw[self.valid[draw]][: n - filled]
            out[filled : filled + len(draw)] = draw
            filled += len(draw)
        return out

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
        """The transitions in slots `idx` as arrays with a leading batch axis."""
        return {
            "obs": self.frames.get(self.obs_frame[idx]),
            "next_obs": self.frames.get(self.next_frame[idx]),
            "action": self.action[idx],
            "reward": self.reward[idx],
            "terminated": self.terminated[idx],
        }

    def valid_slice(self, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Every sampleable transition's observation features (for statistics).

        `names` restricts the features gathered (e.g. the state features: gathering every image of
        a large buffer costs as much memory as the buffer itself).
        """
        return self.frames.get(self.obs_frame[self.sampleable()], names)

    def bytes_per_transition(self) -> float:
        """Preallocated memory (frames + per-transition arrays) per transition of capacity."""
        arrays = [self.obs_frame, self.next_frame, self.action, self.reward, self.terminated, self.truncated,
                  self.is_intervention, self.episode_key, self.valid]
        return (self.frames.nbytes + sum(a.nbytes for a in arrays)) / self.capacity

    def frames_per_transition(self) -> float:
        """Frames written per transition added so far (1.0 = every observation shared)."""
        return self.frames.written / self.added if self.added else 0.0


def dual_buffer_nbytes(spec: Spec, human_capacity: int, policy_capacity: int,
                       frame_slack: float = DEFAULT_FRAME_SLACK) -> int:
    """Memory a DualBuffer of these capacities allocates up front (frames plus per-transition arrays)."""
    per_frame = observation_nbytes(spec)
    per_transition = 8 + 8 + 4 * spec.action_dim + 4 + 1 + 1 + 1 + 1 + 8  # frame indices, action, flags, episode
    return sum(default_frame_capacity(c, frame_slack) * per_frame + c * per_transition
               for c in (human_capacity, policy_capacity))


class DualBuffer:
    """Human (demos + interventions) and policy (autonomous) storage, sampled at a fixed mix."""

    def __init__(self, spec: Spec, human_capacity: int, policy_capacity: int,
                 frame_slack: float = DEFAULT_FRAME_SLACK) -> None:
        self.human = ReplayBuffer(spec, human_capacity, default_frame_capacity(human_capacity, frame_slack))
        self.policy = ReplayBuffer(spec, policy_capacity, default_frame_capacity(policy_capacity, frame_slack))

    def add(self, t: Transition) -> None:
        (self.human if t.is_intervention else self.policy).add(t)

    def discard_episode(self, episode_key: int) -> int:
        return self.human.discard_episode(episode_key) + self.policy.discard_episode(episode_key)

    def split(self, batch_size: int, human_ratio: float) -> tuple[int, int]:
        """How many samples each side gives; an empty side gives none and the other fills the batch."""
        if len(self.human) == 0 and len(self.policy) == 0:
            raise ValueError("both buffers are empty")
        if len(self.policy) == 0:
            return batch_size, 0
        if len(self.human) == 0:
            return 0, batch_size
        n_human = int(round(batch_size * human_ratio))
        return n_human, batch_size - n_human

    def sample(self, batch_size: int, human_ratio: float, rng: np.random.Generator) -> dict:
        """A minibatch whose "human" entry marks (1.0) the rows drawn from the human buffer."""
        n_human, n_policy = self.split(batch_size, human_ratio)
        parts = []
        for buffer, n, flag in ((self.human, n_human, 1.0), (self.policy, n_policy, 0.0)):
            if n:
                part = buffer.gather(buffer.sample_indices(n, rng))
                part["human"] = np.full(n, flag, dtype=np.float32)
                parts.append(part)
        return concat_batches(parts)


def concat_batches(parts: list[dict]) -> dict:
    """Row-wise concatenation of gathered batches (nested observation dicts included)."""
    if len(parts) == 1:
        return parts[0]
    out: dict = {}
    for key, value in parts[0].items():
        if isinstance(value, dict):
            out[key] = {k: np.concatenate([p[key][k] for p in parts]) for k in value}
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


# ------------------------------------------------------------------ pairing steps into transitions


@dataclass
class EpisodeEnd:
    """Emitted when an episode's last transition has been assembled."""

    episode_key: int
    length: int
    all_human: bool
    interventions: int
    success: bool


class EpisodeAssembler:
    """Holds the one step per actor that still waits for its next observation."""

    def __init__(self) -> None:
        self._pending: StepLinker[Step] = StepLinker()
        self._keys: dict[tuple[str, int], int] = {}
        self._human_steps: dict[int, int] = {}
        self.dropped_steps = 0

    def episode_key(self, actor_id: str, episode: int) -> int:
        """A learner-wide integer id for (actor, episode)."""
        return self._keys.setdefault((actor_id, episode), len(self._keys))

    def add(self, actor_id: str, step: Step) -> tuple[list[Transition], EpisodeEnd | None]:
        """Feed one step; returns the transitions it completes and the episode end, if any."""
        out: list[Transition] = []
        key = self.episode_key(actor_id, step.episode)
        ended = step.terminated or step.truncated
        if ended and step.final_obs is None:
            raise ValueError(f"episode {step.episode} step {step.step} ends the episode "
                             "but carries no final observation")
        before, orphan = self._pending.link(actor_id, step.episode, step.step, step, ended)
        if before is not None:
            out.append(self._complete(actor_id, before, step.obs, terminated=False, truncated=False))
        if orphan is not None:  # the actor restarted mid-episode: that step never got a successor
            self.dropped_steps += 1
            log.warning("actor %s: episode %d step %d never got its next observation; dropped",
                        actor_id, orphan.episode, orphan.step)
        if ended:
            out.append(self._complete(actor_id, step, step.final_obs, step.terminated, step.truncated))
            human = self._human_steps.pop(key, 0)
            end = EpisodeEnd(key, step.step + 1, human == step.step + 1, human, step.terminated and step.reward > 0)
            return out, end
        return out, None

    def discard(self, actor_id: str, episode: int) -> int:
        """Forget an episode's waiting step; returns its learner-wide key."""
        key = self.episode_key(actor_id, episode)
        self._pending.forget(actor_id, episode)
        self._human_steps.pop(key, None)
        return key

    def _complete(self, actor_id: str, s: Step, next_obs: dict[str, np.ndarray], terminated: bool,
                  truncated: bool) -> Transition:
        key = self.episode_key(actor_id, s.episode)
        if s.is_intervention:
            self._human_steps[key] = self._human_steps.get(key, 0) + 1
        return Transition(obs=s.obs, action=s.action, reward=s.reward, next_obs=next_obs, terminated=terminated,
                          truncated=truncated, episode_key=key, is_intervention=s.is_intervention)
