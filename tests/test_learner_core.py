"""LearnerCore without the network: spec adoption, dedup by (actor, seq), discards, versions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ingest

from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.replay import dual_buffer_nbytes
from hilrl.buffers.spec import Feature, Spec
from hilrl.learner import memory
from hilrl.learner.config import LearnerConfig
from hilrl.learner.core import LearnerCore, SpecMismatch
from hilrl.learner.memory import BuffersTooLarge

SPEC = Spec(observation=(Feature("x", "float32", (3,)),), action=Feature("action", "float32", (2,), (-1, -1), (1, 1)))


def steps(episode: int, n: int, human: bool) -> list[Step]:
    out = []
    for t in range(n):
        last = t == n - 1
        out.append(Step({"x": np.full(3, t, np.float32)}, np.zeros(2, np.float32), float(last), last, False, human,
                        episode, t, {"x": np.full(3, t + 1, np.float32)} if last else None))
    return out


def core(tmp_path: Path, **kw) -> LearnerCore:
    c = LearnerCore(LearnerConfig(output_dir=tmp_path / "out", **kw))
    c.open()
    return c


def test_first_spec_is_adopted_and_recorded_later_mismatch_is_refused(tmp_path: Path) -> None:
    c = core(tmp_path)
    c.hello("a", SPEC)
    assert Spec.from_dict(json.loads((tmp_path / "out" / "spec.json").read_text())) == SPEC
    other = Spec(observation=(Feature("x", "float32", (4,)),), action=SPEC.action)
    with pytest.raises(SpecMismatch, match=r"x: float32\[3\].*x: float32\[4\]"):
        c.hello("b", other)


def test_duplicate_batches_are_acknowledged_but_stored_once(tmp_path: Path) -> None:
    c = core(tmp_path)
    c.hello("a", SPEC)
    batch = steps(0, 4, human=True)
    assert ingest(c, "a", [(1, batch[:2])], 0)[0] is False
    assert ingest(c, "a", [(1, batch[:2])], 0)[0] is True  # resent after a reconnect
    assert ingest(c, "a", [(2, batch[2:])], 0)[0] is False
    s = c.status()
    assert s["buffers"]["human"]["size"] == 4 and s["actors"][0]["transitions_received"] == 4
    assert s["actors"][0]["last_acked_seq"] == 2 and s["demo_episodes"] == 1


def test_discarded_episode_leaves_the_buffer_and_the_demo_count(tmp_path: Path) -> None:
    c = core(tmp_path)
    c.hello("a", SPEC)
    ingest(c, "a", [(1, steps(0, 3, human=True))], 0)
    ingest(c, "a", [(2, steps(1, 2, human=False)[:1])], 0)  # one policy step: waits for its successor
    ingest(c, "a", [(3, [Discard(1), Discard(0)])], 0)
    s = c.status()
    assert s["buffers"]["human"]["size"] == 0 and s["buffers"]["policy"]["size"] == 0 and s["demo_episodes"] == 0


def test_weight_versions_persist_and_never_repeat(tmp_path: Path) -> None:
    c = core(tmp_path)
    c.hello("a", SPEC)
    assert c.weights.publish(b"one") == 1 and c.weights.publish(b"two") == 2
    assert c.weights.flush()
    c.save_state()
    resumed = core(tmp_path, resume=True)
    assert resumed.weights.version == 2 and resumed.weights.current.data == b"two"
    assert resumed.weights.publish(b"three") == 3 and resumed.weights.flush()
    assert sorted(p.name for p in (tmp_path / "out" / "weights").iterdir())[-1] == "v000003.safetensors"


def test_resume_rebuilds_buffers_and_actor_records_from_the_store(tmp_path: Path) -> None:
    c = core(tmp_path)
    c.hello("a", SPEC)
    ingest(c, "a", [(1, steps(0, 3, human=True))], 0)
    ingest(c, "a", [(2, steps(1, 4, human=False))], 0)
    ingest(c, "a", [(3, steps(2, 2, human=False)[:1])], 0)  # an episode still in progress
    before = c.status()
    resumed = core(tmp_path, resume=True)
    after = resumed.status()
    assert after["buffers"] == before["buffers"] and after["demo_episodes"] == 1
    assert after["actors"][0]["last_acked_seq"] == 3 and after["actors"][0]["transitions_received"] == 7
    resent = steps(2, 2, human=False)[:1]
    assert ingest(resumed, "a", [(3, resent)], 0) == [True]  # resent after the crash: dropped
    ingest(resumed, "a", [(4, steps(2, 2, human=False)[1:])], 0)  # the rest of the episode completes it
    assert resumed.status()["buffers"]["policy"]["size"] == 6


def test_camera_buffers_that_cannot_fit_are_refused_with_capacities_that_would(tmp_path: Path, monkeypatch) -> None:
    cams = Spec(observation=(Feature("x", "float32", (3,)), Feature("front", "uint8", (128, 128, 3)),
                             Feature("wrist", "uint8", (128, 128, 3))), action=SPEC.action)
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 2**30)  # an 8 GiB machine
    c = core(tmp_path, human_capacity=200_000, policy_capacity=500_000)  # ~76 GiB of frames for two cameras
    with pytest.raises(BuffersTooLarge, match=r"need 7\d\.\d GiB .*--human-capacity 200000.*only 8\.0 GiB") as err:
        c.hello("a", cams)
    fits = int(str(err.value).split("about ")[1].split()[0])
    assert 40_000 < fits < 60_000  # 60 % of 8 GiB at ~98 kB per transition
    assert c.spec is None and c.buffers is None  # nothing half-adopted: a learner with smaller capacities can start
    small = core(tmp_path / "small", human_capacity=fits // 3, policy_capacity=fits - fits // 3)
    small.hello("a", cams)
    assert small.buffers is not None and small.spec == cams


def test_default_capacities_size_camera_buffers_from_memory_and_keep_state_defaults(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    from hilrl.learner.features import cached_feature_bytes

    cams = Spec(observation=(Feature("x", "float32", (3,)), Feature("front", "uint8", (128, 128, 3)),
                             Feature("wrist", "uint8", (128, 128, 3))), action=SPEC.action)
    monkeypatch.setattr(memory, "available_memory", lambda: 24 * 2**30)  # a 24 GiB machine
    c = core(tmp_path)  # default (automatic) capacities: a two-camera actor is accepted
    c.hello("a", cams)
    human, policy = c.buffers.human.capacity, c.buffers.policy.capacity
    cache = cached_feature_bytes(cams, c.cfg)  # the default frozen encoder caches 2 views per frame
    assert cache > 0 and (human, policy) == memory.buffer_capacities(cams, None, None, 24 * 2**30, cache)
    assert 10_000 < human < 30_000 and policy == pytest.approx(2.5 * human, rel=0.01)
    assert dual_buffer_nbytes(cams, human, policy) <= 0.4 * 24 * 2**30
    assert memory.buffer_capacities(SPEC, None, None, 24 * 2**30) == (200_000, 500_000)
    assert memory.buffer_capacities(cams, 1000, None, 24 * 2**30)[0] == 1000


def test_automatic_camera_capacities_leave_room_for_the_feature_cache() -> None:
    cams = Spec(observation=(Feature("x", "float32", (3,)), Feature("front", "uint8", (128, 128, 3)),
                             Feature("wrist", "uint8", (128, 128, 3))), action=SPEC.action)
    plain = memory.buffer_capacities(cams, None, None, 24 * 2**30)
    cached = memory.buffer_capacities(cams, None, None, 24 * 2**30, 2 * 2 * 512 * 4 * 4 * 2)
    assert 0.55 < sum(cached) / sum(plain) < 0.65  # 98 kB of pixels + 64 kB of features per frame
