"""Policy weights as one safetensors buffer, encoded once per version and decoded without copies.

The learner publishes a version by encoding the policy's ``state_dict`` once (`networks.encode_policy`: one copy of
each tensor into one buffer, sha256 computed once); every subscriber's chunks are slices of that buffer.
The actor joins the chunks into one preallocated buffer (`WeightAssembler`, hashing as they arrive), and
`decode` views the tensors inside it (no copy), which `networks.policy_from_tensors` assigns into a `Policy` built
without random initialisation. The format is plain safetensors (an 8-byte little-endian header length, a
JSON header, the raw little-endian tensor bytes), so ``policy.safetensors`` stays loadable by the
safetensors library; nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own bound


class BlobError(ValueError):
    """Bytes that are not a well-formed safetensors buffer."""


@dataclass(frozen=True)
class EncodedWeights:
    """One published version: the safetensors bytes and their sha256, shared by every subscriber."""

    version: int
    data: bytes | memoryview
    sha256: str

    @classmethod
    def of(cls, data: bytes | memoryview, version: int = 0) -> EncodedWeights:
        return cls(version, data, hashlib.sha256(data).hexdigest())

    def chunks(self, size: int) -> Iterator[tuple[int, bytes]]:
        """``(offset, bytes)`` pieces of at most ``size`` bytes (one empty piece for an empty blob)."""
        view = memoryview(self.data)
        for offset in range(0, max(len(self.data), 1), size):
            yield offset, bytes(view[offset:offset + size])


def encode(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> memoryview:
    """``tensors`` as safetensors bytes (a read-only view of one new buffer, each tensor copied into it once:
    no zeroing, no second copy into a ``bytes``). Tensors are laid out by element size, largest first, so every
    tensor starts aligned to its element size."""
    items = sorted(((k, v.detach().to("cpu").contiguous()) for k, v in tensors.items()),
                   key=lambda kv: -kv[1].element_size())
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, t in items:
        if t.dtype not in NAMES:
            raise BlobError(f"tensor {name}: dtype {t.dtype} has no safetensors name")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    start = 8 + len(text)
    flat = torch.empty(start + offset, dtype=torch.uint8)  # not zeroed: every byte is written below
    flat[:start].copy_(torch.frombuffer(bytearray(struct.pack("<Q", len(text)) + text), dtype=torch.uint8))
    for name, t in items:
        begin, end = header[name]["data_offsets"]
        if end > begin:
            flat[start + begin:start + end].copy_(t.reshape(-1).view(torch.uint8))
    return memoryview(flat.numpy()).toreadonly()


def decode(buffer: bytearray | bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors buffer. For a ``bytearray`` the tensors are views into it (no copy;
    do not reuse the buffer); for read-only ``bytes`` they are copies. Raises `BlobError` on malformed input."""
    n = len(buffer)
    if n < 8:
        raise BlobError(f"{n} bytes: too short for a safetensors header")
    (hlen,) = struct.unpack_from("<Q", buffer, 0)
    if hlen > min(MAX_HEADER_BYTES, n - 8):
        raise BlobError(f"header length {hlen} does not fit in {n} bytes")
    try:
        header = json.loads(bytes(buffer[8:8 + hlen]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BlobError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise BlobError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    start, size = 8 + hlen, n - 8 - hlen
    writable = isinstance(buffer, bytearray)
    tensors, spans = {}, []
    for name, entry in header.items():
        dtype, shape, (begin, end) = _entry(name, entry, size)
        count = end - begin
        if count != _numel(shape) * _itemsize(dtype):
            raise BlobError(f"tensor {name}: {count} bytes do not hold shape {shape} of {entry['dtype']}")
        spans.append((begin, end))
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        raw = buffer if writable else bytearray(memoryview(buffer)[start + begin:start + end])
        tensor = torch.frombuffer(raw, dtype=torch.uint8, count=count, offset=start + begin if writable else 0)
        aligned = tensor.data_ptr() % _itemsize(dtype) == 0
        tensors[name] = (tensor if aligned else tensor.clone()).view(dtype).view(shape)
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise BlobError("tensor data overlaps or leaves gaps")
        covered = end
    if covered != size:
        raise BlobError(f"tensor data covers {covered} of {size} bytes")
    return tensors, metadata


def _entry(name: str, entry: Any, size: int) -> tuple[torch.dtype, list[int], tuple[int, int]]:
    try:
        dtype = DTYPES[entry["dtype"]]
        shape = [int(d) for d in entry["shape"]]
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BlobError(f"tensor {name}: malformed header entry {entry!r} ({exc!r})") from None
    if any(d < 0 for d in shape) or not 0 <= begin <= end <= size:
        raise BlobError(f"tensor {name}: shape {shape} / offsets {begin}..{end} outside the {size} data bytes")
    return dtype, shape, (begin, end)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class WeightAssembler:
    """Joins one version's chunks (in order) into one preallocated buffer, hashing each as it arrives.

    `add` returns the finished buffer once the last byte is in and its sha256 matches, raises `BlobError`
    when it does not (or when chunks arrive out of order), and returns None while more is expected.
    """

    def __init__(self) -> None:
        self._buffer: bytearray | None = None
        self._failed = -1  # the version whose remaining chunks are dropped quietly after an error
        self._version = 0
        self._filled = 0
        self._hash = hashlib.sha256()

    def add(self, version: int, offset: int, total: int, data: bytes, sha256: str) -> bytearray | None:
        if offset == 0:
            self._buffer, self._version, self._filled, self._hash = bytearray(total), version, 0, hashlib.sha256()
        buffer = self._buffer
        if buffer is None and offset != 0 and version == self._failed:
            return None
        if buffer is None or version != self._version or offset != self._filled or \
                offset + len(data) > len(buffer):
            self._buffer, self._failed = None, version
            raise BlobError(f"weights v{version}: chunk at {offset} ({len(data)} bytes) does not follow the "
                            f"{self._filled} bytes received of v{self._version}")
        buffer[offset:offset + len(data)] = data
        self._hash.update(data)
        self._filled += len(data)
        if self._filled < len(buffer):
            return None
        self._buffer = None
        if self._hash.hexdigest() != sha256:
            self._failed = version
            raise BlobError(f"weights v{version} failed the sha256 check")
        return buffer
