"""Wire encoding: every dtype round-trips, images stay uint8 byte for byte, bad tensors are refused."""

from __future__ import annotations

import numpy as np
import pytest

from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.spec import Feature, Spec
from hilrl.protos import codec
from hilrl.protos.v1 import learner_pb2 as pb

SPEC = Spec(
    observation=(Feature("state", "float32", (5,)), Feature("front", "uint8", (8, 8, 3))),
    action=Feature("action", "float32", (4,), (-1, -1, -1, 0), (1, 1, 1, 2)),
)


def obs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"state": rng.normal(size=5).astype(np.float32),
            "front": rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)}


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8", "int32", "int64", "bool"])
def test_tensor_round_trip_every_dtype(dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(3, 4, 2)) * 100).astype(dtype)
    msg = pb.Tensor.FromString(codec.encode_tensor(array).SerializeToString())
    back = codec.decode_tensor(msg)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_uint8_image_is_byte_identical_and_stays_uint8() -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    msg = codec.encode_tensor(image)
    assert msg.dtype == "uint8" and len(msg.data) == image.nbytes  # 1 byte per pixel channel, not 4
    assert codec.decode_tensor(msg).tobytes() == image.tobytes()


@pytest.mark.parametrize("mutate, message", [
    (lambda m: setattr(m, "dtype", "object"), "unsupported dtype"),
    (lambda m: setattr(m, "data", m.data[:-1]), r"23 bytes for float32\[2, 3\], expected 24"),
    (lambda m: m.shape.append(2), r"24 bytes for float32\[2, 3, 2\], expected 48"),
    (lambda m: setattr(m, "data", np.array([np.nan] * 6, np.float32).tobytes()), "NaN or inf"),
    (lambda m: setattr(m, "data", np.array([np.inf] * 6, np.float32).tobytes()), "NaN or inf"),
])
def test_malformed_tensors_are_refused_with_a_reason(mutate, message: str) -> None:
    msg = codec.encode_tensor(np.zeros((2, 3), np.float32))
    mutate(msg)
    with pytest.raises(codec.DecodeError, match=message):
        codec.decode_tensor(msg, "obs.state")


def test_spec_round_trip() -> None:
    assert codec.decode_spec(pb.Spec.FromString(codec.encode_spec(SPEC).SerializeToString())) == SPEC


def test_batch_round_trip_with_final_observation_and_discard() -> None:
    rng = np.random.default_rng(2)
    steps = [Step(obs(rng), np.array([0.1, -0.2, 0.3, 1.5], np.float32), 0.0, False, False, True, 7, 0),
             Step(obs(rng), np.array([0.0, 0.0, 1.0, 2.0], np.float32), 1.0, True, False, False, 7, 1,
                  final_obs=obs(rng))]
    batch = pb.TransitionBatch(actor_id="a", seq=3, items=[codec.encode_item(s) for s in steps]
                               + [codec.encode_item(Discard(6))])
    items = codec.decode_items(pb.TransitionBatch.FromString(batch.SerializeToString()), SPEC)
    assert isinstance(items[2], Discard) and items[2].episode == 6
    for sent, got in zip(steps, items[:2], strict=True):
        assert (got.reward, got.terminated, got.truncated, got.is_intervention, got.episode, got.step) == (
            sent.reward, sent.terminated, sent.truncated, sent.is_intervention, sent.episode, sent.step)
        np.testing.assert_array_equal(got.action, sent.action)
        for k in sent.obs:
            assert got.obs[k].tobytes() == sent.obs[k].tobytes()
    assert items[0].final_obs is None
    assert items[1].final_obs["front"].tobytes() == steps[1].final_obs["front"].tobytes()


def _one_step_batch(**overrides) -> pb.TransitionBatch:
    rng = np.random.default_rng(3)
    step = Step(obs(rng), np.zeros(4, np.float32), 0.0, False, False, False, 0, 0)
    item = codec.encode_item(step)
    for k, v in overrides.items():
        setattr(item.transition, k, v)
    return pb.TransitionBatch(actor_id="a", seq=1, items=[item])


def test_wrong_shape_against_spec_is_named() -> None:
    batch = _one_step_batch()
    batch.items[0].transition.observation["state"].CopyFrom(codec.encode_tensor(np.zeros(6, np.float32)))
    with pytest.raises(codec.DecodeError, match=r"observation.state: got float32\[6\], spec says float32\[5\]"):
        codec.decode_items(batch, SPEC)


def test_wrong_dtype_image_is_refused() -> None:
    batch = _one_step_batch()
    batch.items[0].transition.observation["front"].CopyFrom(codec.encode_tensor(np.zeros((8, 8, 3), np.float32)))
    with pytest.raises(codec.DecodeError, match="front: got float32"):
        codec.decode_items(batch, SPEC)


def test_missing_observation_key_and_missing_final_observation() -> None:
    batch = _one_step_batch()
    del batch.items[0].transition.observation["front"]
    with pytest.raises(codec.DecodeError, match=r"missing \['front'\]"):
        codec.decode_items(batch, SPEC)
    with pytest.raises(codec.DecodeError, match="final_observation must be present"):
        codec.decode_items(_one_step_batch(terminated=True), SPEC)


def test_nan_reward_and_empty_item_are_refused() -> None:
    with pytest.raises(codec.DecodeError, match="reward is nan"):
        codec.decode_items(_one_step_batch(reward=float("nan")), SPEC)
    with pytest.raises(codec.DecodeError, match="empty item"):
        codec.decode_items(pb.TransitionBatch(actor_id="a", seq=1, items=[pb.Item()]), SPEC)


def test_spec_mismatch_names_each_difference() -> None:
    other = Spec(observation=(Feature("state", "float32", (6,)), Feature("wrist", "uint8", (8, 8, 3))),
                 action=SPEC.action)
    problem = SPEC.mismatch(other)
    assert "'front' is missing" in problem and "'wrist' is unexpected" in problem
    assert "state: float32[5]" in problem and "state: float32[6]" in problem
    assert SPEC.mismatch(SPEC) is None


def test_status_round_trips_through_its_reply() -> None:
    actor = {"id": "arm", "transitions_received": 7, "last_acked_seq": 3, "weight_version_applied": 2,
             "policy_lag": 1, "connected": True, "episodes": 2, "interventions": 4, "loop_period_p50_ms": 100.25,
             "loop_period_p99_ms": 120.5, "overruns": 1, "watchdog_holds": 0, "safety_clamps": 5}
    status = {"run_id": "r", "store_problem": "", "stage": "online", "learner_step": 10, "offline_steps": 4,
              "weight_version": 3, "demo_episodes": 2, "demo_episodes_needed": 2, "ingest_backlog_batches": 1,
              "ingest_backlog_bytes": 4096,
              "buffers": {"human": {"size": 5, "capacity": 10}, "policy": {"size": 0, "capacity": 20}},
              "actors": [actor]}
    assert codec.decode_status(codec.encode_status(status)) == status | {"protocol_version": codec.PROTOCOL_VERSION}
