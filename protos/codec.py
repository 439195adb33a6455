"""Translate between numpy/domain values and hilrl.v1 protobuf messages.

Decoding validates everything that comes off the network (dtype, shape, byte length, finiteness)
and raises `DecodeError` with a message naming the offending field; it never unpickles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from hilrl.buffers.assembler import Discard, Step
from hilrl.buffers.spec import SUPPORTED_DTYPES, Feature, Spec
from hilrl.protos.v1 import learner_pb2 as pb

PROTOCOL_VERSION = 1
MAX_TENSOR_DIMS = 8

STAGE_NAMES = {
    pb.STAGE_WAITING_FOR_DEMOS: "waiting_for_demos",
    pb.STAGE_OFFLINE: "offline",
    pb.STAGE_ONLINE: "online",
}
STAGE_VALUES = {name: value for value, name in STAGE_NAMES.items()}


class DecodeError(ValueError):
    """A message from the network is malformed; the text says which field and why."""


def encode_tensor(array: np.ndarray) -> pb.Tensor:
    array = np.asarray(array)
    if array.dtype.name not in SUPPORTED_DTYPES:
        raise ValueError(f"cannot send dtype {array.dtype}; supported: {SUPPORTED_DTYPES}")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return pb.Tensor(dtype=array.dtype.name, shape=list(array.shape), data=np.ascontiguousarray(little).tobytes())


def decode_tensor(msg: pb.Tensor, what: str = "tensor", *, allow_nonfinite: bool = False) -> np.ndarray:
    """The array of a Tensor message, after checking it is well formed: a read-only view over the message's
    `data` bytes (no copy; a native-order copy only on big-endian hosts)."""
    if msg.dtype not in SUPPORTED_DTYPES:
        raise DecodeError(f"{what}: unsupported dtype {msg.dtype!r} (supported: {', '.join(SUPPORTED_DTYPES)})")
    shape = tuple(int(s) for s in msg.shape)
    if len(shape) > MAX_TENSOR_DIMS or any(s < 0 for s in shape):
        raise DecodeError(f"{what}: invalid shape {list(shape)}")
    dtype = np.dtype(msg.dtype).newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize
    data = msg.data  # (each read of a bytes field makes a new copy)
    if len(data) != expected:
        raise DecodeError(f"{what}: {len(data)} bytes for {msg.dtype}{list(shape)}, expected {expected}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    if not allow_nonfinite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DecodeError(f"{what}: contains NaN or inf")
    return array


def encode_tensor_map(arrays: Mapping[str, np.ndarray]) -> dict[str, pb.Tensor]:
    return {k: encode_tensor(v) for k, v in arrays.items()}


def decode_observation(msg_map: Mapping[str, pb.Tensor], spec: Spec, what: str) -> dict[str, np.ndarray]:
    """Decode an observation map and check it against the spec feature by feature."""
    names = set(msg_map.keys())
    expected = set(spec.observation_names)
    if names != expected:
        missing, extra = sorted(expected - names), sorted(names - expected)
        raise DecodeError(f"{what}: observation keys differ from the spec (missing {missing}, unexpected {extra})")
    out = {}
    for feature in spec.observation:
        out[feature.name] = _decode_feature(msg_map[feature.name], feature, f"{what}.{feature.name}")
    return out


def decode_action(msg: pb.Tensor, spec: Spec, what: str) -> np.ndarray:
    return _decode_feature(msg, spec.action, f"{what}.action")


def _decode_feature(msg: pb.Tensor, feature: Feature, what: str) -> np.ndarray:
    array = decode_tensor(msg, what)
    if array.dtype.name != feature.dtype or array.shape != feature.shape:
        raise DecodeError(f"{what}: got {array.dtype.name}{list(array.shape)}, "
                          f"spec says {feature.dtype}{list(feature.shape)}")
    return array


def encode_spec(spec: Spec) -> pb.Spec:
    return pb.Spec(observation=[_encode_feature(f) for f in spec.observation], action=_encode_feature(spec.action))


def decode_spec(msg: pb.Spec) -> Spec:
    try:
        return Spec(tuple(_decode_feature_spec(f) for f in msg.observation), _decode_feature_spec(msg.action))
    except ValueError as exc:
        raise DecodeError(f"invalid spec: {exc}") from exc


def _encode_feature(f: Feature) -> pb.Feature:
    return pb.Feature(name=f.name, dtype=f.dtype, shape=list(f.shape), low=list(f.low), high=list(f.high))


def _decode_feature_spec(f: pb.Feature) -> Feature:
    return Feature(f.name, f.dtype, tuple(f.shape), tuple(f.low), tuple(f.high))


# --------------------------------------------------------------------------- transition batches


def encode_step(step: Step) -> pb.Item:
    t = pb.Transition(
        observation=encode_tensor_map(step.obs),
        action=encode_tensor(step.action),
        reward=float(step.reward),
        terminated=step.terminated,
        truncated=step.truncated,
        is_intervention=step.is_intervention,
        episode=step.episode,
        step=step.step,
    )
    if step.final_obs is not None:
        for k, v in encode_tensor_map(step.final_obs).items():
            t.final_observation[k].CopyFrom(v)
    return pb.Item(transition=t)


def encode_item(item: Step | Discard) -> pb.Item:
    if isinstance(item, Discard):
        return pb.Item(discard=pb.DiscardEpisode(episode=item.episode))
    return encode_step(item)


def decode_items(batch: pb.TransitionBatch, spec: Spec) -> list[Step | Discard]:
    """Decode and validate every item of a batch against the spec; DecodeError names the culprit."""
    out: list[Step | Discard] = []
    for i, item in enumerate(batch.items):
        what = f"batch {batch.seq} item {i}"
        kind = item.WhichOneof("kind")
        if kind == "discard":
            out.append(Discard(item.discard.episode))
        elif kind == "transition":
            out.append(_decode_transition(item.transition, spec, what))
        else:
            raise DecodeError(f"{what}: empty item (neither transition nor discard)")
    return out


def _decode_transition(t: pb.Transition, spec: Spec, what: str) -> Step:
    if not math.isfinite(t.reward):
        raise DecodeError(f"{what}: reward is {t.reward}")
    ends = t.terminated or t.truncated
    if ends != (len(t.final_observation) > 0):
        raise DecodeError(f"{what}: final_observation must be present exactly when the episode ends "
                          f"(terminated={t.terminated}, truncated={t.truncated})")
    return Step(
        obs=decode_observation(t.observation, spec, f"{what}.observation"),
        action=decode_action(t.action, spec, what),
        reward=float(t.reward),
        terminated=t.terminated,
        truncated=t.truncated,
        is_intervention=t.is_intervention,
        episode=int(t.episode),
        step=int(t.step),
        final_obs=decode_observation(t.final_observation, spec, f"{what}.final_observation") if ends else None,
    )


STATUS_SCALARS = ("learner_step", "offline_steps", "weight_version", "demo_episodes", "demo_episodes_needed",
                  "ingest_backlog_batches", "ingest_backlog_bytes")


def encode_status(status: Mapping) -> pb.StatusReply:
    """The learner's status (``LearnerCore.status()``) as a StatusReply; `decode_status` is its inverse."""
    return pb.StatusReply(
        protocol_version=PROTOCOL_VERSION, run_id=status["run_id"], store_problem=status["store_problem"],
        stage=STAGE_VALUES[status["stage"]], **{k: status[k] for k in STATUS_SCALARS},
        human=pb.BufferStatus(**status["buffers"]["human"]), policy=pb.BufferStatus(**status["buffers"]["policy"]),
        actors=[pb.ActorStatus(**a) for a in status["actors"]])


def decode_status(reply: pb.StatusReply) -> dict:
    """A StatusReply as the dict ``LearnerCore.status()`` returns (what `hilrl status` prints), plus the
    learner's protocol version; float fields rounded to 2 decimals."""
    def fields(message) -> dict:
        return {f.name: round(v, 2) if isinstance(v := getattr(message, f.name), float) else v
                for f in message.DESCRIPTOR.fields}

    return {"stage": STAGE_NAMES.get(reply.stage, "unknown"), **{k: getattr(reply, k) for k in STATUS_SCALARS},
            "buffers": {"human": fields(reply.human), "policy": fields(reply.policy)},
            "actors": [fields(a) for a in reply.actors], "run_id": reply.run_id,
            "store_problem": reply.store_problem, "protocol_version": reply.protocol_version}
