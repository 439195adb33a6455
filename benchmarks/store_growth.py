"""How fast the learner's buffer store grows on disk: bytes per step -> MB per hour at 10 Hz.

Observation: two uint8 128x128x3 cameras (``front``, ``wrist``) + the sim's 18-d and 3-d float32
state; action 4-d. Steps go through the real `BufferStore` (zarr v3, its default zstd compression,
fsync + atomic commit per batch) in batches of `--batch` steps, as a learner stores what actors send.

Frames (``--frames``):
* ``sim`` (default): real renders of gym-hil's pick-cube (MuJoCo, ``MUJOCO_GL=egl``), the scripted
  expert moving the arm, i.e. what the sim's cameras really send;
* ``synthetic``: smooth gradients with a moving blob plus camera noise (sigma 2 grey levels), for
  machines without EGL; noise makes it the pessimistic case (noise does not compress).

Run: ``MUJOCO_GL=egl python benchmarks/store_growth.py [--frames sim] [--steps 300]``.
Prints raw and on-disk bytes per step, the compression ratio, MB per hour at `--hz`, and the disk
bound that the default buffer capacities (200,000 human + 500,000 policy) put on a long run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hilrl.buffers.assembler import Step
from hilrl.buffers.frames import observation_nbytes
from hilrl.buffers.spec import Feature, Spec
from hilrl.buffers.store import BufferStore

CAMERAS = ("front", "wrist")
SPEC = Spec(observation=(Feature("agent_pos", "float32", (18,)), Feature("environment_state", "float32", (3,)),
                         *(Feature(c, "uint8", (128, 128, 3)) for c in CAMERAS)),
            action=Feature("action", "float32", (4,), (-1, -1, -1, 0), (1, 1, 1, 2)))


def sim_steps(n: int, seed: int = 0) -> Iterator[Step]:
    from hilrl.hardware.expert import ScriptedExpert
    from hilrl.hardware.sim import SimPickCube

    env, expert = SimPickCube(seed=seed, cameras=True), ScriptedExpert(noise=0.1, seed=seed + 1)
    done, episode, t = True, -1, 0
    for _ in range(n):
        if done:
            obs, episode, t = env.reset(), episode + 1, 0
            expert.reset()
        action = expert.act({**obs, **env.scene()})  # the block position is not in a camera observation
        nxt, reward, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
        yield Step(obs, np.asarray(action, np.float32), reward, terminated, truncated, True, episode, t,
                   nxt if done else None)
        obs, t = nxt, t + 1
    env.close()


def synthetic_steps(n: int, seed: int = 0, length: int = 100) -> Iterator[Step]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32)

    def frame(t: int, k: int) -> np.ndarray:
        cx, cy = 64 + 40 * np.sin(0.05 * t + k), 64 + 30 * np.cos(0.07 * t + k)
        blob = 120 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 200)
        base = np.stack([xx, yy, 128 + 0 * xx], -1) * (0.8 + 0.2 * k) + blob[..., None]
        return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)

    def obs(t: int) -> dict[str, np.ndarray]:
        return {"agent_pos": rng.normal(size=18).astype(np.float32),
                "environment_state": rng.normal(size=3).astype(np.float32),
                **{c: frame(t, k) for k, c in enumerate(CAMERAS)}}

    for i in range(n):
        t = i % length
        last = t == length - 1
        yield Step(obs(t), rng.uniform(-1, 1, 4).astype(np.float32), 0.0, False, last, False, i // length, t,
                   obs(t + 1) if last else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", choices=("sim", "synthetic"), default="sim")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32, help="steps per stored batch (the actor's --batch-steps)")
    ap.add_argument("--hz", type=float, default=10.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hilrl-store-growth-"))
    try:
        store = BufferStore(tmp / "store", SPEC)
        empty = store.disk_bytes()
        steps = sim_steps(args.steps) if args.frames == "sim" else synthetic_steps(args.steps)
        batch, seq, t0, store_s = [], 0, time.perf_counter(), 0.0
        for step in steps:
            batch.append(step)
            if len(batch) == args.batch or step.final_obs is not None:
                seq += 1
                t1 = time.perf_counter()
                store.append("actor", seq, batch)
                store_s += time.perf_counter() - t1
                batch = []
        if batch:
            store.append("actor", seq + 1, batch)
        total_s = time.perf_counter() - t0
        n = len(store)
        per_step = (store.disk_bytes() - empty) / n
        raw = observation_nbytes(SPEC) + 4 * 4 + 4 + 4 + 3 * 8  # obs + action + reward, flags, ids
        per_hour = per_step * args.hz * 3600
        bound_gb = per_step * 700_000 / 1e9
        rows = [("frames", args.frames), ("steps stored", f"{n} in {seq} batches"),
                ("raw bytes per step", f"{raw:,}"), ("on-disk bytes per step", f"{per_step:,.0f}"),
                ("compression (raw / disk)", f"{raw / per_step:.2f}x"),
                (f"MB per hour at {args.hz:g} Hz", f"{per_hour / 1e6:,.0f}"),
                ("hours to reach the default bound", f"{700_000 / (args.hz * 3600):.1f} h"),
                ("disk bound, 200k + 500k transitions", f"~{bound_gb:,.1f} GB (+ hole granularity)"),
                ("store time per step", f"{1e3 * store_s / n:.2f} ms (of {1e3 * total_s / n:.1f} ms with frames)")]
        width = max(len(k) for k, _ in rows)
        print(f"{'quantity':<{width}} | value\n{'-' * width}-|------")
        for k, v in rows:
            print(f"{k:<{width}} | {v}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
