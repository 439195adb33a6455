"""The observation/action spec: names, dtypes, shapes and action bounds of one robot or sim.

The actor derives it from its environment and sends it in the handshake; the learner adopts the
first one it sees and refuses any other. Plain data, JSON-serialisable, no torch/protobuf here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SUPPORTED_DTYPES = ("float32", "float64", "uint8", "int64", "int32", "bool")
# A feature name becomes part of file paths in the learner's store: letters, digits, '_', '.', '-' only.
NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
MAX_DIMS = 8
MAX_STEP_BYTES = 64 << 20  # one step's observation (a few cameras at full HD fit; a mistyped shape does not)


@dataclass(frozen=True)
class Feature:
    """One named array: its dtype, its shape and (for actions) its bounds."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    low: tuple[float, ...] = field(default=())
    high: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name) or self.name in (".", ".."):
            raise ValueError(f"feature name {self.name!r}: use 1-128 letters, digits, '_', '.' or '-' (it names "
                             "files in the learner's store)")
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"feature {self.name!r}: dtype {self.dtype!r} is not one of {SUPPORTED_DTYPES}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "low", tuple(float(v) for v in self.low))
        object.__setattr__(self, "high", tuple(float(v) for v in self.high))
        if len(self.shape) > MAX_DIMS or any(s < 1 for s in self.shape):
            raise ValueError(f"feature {self.name!r}: shape {list(self.shape)} must have at most {MAX_DIMS} "
                             "dimensions, each at least 1")
        if math.prod(self.shape) * np.dtype(self.dtype).itemsize > MAX_STEP_BYTES:
            raise ValueError(f"feature {self.name!r}: {self.dtype}{list(self.shape)} is larger than "
                             f"{MAX_STEP_BYTES >> 20} MiB per step")
        if len(self.low) != len(self.high):
            raise ValueError(f"feature {self.name!r}: low and high bounds differ in length")
        bounds = zip(self.low, self.high, strict=True)
        if not all(math.isfinite(lo) and math.isfinite(hi) and lo <= hi for lo, hi in bounds):
            raise ValueError(f"feature {self.name!r}: bounds must be finite with low <= high")

    @property
    def is_image(self) -> bool:
        return self.dtype == "uint8" and len(self.shape) == 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.low:
            out["low"] = list(self.low)
            out["high"] = list(self.high)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Feature:
        return cls(d["name"], d["dtype"], tuple(d["shape"]), tuple(d.get("low", ())), tuple(d.get("high", ())))

    def describe(self) -> str:
        bounds = f" in [{list(self.low)}, {list(self.high)}]" if self.low else ""
        return f"{self.name}: {self.dtype}{list(self.shape)}{bounds}"


@dataclass(frozen=True)
class Spec:
    """Everything a learner must agree on with an actor before any transition is stored."""

    observation: tuple[Feature, ...]
    action: Feature

    def __post_init__(self) -> None:
        names = [f.name for f in self.observation]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate observation feature names: {names}")
        if len(self.action.shape) != 1:
            raise ValueError(f"action must be a vector, got shape {self.action.shape}")
        n = self.action.shape[0]
        if len(self.action.low) != n:
            raise ValueError(f"action bounds must have {n} entries, got {len(self.action.low)}")
        nbytes = sum(f.size * np.dtype(f.dtype).itemsize for f in self.observation)
        if nbytes > MAX_STEP_BYTES:
            raise ValueError(f"the observation is {nbytes / 2**20:.0f} MiB per step, more than "
                             f"{MAX_STEP_BYTES >> 20} MiB")

    @property
    def observation_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.observation)

    @property
    def state_features(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.observation if not f.is_image)

    @property
    def image_features(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.observation if f.is_image)

    @property
    def state_dim(self) -> int:
        return sum(f.size for f in self.state_features)

    @property
    def action_dim(self) -> int:
        return self.action.shape[0]

    def feature(self, name: str) -> Feature:
        for f in self.observation:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"observation": [f.to_dict() for f in self.observation], "action": self.action.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Spec:
        return cls(tuple(Feature.from_dict(f) for f in d["observation"]), Feature.from_dict(d["action"]))

    def mismatch(self, other: Spec) -> str | None:
        """A human-readable list of differences, or None when the specs agree."""
        problems: list[str] = []
        mine = {f.name: f for f in self.observation}
        theirs = {f.name: f for f in other.observation}
        for name in sorted(mine.keys() - theirs.keys()):
            problems.append(f"observation {name!r} is missing (expected {mine[name].describe()})")
        for name in sorted(theirs.keys() - mine.keys()):
            problems.append(f"observation {name!r} is unexpected ({theirs[name].describe()})")
        for name in sorted(mine.keys() & theirs.keys()):
            if mine[name] != theirs[name]:
                problems.append(f"observation expected {mine[name].describe()}, got {theirs[name].describe()}")
        if self.action != other.action:
            problems.append(f"action expected {self.action.describe()}, got {other.action.describe()}")
        return "; ".join(problems) if problems else None

    def check_observation(self, obs: dict[str, np.ndarray]) -> None:
        """Raise ValueError naming the first feature whose shape/dtype/values are wrong."""
        missing = set(self.observation_names) - obs.keys()
        if missing:
            raise ValueError(f"observation is missing {sorted(missing)}")
        for f in self.observation:
            check_array(f, obs[f.name])

    def check_action(self, action: np.ndarray) -> None:
        check_array(self.action, action)


def check_array(feature: Feature, value: np.ndarray) -> None:
    """Shape, dtype and finiteness check of one array against its feature."""
    if tuple(value.shape) != feature.shape:
        raise ValueError(f"{feature.name}: shape {list(value.shape)} != expected {list(feature.shape)}")
    if value.dtype != np.dtype(feature.dtype):
        raise ValueError(f"{feature.name}: dtype {value.dtype} != expected {feature.dtype}")
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ValueError(f"{feature.name}: contains NaN or inf")


def state_vector(obs: dict[str, np.ndarray], spec: Spec) -> np.ndarray:
    """Concatenate the non-image features, in spec order, into float32 vector(s).

    Works for one observation (features of their spec shape) and for batches (a leading axis).
    """
    parts = []
    for f in spec.state_features:
        value = np.asarray(obs[f.name], dtype=np.float32)
        batch_shape = value.shape[: value.ndim - len(f.shape)]
        parts.append(value.reshape(*batch_shape, f.size))
    return np.concatenate(parts, axis=-1)
