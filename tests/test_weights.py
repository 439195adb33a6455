"""Published weights: encoded once (plain safetensors) into reused buffers, chunked, joined and hashed on the actor
into reused buffers, decoded without copies into a policy equal to one loaded the ordinary way; malformed or
corrupted weights never replace a policy, and a reused buffer never changes a policy in use."""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf.message import DecodeError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from hilrl.actor.link import Chunk, LearnerLink, parse_event
from hilrl.actor.outbox import Outbox
from hilrl.buffers.spec import Feature, Spec
from hilrl.learner.config import LearnerConfig
from hilrl.learner.core import LearnerCore
from hilrl.learner.networks import (
    Policy,
    PolicyConfig,
    policy_from_safetensors_bytes,
    policy_from_tensors,
    policy_metadata,
    policy_to_safetensors_bytes,
)
from hilrl.learner.service import WEIGHT_CHUNK_BYTES, weight_chunks
from hilrl.learner.tensor_blob import BlobError, decode, encode
from hilrl.learner.weights import EncodedWeights, WeightReceiver
from hilrl.protos.v1 import learner_pb2 as pb

TENSORS = {"u8": torch.arange(5, dtype=torch.uint8), "f32": torch.randn(3, 4), "flag": torch.tensor([True, False]),
           "f64": torch.randn(3, dtype=torch.float64), "empty": torch.empty(0, 2), "bf16": torch.randn(3).bfloat16(),
           "i64": torch.tensor([-1, 2**40])}


def test_encoding_is_safetensors_both_ways() -> None:
    ours = bytes(encode(TENSORS, {"k": "v"}))
    theirs = st_load(ours)
    assert set(theirs) == set(TENSORS) and all(torch.equal(theirs[k], TENSORS[k]) for k in TENSORS)
    for blob in (ours, bytearray(ours), st_save(TENSORS, {"k": "v"}), bytearray(st_save(TENSORS))):
        tensors, metadata = decode(blob)
        assert all(torch.equal(tensors[k], TENSORS[k]) and tensors[k].dtype == TENSORS[k].dtype for k in TENSORS)
    assert decode(ours)[1] == {"k": "v"}


def test_decoding_a_bytearray_views_it_without_copies() -> None:
    buffer = bytearray(encode({"w": torch.randn(1000)}))
    w = decode(buffer)[0]["w"]
    base = torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
    assert base <= w.data_ptr() < base + len(buffer)


def _blob(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("blob", [
    b"", b"\x00" * 7, struct.pack("<Q", 10**9) + b"{}", struct.pack("<Q", 4) + b"nope",
    _blob([]),  # type: ignore[arg-type]
    _blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),  # 4 bytes for 2 floats
    _blob({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4),  # past the end
    _blob({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
           "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8),  # overlap + gap
    _blob({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8),  # trailing bytes
    _blob({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8),  # unknown dtype
    _blob({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
    _blob({"a": {"dtype": "F32"}}, b"\0" * 4),
])
def test_malformed_blobs_are_refused(blob: bytes) -> None:
    with pytest.raises(BlobError):
        decode(blob)


def _reference_load(cfg: PolicyConfig, blob: bytes) -> Policy:
    """The previous way: a randomly initialised policy, the safetensors library's tensors copied in."""
    policy = Policy(cfg)
    policy.load_state_dict(st_load(blob), strict=True)
    return policy.eval().requires_grad_(False)


@pytest.mark.parametrize("cfg", [
    PolicyConfig(6, 2, (16, 16)),
    PolicyConfig(6, 2, (16,), chunk=3),
    PolicyConfig(6, 2, (16,), residual_scale=0.1, base_action_index=4),
    PolicyConfig(3, 2, (16,), cameras=("front",), image_shape=(32, 32, 3), image_feature_dim=8),
], ids=["state", "chunked", "residual", "camera"])
def test_decoded_policy_equals_the_ordinary_load(cfg: PolicyConfig) -> None:
    torch.manual_seed(0)
    policy = Policy(cfg)
    low, high = -np.ones(cfg.action_dim), np.ones(cfg.action_dim) * 2
    policy.set_normalization(np.arange(cfg.state_dim), np.linspace(0.5, 2, cfg.state_dim), low, high)
    blob = policy_to_safetensors_bytes(policy)
    ours, reference = policy_from_safetensors_bytes(cfg, bytearray(blob)), _reference_load(cfg, blob)
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    assert dict(ours.named_buffers()).keys() == dict(reference.named_buffers()).keys()
    for (name, a), (_, b) in zip(ours.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    state = torch.randn(5, cfg.state_dim)
    images = {"front": torch.randint(0, 255, (5, 32, 32, 3), dtype=torch.uint8)} if cfg.cameras else None
    assert torch.equal(ours(state, images), reference(state, images))


def test_a_wrong_shape_or_dtype_is_refused() -> None:
    blob = policy_to_safetensors_bytes(Policy(PolicyConfig(6, 2, (16,))))
    with pytest.raises(RuntimeError):
        policy_from_safetensors_bytes(PolicyConfig(6, 2, (8,)), blob)
    doubled = {k: v.double() for k, v in st_load(blob).items()}
    with pytest.raises(ValueError, match="dtype"):
        policy_from_safetensors_bytes(PolicyConfig(6, 2, (16,)), bytes(encode(doubled)))


def _chunks(weights: EncodedWeights) -> list:
    return [pb.LearnerEvent.FromString(event).weights for event in weight_chunks(weights)]


def _add(receiver: WeightReceiver, chunks: list) -> list:
    return [receiver.add(c.version, c.offset, c.total_size, c.data, c.sha256) for c in chunks]


def test_hand_framed_chunks_are_the_messages_protobuf_would_write() -> None:
    data = bytes(range(256)) * (WEIGHT_CHUNK_BYTES // 100)
    weights = EncodedWeights.of(data, version=300)
    framed = list(weight_chunks(weights))
    offsets = range(0, len(data), WEIGHT_CHUNK_BYTES)
    expected = [pb.LearnerEvent(weights=pb.WeightsChunk(  # the sha256 in the last chunk only
        version=300, sha256=weights.sha256 if o == offsets[-1] else "", total_size=len(data), offset=o,
        data=data[o:o + WEIGHT_CHUNK_BYTES])) for o in offsets]
    assert [pb.LearnerEvent.FromString(f) for f in framed] == expected


def test_the_actor_reads_weight_chunks_by_hand_as_protobuf_would() -> None:
    data = bytes(range(256)) * 5000
    for framed in weight_chunks(EncodedWeights.of(data, version=2**40)):
        ours, theirs = parse_event(framed), pb.LearnerEvent.FromString(framed).weights
        assert isinstance(ours, Chunk) and isinstance(ours.data, memoryview)
        assert (ours.version, ours.offset, ours.total_size, bytes(ours.data), ours.sha256) == \
            (theirs.version, theirs.offset, theirs.total_size, theirs.data, theirs.sha256)
    chunk = pb.WeightsChunk(version=3, sha256="ab", total_size=9, offset=4, data=b"xyz")
    extra = chunk.SerializeToString() + bytes([9 << 3]) + b"\x05" + bytes([10 << 3 | 2, 2]) + b"hi"  # unknown fields
    event = bytes([2 << 3 | 2, len(extra)]) + extra
    assert parse_event(event) == Chunk(3, 4, 9, memoryview(b"xyz"), "ab")
    stage = pb.LearnerEvent(stage=2).SerializeToString()
    assert parse_event(stage) == pb.LearnerEvent(stage=2)
    with pytest.raises(DecodeError):  # malformed: protobuf's own error, as before
        parse_event(bytes([2 << 3 | 2, 50]) + b"\x08")


def test_chunks_join_into_the_published_bytes_and_a_bad_hash_is_refused() -> None:
    data = bytes(np.random.default_rng(0).integers(0, 256, 2 * WEIGHT_CHUNK_BYTES + 17, dtype=np.uint8))
    chunks = _chunks(EncodedWeights.of(data, 3))
    assert len(chunks) == 3 and b"".join(c.data for c in chunks) == data
    received = []
    receiver = WeightReceiver(lambda tensors: received.append(tensors) or "policy")
    with pytest.raises(BlobError, match="could not be loaded"):  # hash fine, not safetensors
        _add(receiver, chunks)
    blob = bytes(encode({"w": torch.arange(3 * WEIGHT_CHUNK_BYTES // 4, dtype=torch.float32)}))
    chunks = _chunks(EncodedWeights.of(blob, 4))
    assert _add(receiver, chunks) == [None] * (len(chunks) - 1) + [4] and receiver.take() == (4, "policy")
    assert torch.equal(received[0]["w"], decode(blob)[0]["w"]) and receiver.take() is None
    with pytest.raises(BlobError, match="sha256"):
        _add(receiver, chunks[:-1] + [pb.WeightsChunk(version=4, offset=chunks[-1].offset, total_size=len(blob),
                                                      data=chunks[-1].data, sha256="0" * 64)])
    with pytest.raises(BlobError, match="does not follow"):  # a chunk missing
        _add(receiver, [chunks[0], chunks[2]])
    assert _add(receiver, chunks[3:]) == [None] * len(chunks[3:])  # the rest of that version: dropped quietly
    empty = _chunks(EncodedWeights.of(b"", version=5))
    with pytest.raises(BlobError, match="could not be loaded"):
        _add(receiver, empty)
    assert len(empty) == 1 and receiver.take() is None


def test_corrupted_or_malformed_weights_are_rejected_and_the_old_policy_kept(tmp_path: Path, caplog) -> None:
    spec = Spec(observation=(Feature("s", "float32", (3,)),), action=Feature("action", "float32", (2,), (-1, -1),
                                                                               (1, 1)))
    link = LearnerLink("127.0.0.1:1", "a", spec, Outbox(tmp_path))
    link.policy_config = PolicyConfig(3, 2, (8,))
    good = policy_to_safetensors_bytes(Policy(link.policy_config))
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF

    def send(version: int, data: bytes, sha256: str) -> None:
        for chunk in _chunks(EncodedWeights(version, data, sha256)):
            link._receive(chunk)

    send(2, bytes(flipped), EncodedWeights.of(good).sha256)  # a byte flipped in transit
    truncated = good[: len(good) // 2]
    send(3, truncated, EncodedWeights.of(truncated).sha256)  # hash fine, blob unusable
    assert link.take_policy() is None
    assert "failed the sha256 check" in caplog.text and "could not be loaded" in caplog.text
    send(4, good, EncodedWeights.of(good).sha256)
    version, _ = link.take_policy()
    assert version == 4
    link.channel.close()


def _outputs(policy: Policy, state: torch.Tensor) -> torch.Tensor:
    return policy(state).clone()


def test_reused_buffers_never_expose_a_half_written_or_corrupt_version_to_the_running_policy() -> None:
    """The actor's three buffers: the running policy's and the pending one's are never written; a version being
    received (or failing its sha256) changes neither; a buffer whose header is unchanged keeps its policy object,
    which then computes exactly what a freshly loaded policy of that version does."""
    cfg = PolicyConfig(6, 2, (64, 64))
    torch.manual_seed(0)
    policies = [Policy(cfg) for _ in range(6)]
    blobs = [policy_to_safetensors_bytes(p) for p in policies]
    state = torch.randn(4, cfg.state_dim)
    builds = []
    receiver = WeightReceiver(lambda tensors: builds.append(1) or policy_from_tensors(cfg, tensors))
    chunk = 4096

    def chunks(v: int, sha256: str | None = None) -> list[tuple]:
        blob = blobs[v]
        return [(v, o, len(blob), blob[o:o + chunk], sha256 or (EncodedWeights.of(blob).sha256
                                                                  if o + chunk >= len(blob) else ""))
                for o in range(0, len(blob), chunk)]

    def add(items: list[tuple]):
        return [receiver.add(*item) for item in items][-1]

    assert add(chunks(0)) == 0
    version, running = receiver.take()
    expect = _outputs(policies[0], state)
    assert add(chunks(1)) == 1  # pending, not taken
    second = chunks(2)
    for item in second[:-1]:  # half written: neither the running nor the pending policy moved
        receiver.add(*item)
        assert torch.equal(running(state), expect)
    assert add(second[-1:]) == 2  # v2 replaces v1 as the pending version; v1's buffer is free again
    version, running = receiver.take()
    assert version == 2 and torch.equal(running(state), _outputs(policies[2], state))
    expect = _outputs(policies[2], state)
    for v in (3, 4):  # the running policy's buffer is never written, even by a version that fails its sha256
        with pytest.raises(BlobError, match="sha256"):
            add(chunks(v, sha256="0" * 64))
        assert torch.equal(running(state), expect) and receiver.take() is None
    for v in (3, 4, 5):  # every later version reuses a buffer and the policy object built on it
        assert add(chunks(v)) == v
        version, running = receiver.take()
        fresh = policy_from_safetensors_bytes(cfg, blobs[v])
        assert version == v and torch.equal(running(state), _outputs(fresh, state))
    assert len(builds) == 3  # one policy per buffer, then only bytes are written


def test_learner_buffers_are_reused_only_when_no_stream_reads_them(tmp_path: Path) -> None:
    """The publisher reuses its encode buffers (no fresh allocation per version), but never one the current version
    or a stream is reading: a stream that picked up a version whose buffer was reused since sends none of it."""
    core = LearnerCore(LearnerConfig(output_dir=tmp_path))
    core.open()
    policy = Policy(PolicyConfig(6, 2, (16,)))

    def publish() -> EncodedWeights:
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(1.0)
        core.weights.publish(policy.state_dict(), policy_metadata(policy))
        assert core.weights.current.sha256  # hashed (the hash, too, holds the buffer while it reads)
        assert core.weights.flush()  # its files, too (the file thread holds the buffer meanwhile), as in training
        return core.weights.current

    first = publish()
    streaming = first.chunks(64)
    head = next(streaming)  # a stream is reading v1
    assert head[2] == "" and bytes(head[1]) == bytes(first.data[:64])
    buffers = {id(publish().data.obj) for _ in range(6)}
    assert id(first.data.obj) not in buffers and len(buffers) == 2  # v1's buffer is left alone; two others alternate
    rest = b"".join(bytes(c[1]) for c in streaming)
    assert EncodedWeights.of(bytes(head[1]) + rest).sha256 == first.sha256
    assert [p.name for p in core.run_dir.weight_files()][-1] == "v000007.safetensors"
    late = core.weights.current
    for _ in range(3):  # the three buffers in turn (v1's is free again): late's is taken for v10
        publish()
    assert list(late.chunks(64)) == []
    now = core.weights.current
    assert b"".join(bytes(c[1]) for c in now.chunks(64)) == bytes(policy_to_safetensors_bytes(policy))
    assert core.run_dir.policy.read_bytes() == bytes(now.data)


def test_publish_serves_the_encoded_version_and_writes_its_files(tmp_path: Path) -> None:
    core = LearnerCore(LearnerConfig(output_dir=tmp_path, keep_weight_versions=2))
    core.open()
    policy = Policy(PolicyConfig(6, 2, (16,)))
    assert [core.weights.publish(policy.state_dict(), policy_metadata(policy)) for _ in range(3)] == [1, 2, 3]
    blob = policy_to_safetensors_bytes(policy)
    assert core.weights.version == 3 and bytes(core.weights.current.data) == blob
    assert core.weights.current.sha256 == EncodedWeights.of(blob).sha256
    assert core.weights.flush()  # the weight files are written on their own thread
    assert core.run_dir.policy.read_bytes() == blob
    assert [p.name for p in core.run_dir.weight_files()] == [core.run_dir.weight_file(v).name for v in (2, 3)]
    core.save_state()
    resumed = LearnerCore(LearnerConfig(output_dir=tmp_path, resume=True))
    resumed.open()
    assert resumed.weights.version == 3 and resumed.weights.current.data == blob
    assert resumed.weights.current.sha256 == core.weights.current.sha256


def test_the_weight_files_are_written_off_the_trainer_thread(tmp_path: Path, monkeypatch, caplog) -> None:
    """`publish` returns once the tensors are copied: a slow disk delays only the weight files (`flush` waits for
    them), and a failing one is said once and costs no version; the next write that works clears the problem."""
    core = LearnerCore(LearnerConfig(output_dir=tmp_path))
    core.open()
    policy = Policy(PolicyConfig(6, 2, (16,)))
    run_dir_type, write = type(core.run_dir), type(core.run_dir).write_weights
    disk = threading.Event()

    def slow(self, version: int, data, keep: int) -> None:
        assert disk.wait(60)
        write(self, version, data, keep)

    monkeypatch.setattr(run_dir_type, "write_weights", slow)
    assert core.weights.publish(policy.state_dict(), policy_metadata(policy)) == 1
    assert not core.run_dir.policy.exists()  # publish did not wait for the disk
    disk.set()
    assert core.weights.flush() and core.run_dir.policy.read_bytes() == policy_to_safetensors_bytes(policy)

    def full(self, version: int, data, keep: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_dir_type, "write_weights", full)
    assert core.weights.publish(policy.state_dict(), policy_metadata(policy)) == 2
    assert core.weights.flush() and "No space" in core.weights.files_problem
    assert "weight files of v2 not written" in caplog.text
    monkeypatch.setattr(run_dir_type, "write_weights", write)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    assert core.weights.publish(policy.state_dict(), policy_metadata(policy)) == 3
    assert core.weights.flush() and core.weights.files_problem == ""
    assert core.run_dir.policy.read_bytes() == policy_to_safetensors_bytes(policy)
    assert [p.name for p in core.run_dir.weight_files()] == ["v000001.safetensors", "v000003.safetensors"]


def test_no_actor_can_apply_a_version_whose_number_is_not_on_disk(tmp_path: Path, monkeypatch) -> None:
    """The first chunks stream while the version file is written; the last (with the sha256) waits for it, and a
    failed write takes the version back: the publish fails, a stream of it fails before its last chunk, and the
    previous version stays current."""
    core = LearnerCore(LearnerConfig(output_dir=tmp_path))
    core.open()
    policy = Policy(PolicyConfig(6, 2, (16,)))
    assert core.weights.publish(policy.state_dict(), policy_metadata(policy)) == 1
    before = core.weights.current

    def disk_full(self, version: int) -> None:
        time.sleep(0.5)  # a slow disk: the stream below picks the new version up meanwhile
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(core.run_dir), "write_weights_version", disk_full)
    seen = []
    stream = threading.Thread(target=lambda: seen.append(core.weights.wait_for_change(core.stage, 1, 5.0)[1]))
    stream.start()
    with pytest.raises(OSError, match="No space"):
        core.weights.publish(policy.state_dict(), policy_metadata(policy))
    stream.join()
    assert seen[0].version == 2
    with pytest.raises((OSError, BlobError)):  # the version is withdrawn: its last chunk (the sha256) never leaves
        list(seen[0].chunks(64))
    assert core.weights.current is before and core.weights.version == 1
