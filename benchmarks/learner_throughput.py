"""Learner updates per second at batch 256: the state policy and a 2-camera 128x128 image policy.

Run: ``python benchmarks/learner_throughput.py [--quick] [--device auto|cpu|cuda|all] [--threads N]``.

Each row is the Trainer's real hot path, one update after another: ``DualBuffer.sample`` (50/50
human/policy, from buffers filled with random transitions) -> `device_batch` (``to_torch``: uint8
images copied as uint8, pinned + asynchronous on CUDA; state assembled on the device) ->
``TD3.update`` (TD3+BC, policy delay 2; images shifted and converted to float on the device).
Columns: updates/s over the whole loop, and the host milliseconds per update spent sampling and
enqueueing the copy ("data ms"; on CUDA the copy itself overlaps with the previous update).

Image policies: ResNet-10 trunk shared by both cameras, DrQ shift (pad 4); "frozen" encodes s and s'
in one no-grad call, "trained" back-propagates the critic loss into the encoder. On a small CPU this
is slow (tens of seconds per update), so CPU image rows measure only a few updates. "cached features"
is the CPU route (``--algo.freeze-encoder --algo.feature-views 2``, learner/features.py): every frame's
views are encoded once beforehand (that one-time cost is printed as frames/s), and the timed updates
read float16 feature maps from the cache; its buffers hold 100 transitions a side to keep the
pre-encoding short (the update's cost does not depend on the buffer size).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from hilrl.buffers.replay import DualBuffer, Transition
from hilrl.buffers.spec import Feature, Spec
from hilrl.learner.features import cached_batch, dual_indices, feature_cache
from hilrl.learner.networks import policy_config_for
from hilrl.learner.td3 import TD3, TD3Config
from hilrl.learner.training import device_batch, resolve_device

BATCH, HIDDEN = 256, (256, 256)
ACTION = Feature("action", "float32", (4,), (-1.0, -1.0, -1.0, 0.0), (1.0, 1.0, 1.0, 2.0))
STATE = (Feature("agent_pos", "float32", (18,)), Feature("environment_state", "float32", (3,)))
CAMERAS = (Feature("front", "uint8", (128, 128, 3)), Feature("wrist", "uint8", (128, 128, 3)))


def filled_buffers(spec: Spec, per_side: int, seed: int = 0) -> DualBuffer:
    """Human and policy buffers with `per_side` random transitions each (episodes of 50 steps)."""
    rng = np.random.default_rng(seed)
    buffers = DualBuffer(spec, per_side, per_side)

    def obs() -> dict[str, np.ndarray]:
        return {f.name: (rng.integers(0, 256, f.shape, dtype=np.uint8) if f.is_image
                         else rng.normal(size=f.shape).astype(np.float32)) for f in spec.observation}

    for human in (True, False):
        current = obs()
        for i in range(per_side):
            nxt = obs()
            buffers.add(Transition(current, rng.uniform(-1, 1, 4).astype(np.float32), float(rng.random() < 0.05),
                                   nxt, False, i % 50 == 49, i // 50 + (0 if human else 10**6), human))
            current = obs() if i % 50 == 49 else nxt
    return buffers


def bench(spec: Spec, device: torch.device, freeze: bool, warmup: int, updates: int,
          views: int = 0) -> tuple[float, float]:
    """(updates/s, host data ms per update) of `updates` timed iterations after `warmup` untimed ones."""
    td3 = TD3(policy_config_for(spec, HIDDEN), TD3Config(freeze_encoder=freeze, feature_views=views), device, seed=0)
    td3.set_normalization(np.zeros(spec.state_dim), np.ones(spec.state_dim), ACTION.low, ACTION.high)
    buffers = filled_buffers(spec, 100 if views else 2000 if spec.image_features else 20_000)
    rng = np.random.default_rng(1)
    cache, lock = feature_cache(td3), contextlib.nullcontext()
    if cache is not None:
        t0 = time.perf_counter()
        for b in (buffers.human, buffers.policy):
            frames = np.arange(b.frames.oldest, b.frames.written)
            cache.fill(b.frames, *cache.missing_images(b.frames, frames, tuple(f.name for f in spec.image_features)))
        sync(device)
        print(f"  (pre-encoded {cache.encoded} frames x {views} views: {cache.encoded / (time.perf_counter() - t0):.1f}"
              " frames/s)", flush=True)

    def sample() -> dict:
        if cache is not None:
            return cached_batch(cache, lambda: dual_indices(buffers, BATCH, 0.5, rng), spec, lock, rng)
        return device_batch(buffers.sample(BATCH, 0.5, rng), spec, device)

    def step() -> float:
        t0 = time.perf_counter()
        batch = sample()
        t1 = time.perf_counter()
        td3.update(batch, bc_weight=1.0, return_tensors=True)  # no per-step host sync, as in the Trainer
        return t1 - t0

    for _ in range(warmup):
        step()
    sync(device)
    data, start = 0.0, time.perf_counter()
    for _ in range(updates):
        data += step()
    sync(device)
    elapsed = time.perf_counter() - start
    return updates / elapsed, 1e3 * data / updates


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few updates per row (a smoke run)")
    parser.add_argument("--device", default="all", choices=["auto", "cpu", "cuda", "all"],
                        help="all = the CPU, and CUDA when present")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--image-updates", type=int, default=0,
                        help="timed updates per image row on the CPU (0 = 1 with --quick, else 3)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "all":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [resolve_device(args.device)]
    state_spec = Spec(STATE, ACTION)
    image_spec = Spec(STATE[:1] + CAMERAS, ACTION)  # pixels + proprioception, no privileged state
    print(f"batch {BATCH}, hidden {HIDDEN}, state 21, action 4; images: agent_pos + 2 cameras 128x128x3 uint8, "
          f"ResNet-10, DrQ pad 4; torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
    print(f"{'device':<28} {'policy':<26} {'updates':>7} {'updates/s':>10} {'ms/update':>10} {'data ms':>8}")
    for device in devices:
        name = "cpu" if device.type == "cpu" else f"cuda ({torch.cuda.get_device_name(device)})"
        gpu = device.type == "cuda"
        img_updates = args.image_updates or (1 if args.quick else 3)
        rows = [("state MLP", state_spec, False, 20, 50 if args.quick else 500, 0),
                ("2-camera, cached features", image_spec, True, 5, 20 if args.quick else 200, 2),
                ("2-camera, frozen encoder", image_spec, True, 5 if gpu else 1, 20 if gpu else img_updates, 0),
                ("2-camera, trained encoder", image_spec, False, 5 if gpu else 1, 20 if gpu else img_updates, 0)]
        if gpu and not args.quick:
            rows = [(label, spec, freeze, warm, n * 5, v) for label, spec, freeze, warm, n, v in rows]
        for label, spec, freeze, warmup, updates, views in rows:
            rate, data_ms = bench(spec, device, freeze, warmup, updates, views)
            print(f"{name:<28} {label:<26} {updates:>7} {rate:>10.2f} {1e3 / rate:>10.1f} {data_ms:>8.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
