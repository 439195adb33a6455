"""Cached image features for camera policies with a frozen encoder (the CPU route, ``--algo.feature-views N``).

Why. A frozen encoder maps the same frame to the same feature maps every time, yet `TD3.update`
encodes both frames of all 256 transitions of every minibatch: on a 2-core CPU that is most of an
update (see docs/benchmarks.md). A frame is written once and sampled many times (update-to-data
ratio x batch / buffer size per update), so this cache encodes each frame once and reuses the result.

What augmentation survives. DrQ shifts the *images* by a random integer translation before the
encoder, a fresh one every time a frame is sampled. A cache cannot do that exactly; it stores ``N``
views per frame instead: view 0 is the unshifted frame (what the actor sees when it acts) and views
1..N-1 are independent DrQ shifts (``--algo.image-pad``). Every time a frame is sampled, one of its
``N`` views is picked at random (independently for ``s`` and ``s'``), so the critic still sees the
same frame at several translations. Shifting the cached feature maps instead would move them by whole
cells of 32 pixels (a 128x128 image gives 4x4 maps), far coarser than DrQ's +-4 pixels, so the
shifts are applied to the images before caching. Views are stored as float16 (half the memory; the
heads compute in float32). ``N = 1`` caches only the unshifted frame: no augmentation.

Ownership. The cache lives on the learner side and gets the encoder as a callable (``buffers`` stays
free of learner imports). It is parallel to each replay buffer's `FrameRing`: slot ``f % capacity``
holds frame ``f``'s views together with the frame number, so a frame overwritten in the ring is
re-encoded on its next use and nothing needs invalidating. Images of frames not yet cached are copied
under the caller's lock (`missing_images`) and encoded outside it (`fill`). Only a trainable encoder
changes its features, hence ``feature_views`` requires ``freeze_encoder``.

Acting-time reuse. An actor acting in the same process (benchmarks/camera_study.py) has already encoded
each frame it acted on, unshifted: that is view 0. `offer` keeps it for the frame, and `fill` then
encodes only the shifted views 1..N-1 of such frames (one encoder pass fewer per frame).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hilrl.learner.encoders import feature_map_shape, random_shift

log = logging.getLogger(__name__)
Encoder = Callable[[dict[str, Tensor]], Tensor]  # camera name -> uint8 [N, H, W, 3]  ->  float [N, K, C, h, w]
ENCODE_CHUNK = 64  # frames per encoder call when filling the cache (bounds the activations' memory)


class FeatureRing:
    """The cached views of one replay buffer's frames, slot for slot with its `FrameRing`."""

    def __init__(self, capacity: int, views: int) -> None:
        self.capacity = capacity
        self.views = views
        self.frame = np.full(capacity, -1, dtype=np.int64)  # which frame each slot's views belong to
        self.first = np.full(capacity, -1, dtype=np.int64)  # which frame's view 0 alone a slot holds (`offer`)
        self.data: Tensor | None = None  # [capacity, views, K, C, h, w] float16, allocated on first fill

    def missing(self, frames: np.ndarray) -> np.ndarray:
        """The distinct frame numbers among `frames` whose views are not cached."""
        frames = np.unique(np.asarray(frames, dtype=np.int64))
        return frames[self.frame[frames % self.capacity] != frames]

    def _allocate(self, view_shape: tuple[int, ...]) -> Tensor:
        if self.data is None:
            # np.zeros maps untouched pages lazily: a large ring costs memory only for the frames cached.
            self.data = torch.from_numpy(np.zeros((self.capacity, self.views, *view_shape), dtype=np.float16))
        return self.data

    def store(self, frames: np.ndarray, views: Tensor) -> None:
        """Keep ``views`` ``[M, views, K, C, h, w]`` as the cached views of frame numbers `frames`."""
        data = self._allocate(tuple(views.shape[2:]))
        slots = torch.as_tensor(frames % self.capacity)
        data[slots] = views.to("cpu", torch.float16)
        self.frame[frames % self.capacity] = frames

    def store_first(self, frames: np.ndarray, view0: Tensor) -> None:
        """Keep ``view0`` ``[M, K, C, h, w]`` as view 0 of `frames` (the other views are still to encode)."""
        frames = np.asarray(frames, dtype=np.int64)
        data = self._allocate(tuple(view0.shape[1:]))
        data[torch.as_tensor(frames % self.capacity), 0] = view0.to("cpu", torch.float16)
        self.first[frames % self.capacity] = frames

    def offered(self, frames: np.ndarray) -> np.ndarray:
        """Which of `frames` (not fully cached) have their view 0 from `store_first`."""
        return self.first[np.asarray(frames, dtype=np.int64) % self.capacity] == frames

    def pick(self, frames: np.ndarray, rng: np.random.Generator) -> Tensor:
        """One randomly chosen view per frame number (all cached): ``[B, K, C, h, w]`` float16 on the CPU."""
        assert self.data is not None
        slots = np.asarray(frames, dtype=np.int64) % self.capacity
        if not np.array_equal(self.frame[slots], frames):
            raise KeyError("FeatureRing.pick: some frames are not cached (call fill first)")
        view = rng.integers(0, self.views, size=len(slots))
        return self.data[torch.as_tensor(slots), torch.as_tensor(view)]


class FeatureCache:
    """Encodes each frame's ``views`` once (with a frozen encoder) and serves cached feature maps.

    ``encode`` must not change between calls (a frozen encoder); ``pad`` is DrQ's shift in pixels
    for views 1..N-1; ``device`` is where encoding runs and where `features` returns the maps.
    """

    def __init__(self, encode: Encoder, views: int, pad: int, device: torch.device,
                 generator: torch.Generator | None = None) -> None:
        if views < 1:
            raise ValueError(f"feature views must be at least 1, got {views}")
        self.encode = encode
        self.views = views
        self.pad = pad
        self.device = torch.device(device)
        self.generator = generator
        self.rings: dict[int, FeatureRing] = {}  # id(FrameRing) -> its features
        self.encoded = 0  # frames encoded so far (for benchmarks and logs)
        self.reused = 0  # of those, frames whose view 0 was `offer`ed (not encoded again)

    def ring(self, frame_ring: Any) -> FeatureRing:
        ring = self.rings.get(id(frame_ring))
        if ring is None:
            ring = self.rings[id(frame_ring)] = FeatureRing(frame_ring.capacity, self.views)
        return ring

    def missing_images(self, frame_ring: Any, frames: np.ndarray,
                       cameras: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Frame numbers among `frames` not cached yet and copies of their images (call under the buffer's lock)."""
        missing = self.ring(frame_ring).missing(frames)
        return missing, frame_ring.get(missing, cameras) if len(missing) else {}

    def offer(self, frame_ring: Any, frame: int, view0: Tensor) -> None:
        """Frame `frame`'s view 0 (``[1, K, C, h, w]``: the unshifted encoder pass an actor made to act on it),
        so that `fill` does not encode it again. Only valid while the encoder is the cache's (frozen) one."""
        ring = self.ring(frame_ring)
        if ring.frame[frame % ring.capacity] != frame:
            ring.store_first(np.array([frame]), view0.detach())

    @torch.no_grad()
    def fill(self, frame_ring: Any, frames: np.ndarray, images: dict[str, np.ndarray]) -> None:
        """Encode the views of `frames` (their uint8 images, name -> ``[M, H, W, 3]``) and cache them; view 0
        of frames `offer`ed is taken as it was offered."""
        if len(frames) == 0:
            return
        ring = self.ring(frame_ring)
        frames = np.asarray(frames, dtype=np.int64)
        offered = ring.offered(frames)
        self.reused += int(offered.sum())
        for start in range(0, len(frames), ENCODE_CHUNK):
            part, have = frames[start:start + ENCODE_CHUNK], offered[start:start + ENCODE_CHUNK]
            chunk = {k: torch.as_tensor(v[start:start + ENCODE_CHUNK]).to(self.device) for k, v in images.items()}
            if not have.any():  # view 0: the frame as the actor sees it (encoded now, or when it acted)
                first = self.encode(chunk)
            else:
                assert ring.data is not None
                first = ring.data[torch.as_tensor(part % ring.capacity), 0].to(self.device, torch.float32)
                if not have.all():
                    need = torch.as_tensor(~have)
                    first[need] = self.encode({k: v[need.to(v.device)] for k, v in chunk.items()}).to(first.dtype)
            views = [first]
            for _ in range(1, self.views):
                views.append(self.encode({k: random_shift(v, self.pad, self.generator) for k, v in chunk.items()}))
            ring.store(part, torch.stack(views, dim=1))
        self.encoded += len(frames)

    def features(self, frame_ring: Any, frames: np.ndarray, rng: np.random.Generator) -> Tensor:
        """Float32 feature maps ``[B, K, C, h, w]`` on the device: one random cached view per frame."""
        return self.ring(frame_ring).pick(frames, rng).to(self.device, torch.float32)


def cached_batch(cache: FeatureCache, choose: Callable[[], list[tuple[Any, np.ndarray, float]]], spec: Any,
                 lock: Any, rng: np.random.Generator) -> dict[str, Any]:
    """A TD3 minibatch whose images are replaced by cached feature maps ("fmaps", "next_fmaps").

    ``choose()`` (called under ``lock``) draws ``(ReplayBuffer, slot indices, human flag)`` per side,
    e.g. `dual_indices`. Under ``lock`` only the
    transitions' numbers, state features and the images of uncached frames are copied; the encoder
    runs outside it (a frame overwritten meanwhile was copied before, so its views stay correct).
    """
    cameras = tuple(f.name for f in spec.image_features)
    state_names = tuple(f.name for f in spec.state_features)
    parts, todo = [], []
    with lock:
        for buffer, idx, flag in choose():
            obs_f, next_f = buffer.obs_frame[idx], buffer.next_frame[idx]
            parts.append((buffer, obs_f, next_f, {
                "obs": buffer.frames.get(obs_f, state_names), "next_obs": buffer.frames.get(next_f, state_names),
                "action": buffer.action[idx], "reward": buffer.reward[idx],
                "done": buffer.terminated[idx].astype(np.float32), "human": np.full(len(idx), flag, np.float32)}))
            todo.append((buffer.frames, *cache.missing_images(buffer.frames, np.concatenate([obs_f, next_f]),
                                                              cameras)))
    for frame_ring, frames, images in todo:
        cache.fill(frame_ring, frames, images)
    dev = cache.device

    def cat(get: Callable[[tuple], Any]) -> Tensor:
        return torch.cat([torch.as_tensor(np.asarray(get(p))) for p in parts]).to(dev)

    def state(key: str) -> Tensor:
        return torch.cat([torch.cat([torch.as_tensor(p[3][key][n]).reshape(len(p[1]), -1).float()
                                     for n in state_names], dim=-1) for p in parts]).to(dev)

    return {"state": state("obs"), "next_state": state("next_obs"), "action": cat(lambda p: p[3]["action"]),
            "reward": cat(lambda p: p[3]["reward"]), "done": cat(lambda p: p[3]["done"]),
            "human": cat(lambda p: p[3]["human"]),
            "fmaps": torch.cat([cache.features(p[0].frames, p[1], rng) for p in parts]),
            "next_fmaps": torch.cat([cache.features(p[0].frames, p[2], rng) for p in parts])}


def dual_indices(buffers: Any, batch_size: int, human_ratio: float, rng: np.random.Generator,
                 human_only: bool = False) -> list[tuple[Any, np.ndarray, float]]:
    """`DualBuffer.sample`'s draw, as ``(buffer, slot indices, human flag)`` per non-empty side."""
    n_human, n_policy = (batch_size, 0) if human_only else buffers.split(batch_size, human_ratio)
    return [(b, b.sample_indices(n, rng), flag)
            for b, n, flag in ((buffers.human, n_human, 1.0), (buffers.policy, n_policy, 0.0)) if n]


def feature_cache(td3: Any, chunk: int = 1) -> FeatureCache | None:
    """The cache a `TD3` with a frozen encoder and ``feature_views > 0`` reads; None for a state policy,
    without views, with a trained encoder (its features change every update) or with action chunks."""
    views = td3.cfg.feature_views
    if not views or td3.encoder is None:
        return None
    if not td3.cfg.freeze_encoder:
        log.info("feature cache off: the encoder is trained (--algo.freeze-encoder false), every batch is encoded")
        return None
    if chunk > 1:
        log.warning("feature cache off: it serves one-step TD3 only; with --chunk %d every batch is encoded "
                    "(slower on a CPU)", chunk)
        return None
    log.info("feature cache: %d view(s) per frame (float16), the frozen encoder runs once per frame", views)
    return FeatureCache(td3.policy.encode, views, td3.cfg.image_pad, td3.device, td3.generator)


def cached_feature_bytes(spec: Any, cfg: Any) -> int:
    """Bytes the cache holds per frame for a learner config (0 without ``--algo.feature-views``)."""
    cameras = spec.image_features
    if not cfg.algo.feature_views or not cfg.algo.freeze_encoder or cfg.chunk > 1 or not cameras:
        return 0
    c, h, w = feature_map_shape(tuple(cameras[0].shape[:2]), cfg.encoder)
    return cfg.algo.feature_views * len(cameras) * c * h * w * 2  # float16
