"""Assembly of (s, a, r, s') from the step stream, the ring buffer, and the 50/50 dual sampler."""

from __future__ import annotations

import numpy as np
import pytest

from hilrl.buffers.assembler import EpisodeAssembler, Step
from hilrl.buffers.replay import DualBuffer, ReplayBuffer, Transition
from hilrl.buffers.spec import Feature, Spec, state_vector

SPEC = Spec(observation=(Feature("x", "float32", (2,)), Feature("cam", "uint8", (4, 4, 3))),
            action=Feature("action", "float32", (1,), (-1,), (1,)))


def o(v: float) -> dict[str, np.ndarray]:
    return {"x": np.array([v, -v], np.float32), "cam": np.full((4, 4, 3), int(v) % 256, np.uint8)}


def episode(ep: int, length: int, human: bool, end: str = "terminated", start: float = 0.0) -> list[Step]:
    steps = []
    for t in range(length):
        last = t == length - 1
        steps.append(Step(o(start + t), np.array([t / 100], np.float32), float(last and end == "terminated"),
                          terminated=last and end == "terminated", truncated=last and end == "truncated",
                          is_intervention=human, episode=ep, step=t, final_obs=o(start + t + 1) if last else None))
    return steps


def test_next_observation_is_the_successor_and_the_final_one_at_both_kinds_of_end() -> None:
    asm = EpisodeAssembler()
    out = []
    for s in episode(0, 3, human=False, end="terminated") + episode(1, 3, human=False, end="truncated", start=10):
        out.extend(asm.add("a", s)[0])
    assert len(out) == 6
    assert [float(t.next_obs["x"][0]) for t in out] == [1, 2, 3, 11, 12, 13]
    assert [t.terminated for t in out] == [False, False, True, False, False, False]
    assert [t.truncated for t in out] == [False, False, False, False, False, True]  # a timeout is not a terminal
    assert out[2].next_obs["cam"][0, 0, 0] == 3


def test_episode_end_reports_demo_and_interventions() -> None:
    asm = EpisodeAssembler()
    ends = [asm.add("a", s)[1] for s in episode(0, 4, human=True)]
    assert ends[:3] == [None, None, None]
    assert ends[3].all_human and ends[3].interventions == 4 and ends[3].length == 4 and ends[3].success


def test_actors_are_assembled_independently_and_a_restart_drops_only_the_orphan_step() -> None:
    asm = EpisodeAssembler()
    a, b = episode(0, 3, human=False), episode(0, 3, human=True, start=50)
    out = []
    for sa, sb in zip(a, b, strict=True):
        out.extend(asm.add("A", sa)[0] + asm.add("B", sb)[0])
    assert sorted(float(t.obs["x"][0]) for t in out) == [0, 1, 2, 50, 51, 52]
    assert asm.episode_key("A", 0) != asm.episode_key("B", 0)
    asm.add("A", episode(1, 3, human=False)[0])      # step 0 of episode 1 waits for step 1 ...
    restarted = episode(2, 2, human=False, start=30)  # ... but the actor restarted and began episode 2
    assert asm.add("A", restarted[0])[0] == [] and asm.dropped_steps == 1


def test_final_observation_is_required_at_an_episode_end() -> None:
    s = episode(0, 1, human=False)[0]
    s.final_obs = None
    with pytest.raises(ValueError, match="no final observation"):
        EpisodeAssembler().add("a", s)


def transition(v: float, key: int = 0, human: bool = False) -> Transition:
    return Transition(o(v), np.array([0.5], np.float32), 1.0, o(v + 1), False, False, key, human)


def test_ring_buffer_overwrites_oldest_and_keeps_dtypes() -> None:
    buf = ReplayBuffer(SPEC, capacity=3)
    for v in range(5):
        buf.add(transition(v))
    assert len(buf) == 3
    assert sorted(buf.obs["x"][:, 0].tolist()) == [2, 3, 4]
    assert buf.obs["cam"].dtype == np.uint8
    batch = buf.gather(buf.sample_indices(16, np.random.default_rng(0)))
    assert np.all(batch["next_obs"]["x"][:, 0] == batch["obs"]["x"][:, 0] + 1)


def test_discarded_episode_is_never_sampled() -> None:
    buf = ReplayBuffer(SPEC, capacity=10)
    for v in range(6):
        buf.add(transition(v, key=v % 2))
    assert buf.discard_episode(1) == 3 and len(buf) == 3
    idx = buf.sample_indices(200, np.random.default_rng(0))
    assert set(buf.episode_key[idx].tolist()) == {0}


def test_dual_buffer_routes_by_intervention_and_mixes_half_and_half() -> None:
    dual = DualBuffer(SPEC, 100, 100)
    for v in range(10):
        dual.add(transition(v, human=True))
        dual.add(transition(100 + v, human=False))
    assert len(dual.human) == 10 and len(dual.policy) == 10
    batch = dual.sample(256, 0.5, np.random.default_rng(0))
    from_human = int((batch["obs"]["x"][:, 0] < 100).sum())
    assert from_human == 128  # exactly half of every minibatch, not half on average
    assert dual.split(256, 0.25) == (64, 192)


def test_dual_buffer_with_one_side_empty_fills_from_the_other() -> None:
    dual = DualBuffer(SPEC, 10, 10)
    dual.add(transition(1, human=True))
    assert dual.split(8, 0.5) == (8, 0)
    with pytest.raises(ValueError, match="both buffers are empty"):
        DualBuffer(SPEC, 10, 10).split(8, 0.5)


def test_state_vector_flattens_non_image_features_for_one_or_many() -> None:
    assert state_vector(o(3), SPEC).tolist() == [3.0, -3.0]
    batch = {"x": np.stack([o(1)["x"], o(2)["x"]]), "cam": np.zeros((2, 4, 4, 3), np.uint8)}
    assert state_vector(batch, SPEC).shape == (2, 2)
