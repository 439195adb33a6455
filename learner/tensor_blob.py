"""Policy weights as one safetensors buffer: the layout, encoding and zero-copy decoding.

The format is plain safetensors (an 8-byte little-endian header length, a JSON header, the raw little-endian
tensor bytes), so ``policy.safetensors`` stays loadable by the safetensors library; nothing here unpickles
anything. `learner.weights` publishes and receives versions in this layout (its buffers are made with `layout`
and `new_buffer`, once per buffer); `learner.networks` reads and writes policy files with `encode` / `decode`.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import torch
from torch import Tensor

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own bound


class BlobError(ValueError):
    """Bytes that are not a well-formed safetensors buffer, or weights that fail their sha256 check."""


def layout(tensors: dict[str, Tensor], metadata: dict[str, str] | None) -> tuple[bytes, list[tuple[str, int, int]]]:
    """The header bytes and each tensor's (name, begin, end) in the whole buffer. Tensors are laid out by element
    size, largest first, so every tensor starts aligned to its element size."""
    items = sorted(tensors.items(), key=lambda kv: -kv[1].element_size())
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
    head = struct.pack("<Q", len(text)) + text
    return head, [(name, len(head) + header[name]["data_offsets"][0], len(head) + header[name]["data_offsets"][1])
                  for name, _ in items]

def new_buffer(head: bytes, spans: list[tuple[str, int, int]]) -> Tensor:
    """A buffer for this layout with its header written (the tensor bytes are not zeroed)."""
    flat = torch.empty(spans[-1][2] if spans else len(head), dtype=torch.uint8)  # not zeroed: every byte is written
    flat[:len(head)].copy_(torch.frombuffer(bytearray(head), dtype=torch.uint8))
    return flat

def encode(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> memoryview:
    """``tensors`` as safetensors bytes (a read-only view of one new buffer, each tensor copied into it once)."""
    head, spans = layout(tensors, metadata)
    flat = new_buffer(head, spans)
    for name, begin, end in spans:
        flat[begin:end].copy_(tensors[name].detach().contiguous().reshape(-1).view(torch.uint8))
    return memoryview(flat.numpy()).toreadonly()


def decode(buffer: bytearray | bytes) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors buffer. For a ``bytearray`` the tensors are views into it (no copy);
    for read-only ``bytes`` they are copies. Raises `BlobError` on malformed input."""
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
        if count != math.prod(shape) * _itemsize(dtype):
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
