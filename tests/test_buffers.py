"""Assembly of (s, a, r, s') from the step stream, the ring buffer, and the 50/50 dual sampler."""

from __future__ import annotations

import numpy as np
import pytest

from hilrl.buffers.assembler import Step, StepLinker, episode_runs
from hilrl.buffers.replay import DualBuffer, EpisodeAssembler, ReplayBuffer, Transition
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


def test_episode_runs_split_interleaved_streams_at_ends_restarts_and_the_end_of_input() -> None:
    stream = [("a", 0, 0, False), ("b", 5, 0, False), ("a", 0, 1, True), ("b", 5, 1, False),
              ("a", 1, 0, False), ("b", 5, 0, False),  # b restarted: steps 0-1 are orphaned
              ("b", 5, 1, False), ("a", 1, 2, False)]  # a skipped a step
    assert list(episode_runs(stream)) == [("a", [0, 2], True), ("b", [1, 3], False), ("a", [4], False),
                                          ("b", [5, 6], False), ("a", [7], False)]


def test_step_linker_links_only_the_next_step_of_the_same_episode_and_forgets_discards() -> None:
    linker: StepLinker[str] = StepLinker()
    assert linker.link("a", 0, 0, "s0", False) == (None, None)
    assert linker.link("a", 0, 1, "s1", False) == ("s0", None)
    assert linker.link("a", 1, 2, "t2", False) == (None, "s1")  # another episode: s1 never gets a successor
    linker.forget("a", 0)
    assert "a" in linker.waiting
    linker.forget("a", 1)
    assert linker.link("a", 1, 3, "t3", True) == (None, None) and not linker.waiting


def test_ring_buffer_overwrites_oldest_and_keeps_dtypes() -> None:
    buf = ReplayBuffer(SPEC, capacity=3)
    for v in range(5):
        buf.add(transition(v))
    assert len(buf) == 3
    assert sorted(buf.valid_slice()["x"][:, 0].tolist()) == [2, 3, 4]
    assert buf.valid_slice()["cam"].dtype == np.uint8
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


# ---------------------------------------------------------------------------------------------------
# Compact storage: every observation stored once, shared between consecutive transitions.

RICH = Spec(observation=(Feature("cam", "uint8", (6, 5, 3)), Feature("joints", "float32", (3,)),
                         Feature("pos", "float64", (2,)), Feature("count", "int64", ()),
                         Feature("contact", "bool", (2,))),
            action=Feature("action", "float32", (2,), (-1, -1), (1, 1)))


def rich_obs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"cam": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), "joints": rng.normal(size=3).astype(np.float32),
            "pos": rng.normal(size=2), "count": np.array(rng.integers(0, 1 << 40), dtype=np.int64),
            "contact": rng.random(2) < 0.5}


def feed(asm: EpisodeAssembler, dual: DualBuffer, actor: str, step: Step) -> list[Transition]:
    """What `LearnerCore._apply` does with one step."""
    transitions, _ = asm.add(actor, step)
    for t in transitions:
        dual.add(t)
    return transitions


def rows(batch: dict, i: int) -> tuple:
    return ({k: v[i] for k, v in batch["obs"].items()}, {k: v[i] for k, v in batch["next_obs"].items()},
            batch["action"][i], batch["reward"][i], batch["terminated"][i])


def assert_same_transition(row: tuple, t: Transition) -> None:
    """Bit-for-bit equality (dtypes included) of a gathered row and a reference transition."""
    obs, next_obs, action, reward, terminated = row
    for got, want in ((obs, t.obs), (next_obs, t.next_obs)):
        assert got.keys() == want.keys()
        for k in want:
            w = np.asarray(want[k])
            assert got[k].dtype == w.dtype and got[k].shape == w.shape, k
            assert got[k].tobytes() == w.tobytes(), k
    assert action.dtype == np.float32 and action.tobytes() == np.asarray(t.action, np.float32).tobytes()
    assert reward == np.float32(t.reward) and bool(terminated) == t.terminated


def test_next_obs_is_exact_at_terminals_truncations_and_every_human_policy_switch() -> None:
    rng = np.random.default_rng(1)
    asm, dual = EpisodeAssembler(), DualBuffer(RICH, 100, 100)
    pattern = "PPHHHPHPPH"  # who executed each step: one episode alternating between the two buffers
    reference: list[Transition] = []
    for ep, end in enumerate(("truncated", "terminated")):
        obs = [rich_obs(rng) for _ in range(len(pattern) + 1)]
        for t, who in enumerate(pattern):
            last = t == len(pattern) - 1
            step = Step(obs[t], rng.normal(size=2).astype(np.float32), float(t),
                        terminated=last and end == "terminated", truncated=last and end == "truncated",
                        is_intervention=who == "H", episode=ep, step=t,
                        final_obs=obs[t + 1] if last else None)
            reference.extend(feed(asm, dual, "a", step))
        for t, tr in enumerate(reference[-len(pattern):]):
            assert tr.next_obs is obs[t + 1]  # the assembler's answer, including the final observation
    assert len(dual.human) == 2 * pattern.count("H") and len(dual.policy) == 2 * pattern.count("P")
    for buf, human in ((dual.human, True), (dual.policy, False)):
        mine = [t for t in reference if t.is_intervention == human]
        idx = buf.sampleable()
        batch = buf.gather(idx)
        for i, n in enumerate(buf.transition_numbers(idx)):
            assert_same_transition(rows(batch, i), mine[n])
    # frames: a new one at each episode start and at each switch into a buffer; the rest are shared
    assert dual.human.frames.written == 2 * (pattern.count("H") + 3)   # 3 runs of H per episode
    assert dual.policy.frames.written == 2 * (pattern.count("P") + 3)  # 3 runs of P per episode
    terminal = dual.human.gather(np.flatnonzero(dual.human.terminated))
    assert len(terminal["reward"]) == 1 and terminal["terminated"].all()


def test_consecutive_steps_share_one_frame_each() -> None:
    buf = ReplayBuffer(SPEC, capacity=50)
    for v in range(10):
        buf.add(transition(v))
    assert buf.frames.written == 11 and buf.frames_per_transition() == pytest.approx(1.1)
    buf.add(transition(3, key=7))  # another episode: its first observation gets a frame of its own
    assert buf.frames.written == 13
    buf.add(transition(4, key=7))  # other arrays, same bits as the previous next observation: shared
    assert buf.frames.written == 14


def test_sharing_is_bitwise_and_never_crosses_an_episode_end_or_a_discard() -> None:
    zero = {"x": np.array([0.0, 0.0], np.float32), "cam": np.zeros((4, 4, 3), np.uint8)}
    negzero = {"x": np.array([-0.0, 0.0], np.float32), "cam": np.zeros((4, 4, 3), np.uint8)}
    act = np.zeros(1, np.float32)
    buf = ReplayBuffer(SPEC, capacity=10)
    buf.add(Transition(zero, act, 0.0, zero, False, False, 0, False))
    buf.add(Transition(negzero, act, 0.0, zero, False, True, 0, False))  # -0.0 == 0.0, but not the same bits
    assert buf.frames.written == 4
    buf.add(Transition(zero, act, 0.0, zero, False, False, 0, False))  # after a truncation: a new frame
    assert buf.frames.written == 6
    buf.discard_episode(0)
    buf.add(Transition(zero, act, 0.0, zero, False, False, 0, False))  # after a discard: a new frame
    assert buf.frames.written == 8 and len(buf) == 1
    got = buf.gather(buf.sampleable())
    assert np.signbit(got["obs"]["x"]).sum() == 0


def test_a_transition_is_alive_iff_its_slot_and_its_oldest_frame_are_both_still_there() -> None:
    buf = ReplayBuffer(SPEC, capacity=4, frame_capacity=5)
    for v in range(3):  # three one-step episodes: two frames each
        buf.add(transition(10 * v, key=v))
    # frames 0..5 written, ring holds 1..5: transition 0 (frames 0, 1) died, 1 (2, 3) and 2 (4, 5) live
    assert len(buf) == 2 and buf.oldest == 1
    assert sorted(buf.transition_numbers(buf.sampleable())) == [1, 2]
    for v in range(3, 8):  # one long episode: one frame each, the transition ring becomes the limit
        buf.add(transition(v, key=99))
    assert buf.oldest == buf.added - 4 and len(buf) == 4
    batch = buf.gather(buf.sampleable())
    assert sorted(batch["obs"]["x"][:, 0].tolist()) == [4, 5, 6, 7]
    assert np.all(batch["next_obs"]["x"][:, 0] == batch["obs"]["x"][:, 0] + 1)
    with pytest.raises(ValueError, match="frame_capacity"):
        ReplayBuffer(SPEC, capacity=4, frame_capacity=1)


def test_dtypes_are_preserved_and_uint8_images_stay_uint8() -> None:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(RICH, capacity=8)
    a, b = rich_obs(rng), rich_obs(rng)
    buf.add(Transition(a, np.zeros(2, np.float32), 1.0, b, True, False, 0, False))
    batch = buf.gather(buf.sample_indices(3, rng))
    for name in ("obs", "next_obs"):
        assert {k: v.dtype for k, v in batch[name].items()} == {f.name: np.dtype(f.dtype) for f in RICH.observation}
    assert batch["obs"]["count"].shape == (3,) and batch["obs"]["cam"].shape == (3, 6, 5, 3)
    assert batch["action"].dtype == np.float32 and batch["reward"].dtype == np.float32
    assert batch["terminated"].dtype == np.bool_
    assert buf.valid_slice(("joints",)).keys() == {"joints"}


def naive_bytes_per_transition(spec: Spec) -> int:
    """The full-copy layout: obs and next_obs in full, plus action, reward and five flag/key columns."""
    from hilrl.buffers.frames import observation_nbytes
    return 2 * observation_nbytes(spec) + 4 * spec.action_dim + 4 + 4 + 8 + 1


def test_bytes_per_transition_about_halves_for_image_observations() -> None:
    from hilrl.buffers.frames import observation_nbytes
    cams = (Feature("front", "uint8", (128, 128, 3)), Feature("wrist", "uint8", (128, 128, 3)))
    spec = Spec(observation=(*cams, Feature("state", "float32", (18,))),
                action=Feature("action", "float32", (4,), (-1,) * 4, (1,) * 4))
    compact = ReplayBuffer(spec, capacity=200).bytes_per_transition()
    assert observation_nbytes(spec) < compact < 0.6 * naive_bytes_per_transition(spec)


# ---------------------------------------------------------------------------------------------------
# Property-style: a random stream (episode lengths, takeover segments, ends, discards, restarts) through
# the real assembler into small buffers that wrap many times, against a reference of full copies.

class Reference:
    """Naive model of one buffer: full copies of every transition plus the frame/alive rule."""

    def __init__(self, capacity: int, frame_capacity: int) -> None:
        self.capacity, self.frame_capacity = capacity, frame_capacity
        self.items: list[Transition] = []
        self.obs_frame: list[int] = []
        self.discarded: set[int] = set()
        self.frames = 0
        self.tail_ok = False  # may the next transition continue from the last one?

    def add(self, t: Transition) -> None:
        prev = self.items[-1] if self.items else None
        same = (prev is not None and self.tail_ok and prev.episode_key == t.episode_key
                and all(np.asarray(prev.next_obs[k]).tobytes() == np.asarray(t.obs[k]).tobytes() for k in t.obs))
        self.obs_frame.append(self.frames - 1 if same else self.frames)
        self.frames += 1 if same else 2
        self.items.append(t)
        self.tail_ok = not (t.terminated or t.truncated)

    def discard(self, key: int) -> None:
        live = self.alive()
        self.discarded |= {n for n in live if self.items[n].episode_key == key}
        if self.items and self.items[-1].episode_key == key:
            self.tail_ok = False

    def alive(self) -> list[int]:
        n = len(self.items)
        oldest_frame = self.frames - self.frame_capacity
        return [i for i in range(max(0, n - self.capacity), n) if self.obs_frame[i] >= oldest_frame]

    def sampleable(self) -> set[int]:
        return set(self.alive()) - self.discarded


def check(buf: ReplayBuffer, ref: Reference, rng: np.random.Generator) -> None:
    expected = ref.sampleable()
    assert len(buf) == len(expected) and buf.added == len(ref.items) and buf.frames.written == ref.frames
    idx = buf.sampleable()
    assert set(buf.transition_numbers(idx).tolist()) == expected
    if expected:
        idx = np.concatenate([idx, buf.sample_indices(32, rng)])
        batch = buf.gather(idx)
        for i, n in enumerate(buf.transition_numbers(idx)):
            assert n in expected
            assert_same_transition(rows(batch, i), ref.items[n])


@pytest.mark.parametrize("frame_slack", [0.125, 0.0, 1.0])
def test_random_stream_with_many_wraps_matches_a_full_copy_reference(frame_slack: float) -> None:
    rng = np.random.default_rng(int(frame_slack * 1000) + 7)
    dual = DualBuffer(RICH, 23, 31, frame_slack=frame_slack)
    refs = {True: Reference(dual.human.capacity, dual.human.frames.capacity),
            False: Reference(dual.policy.capacity, dual.policy.frames.capacity)}
    asm = EpisodeAssembler()
    episode_id, n_steps = 0, 0
    while n_steps < 1500:
        episode_id += 1
        length = int(rng.integers(1, 15))
        human = bool(rng.random() < 0.3)
        end = "terminated" if rng.random() < 0.5 else "truncated"
        cut = int(rng.integers(0, length)) if rng.random() < 0.15 else None  # discard or restart mid-episode
        obs = rich_obs(rng)
        for t in range(length):
            if rng.random() < 0.25:  # a takeover starts or ends here
                human = not human
            nxt = obs if rng.random() < 0.1 else rich_obs(rng)  # sometimes the arm does not move at all
            last = t == length - 1
            step = Step(obs, rng.uniform(-1, 1, 2).astype(np.float32), float(rng.normal()),
                        terminated=last and end == "terminated", truncated=last and end == "truncated",
                        is_intervention=human, episode=episode_id, step=t, final_obs=nxt if last else None)
            for tr in feed(asm, dual, "actor", step):
                refs[tr.is_intervention].add(tr)
                n_steps += 1
            obs = nxt
            if cut == t:
                if rng.random() < 0.6:  # the operator discards the episode ...
                    key = asm.discard("actor", episode_id)
                    removed = dual.discard_episode(key)
                    before = len(refs[True].discarded) + len(refs[False].discarded)
                    refs[True].discard(key)
                    refs[False].discard(key)
                    assert removed == len(refs[True].discarded) + len(refs[False].discarded) - before
                break  # ... or the actor restarts: the waiting step is dropped by the assembler
        if episode_id % 7 == 0:
            check(dual.human, refs[True], rng)
            check(dual.policy, refs[False], rng)
    for buf, human in ((dual.human, True), (dual.policy, False)):
        check(buf, refs[human], rng)
        assert buf.added > 8 * buf.capacity  # wrapped many times
        assert buf.frames_per_transition() < 1.6  # frames are shared
        if frame_slack == 1.0:  # twice the frames: nothing ever retires early
            assert buf.oldest == buf.added - buf.capacity
    seed = int(rng.integers(1 << 30))
    batch = dual.sample(64, 0.5, np.random.default_rng(seed))
    again = np.random.default_rng(seed)
    parts = [(dual.human, refs[True], dual.human.sample_indices(32, again)),
             (dual.policy, refs[False], dual.policy.sample_indices(32, again))]
    assert batch["human"].tolist() == [1.0] * 32 + [0.0] * 32
    for row, (buf, ref, idx) in enumerate((b, r, i) for b, r, ix in parts for i in ix):
        assert_same_transition(rows(batch, row), ref.items[int(buf.transition_numbers(np.array([idx]))[0])])


# ---------------------------------------------------------------------------------------------------
# The torch path for the trainer.

def test_to_torch_keeps_structure_dtypes_and_values_on_cpu() -> None:
    torch = pytest.importorskip("torch")
    from hilrl.buffers.torch_batch import to_torch, transfer_plan

    rng = np.random.default_rng(0)
    dual = DualBuffer(RICH, 10, 10)
    for human in (True, False):
        dual.add(Transition(rich_obs(rng), np.ones(2, np.float32), 1.0, rich_obs(rng), True, False, 0, human))
    batch = dual.sample(6, 0.5, rng)
    out = to_torch(batch, "cpu")
    assert out.keys() == batch.keys() and out["obs"].keys() == batch["obs"].keys()
    assert out["obs"]["cam"].dtype == torch.uint8 and out["terminated"].dtype == torch.bool
    for k in batch["next_obs"]:
        np.testing.assert_array_equal(out["next_obs"][k].numpy(), batch["next_obs"][k])
    assert out["human"].tolist() == batch["human"].tolist()
    assert transfer_plan("cpu").pin_memory is False


def test_to_torch_pins_and_copies_asynchronously_only_for_an_available_cuda(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    from hilrl.buffers import torch_batch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_batch.transfer_plan("cuda").pin_memory is False  # nothing to pin for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = torch_batch.transfer_plan("cuda:0")
    assert plan.pin_memory and plan.non_blocking and plan.device == torch.device("cuda", 0)
    assert not torch_batch.transfer_plan("cpu").pin_memory

    calls = {"pin": 0, "non_blocking": []}
    real_to = torch.Tensor.to

    def fake_pin(self):
        calls["pin"] += 1
        return self.clone()

    def spy_to(self, *args, **kwargs):
        calls["non_blocking"].append(kwargs.get("non_blocking"))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    batch = {"obs": {"cam": np.arange(12, dtype=np.uint8).reshape(2, 2, 3)}, "reward": np.ones(2, np.float32)}
    out = torch_batch.to_torch(batch, "cpu", pin_memory=True)  # the CUDA path, with a CPU target
    assert calls["pin"] == 2 and calls["non_blocking"] == [True, True]
    assert out["obs"]["cam"].numpy().tolist() == batch["obs"]["cam"].tolist()
