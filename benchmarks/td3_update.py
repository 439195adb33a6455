"""Updates per second of `TD3.update` (TD3+BC, batch 256, state 18, action 4, hidden 256x256).

Run: ``python benchmarks/td3_update.py [--seconds 5]``. Measures CPU with one thread and with the
default thread count, and CUDA when available. Each call includes the one host sync for metrics.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from hilrl.learner.networks import PolicyConfig
from hilrl.learner.td3 import TD3, TD3Config

BATCH, STATE_DIM, ACTION_DIM, HIDDEN = 256, 18, 4, (256, 256)


def bench(device: torch.device, seconds: float) -> float:
    td3 = TD3(PolicyConfig(STATE_DIM, ACTION_DIM, HIDDEN), TD3Config(), device, seed=0)
    td3.set_normalization(np.zeros(STATE_DIM), np.ones(STATE_DIM), -np.ones(ACTION_DIM), np.ones(ACTION_DIM))
    g = torch.Generator().manual_seed(0)
    pool = [
        {
            "state": torch.randn(BATCH, STATE_DIM, generator=g),
            "action": torch.rand(BATCH, ACTION_DIM, generator=g) * 2 - 1,
            "reward": torch.randn(BATCH, generator=g),
            "next_state": torch.randn(BATCH, STATE_DIM, generator=g),
            "done": (torch.rand(BATCH, generator=g) < 0.05).float(),
        }
        for _ in range(8)
    ]
    pool = [{k: v.to(device) for k, v in b.items()} for b in pool]  # data already on device
    for i in range(20):  # warm-up (allocator, kernels)
        td3.update(pool[i % len(pool)], bc_weight=1.0)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(10):
            td3.update(pool[n % len(pool)], bc_weight=1.0)
            n += 1
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per configuration")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    print(f"batch {BATCH}, state {STATE_DIM}, action {ACTION_DIM}, hidden {HIDDEN}")
    print(f"torch {torch.__version__}, default threads {default_threads}")
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        print(f"cpu, {threads} thread(s): {bench(torch.device('cpu'), args.seconds):8.1f} updates/s")
    torch.set_num_threads(default_threads)
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        print(f"cuda ({name}): {bench(torch.device('cuda'), args.seconds):8.1f} updates/s")


if __name__ == "__main__":
    main()
