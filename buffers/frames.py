"""A preallocated ring of observation frames addressed by absolute (monotonic) frame numbers.

A *frame* is one complete observation (every feature of the spec, each in its own dtype: uint8
images stay uint8). Frame number ``n`` lives in slot ``n % capacity`` until frame
``n + capacity`` overwrites it, so with ``written`` frames so far the ring holds exactly the frame
numbers ``[written - capacity, written)``. `ReplayBuffer` stores transitions as pairs of frame
numbers into one of these rings.
"""

from __future__ import annotations

import numpy as np

from hilrl.buffers.spec import Spec


def observation_nbytes(spec: Spec) -> int:
    """Bytes of one raw observation (all features, spec dtypes)."""
    return sum(f.size * np.dtype(f.dtype).itemsize for f in spec.observation)


class FrameRing:
    """Fixed-capacity storage of observation frames; the oldest frame is overwritten first."""

    def __init__(self, spec: Spec, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"frame capacity must be positive, got {capacity}")
        self.spec = spec
        self.capacity = capacity
        self.arrays = {f.name: np.zeros((capacity, *f.shape), dtype=f.dtype) for f in spec.observation}
        self.written = 0

    @property
    def oldest(self) -> int:
        """The oldest frame number still held (frames below it have been overwritten)."""
        return max(0, self.written - self.capacity)

    def holds(self, frame: int) -> bool:
        """Whether frame number `frame` is still in the ring."""
        return self.oldest <= frame < self.written

    def write(self, obs: dict[str, np.ndarray]) -> int:
        """Store one observation (cast to the spec dtypes); returns its frame number."""
        frame = self.written
        slot = frame % self.capacity
        for name, arr in self.arrays.items():
            arr[slot] = obs[name]
        self.written += 1
        return frame

    def equals(self, frame: int, obs: dict[str, np.ndarray]) -> bool:
        """Whether `obs`, stored now, would be bit-for-bit the held frame `frame`.

        Bitwise, not numeric, so that e.g. -0.0 and 0.0 are told apart: sharing a frame must never
        change a single stored bit.
        """
        if not self.holds(frame):
            return False
        slot = frame % self.capacity
        for name, arr in self.arrays.items():
            new = np.asarray(obs[name], dtype=arr.dtype)  # what `write` would store
            if new.shape != arr.shape[1:] or new.tobytes() != arr[slot].tobytes():
                return False
        return True

    def get(self, frames: np.ndarray, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The observations (or only the features `names`) of the given held frame numbers, one row each."""
        slots = np.asarray(frames, dtype=np.int64) % self.capacity
        return {name: self.arrays[name][slots] for name in (self.arrays if names is None else names)}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())
