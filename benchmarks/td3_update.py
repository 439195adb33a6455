"""Learner updates/s, TD3+BC at batch 256, 21-d state, 4-d action, 256-256 MLPs, measured side by side in one run.

Run: ``python benchmarks/td3_update.py [--corl /tmp/corl_td3_bc.py] [--seconds 2] [--rounds 3] [--json out.json]``

Rows (each interleaved over ``--rounds`` rounds so load drifts hit them alike; the median round is shown):

* ``corl``: CORL's single-file ``algorithms/offline/td3_bc.py`` (tinkoff-ai/CORL), its own ``Actor``,
  ``Critic`` x2, three Adams, ``TD3_BC.train`` and ``ReplayBuffer.sample`` (its training loop: sample,
  then train), loaded from the file given by ``--corl`` with its gym/d4rl/pyrallis/wandb imports stubbed
  (none is used by those classes). Get the file with the fetch tool, then
  ``git --git-dir=<mirror> show HEAD:algorithms/offline/td3_bc.py > /tmp/corl_td3_bc.py``.
  Its critics have no LayerNorm; ours do (the learner's default), which costs about 10 % here.
* ``before``: the update as it was (`benchmarks/td3_legacy.py`: for-loop Adam, per-tensor Polyak,
  actor loss back-propagated into the critic too) on pre-sampled batches already on the device.
* ``after``: today's `TD3.update` on the same batches.
* ``loop``: the learner's real loop, `Trainer._update` itself: ``DualBuffer.sample`` (50/50
  human/policy) -> `device_batch` -> `TD3.update` -> metrics read every ``log_every`` (100) updates.

``before``/``after`` and ``loop`` read their metrics every 100 updates (as the Trainer does); CORL
reads its two with ``.item()`` every update (its code). CPU ms per update is process CPU time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hilrl.buffers.spec import Spec
from hilrl.learner.config import LearnerConfig
from hilrl.learner.networks import policy_config_for
from hilrl.learner.td3 import TD3, TD3Config
from hilrl.learner.training import Trainer, device_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learner_throughput import ACTION, STATE, filled_buffers  # noqa: E402
from td3_legacy import LegacyTD3  # noqa: E402

BATCH, HIDDEN, LOG_EVERY = 256, (256, 256), 100
SPEC = Spec(STATE, ACTION)
STATE_DIM, ACTION_DIM = SPEC.state_dim, SPEC.action_dim


def load_corl(path: Path) -> types.ModuleType:
    """CORL's td3_bc.py as a module; the imports its training classes do not use are stubbed."""
    for name in ("d4rl", "wandb", "pyrallis", "gym"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["gym"].Env = object  # type annotations only
    sys.modules["pyrallis"].wrap = lambda *a, **k: (lambda f: f)
    spec = importlib.util.spec_from_file_location("corl_td3_bc", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corl_step(path: Path, device: torch.device) -> Callable[[], None]:
    """One iteration of CORL's training loop (sample 256, train), networks built as its ``train()`` does."""
    corl = load_corl(path)
    torch.manual_seed(0)
    actor = corl.Actor(STATE_DIM, ACTION_DIM, 1.0).to(device)
    critic_1 = corl.Critic(STATE_DIM, ACTION_DIM).to(device)
    critic_2 = corl.Critic(STATE_DIM, ACTION_DIM).to(device)
    trainer = corl.TD3_BC(
        max_action=1.0, actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), lr=3e-4),
        critic_1=critic_1, critic_1_optimizer=torch.optim.Adam(critic_1.parameters(), lr=3e-4),
        critic_2=critic_2, critic_2_optimizer=torch.optim.Adam(critic_2.parameters(), lr=3e-4),
        device=str(device))
    n = 40_000
    rng = np.random.default_rng(0)
    buffer = corl.ReplayBuffer(STATE_DIM, ACTION_DIM, n, str(device))
    buffer.load_d4rl_dataset({
        "observations": rng.normal(size=(n, STATE_DIM)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, ACTION_DIM)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "next_observations": rng.normal(size=(n, STATE_DIM)).astype(np.float32),
        "terminals": (rng.random(n) < 0.05).astype(np.float32),
    })
    return lambda: trainer.train(buffer.sample(BATCH))


def new_td3(cls: type, device: torch.device) -> TD3:
    td3 = cls(policy_config_for(SPEC, HIDDEN), TD3Config(), device, seed=0)
    td3.set_normalization(np.zeros(STATE_DIM), np.ones(STATE_DIM), ACTION.low, ACTION.high)
    return td3


def bare_step(cls: type, device: torch.device, buffers) -> Callable[[], None]:
    """`cls.update` on 16 pre-sampled batches already on the device; metrics read every LOG_EVERY."""
    td3, rng = new_td3(cls, device), np.random.default_rng(1)
    pool = [device_batch(buffers.sample(BATCH, 0.5, rng), SPEC, device) for _ in range(16)]
    count = [0]

    def step() -> None:
        metrics = td3.update(pool[count[0] % len(pool)], bc_weight=1.0, return_tensors=True)
        count[0] += 1
        if count[0] % LOG_EVERY == 0:
            torch.stack(list(metrics.values())).tolist()

    return step


class _NullWriter:
    def add_scalar(self, *args: object) -> None:
        pass


def loop_step(device: torch.device, buffers) -> Callable[[], None]:
    """`Trainer._update` (the learner's loop body) on a stand-in core holding the filled dual buffer."""
    cfg = LearnerConfig(device=device.type, log_every=LOG_EVERY)
    core = types.SimpleNamespace(cfg=cfg, run_dir=None, lock=threading.Condition(), buffers=buffers, spec=SPEC,
                                 learner_step=0)

    def count_update() -> int:
        core.learner_step += 1
        return core.learner_step

    core.count_update = count_update
    trainer = Trainer(core)  # type: ignore[arg-type]
    trainer.td3, trainer.writer = new_td3(TD3, device), _NullWriter()
    return lambda: trainer._update(bc_weight=1.0, human_only=False)


def measure(step: Callable[[], None], seconds: float) -> tuple[float, float]:
    """(updates/s wall, CPU ms per update) over about `seconds`, after 20 warm-up steps."""
    for _ in range(20):
        step()
    n, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        for _ in range(10):
            step()
        n += 10
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return n / wall, 1000 * cpu / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corl", type=Path, default=Path("/tmp/corl_td3_bc.py"), help="CORL's td3_bc.py")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    buffers = filled_buffers(SPEC, 20_000)
    steps: dict[str, Callable[[], None]] = {}
    if args.corl.is_file():
        steps["corl"] = corl_step(args.corl, device)
    else:
        print(f"no CORL file at {args.corl}: the corl row is skipped")
    steps |= {"before": bare_step(LegacyTD3, device, buffers), "after": bare_step(TD3, device, buffers),
              "loop": loop_step(device, buffers)}
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {device}, batch {BATCH}, state {STATE_DIM}, action {ACTION_DIM}, "
          f"hidden {HIDDEN}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results: dict = {"torch": torch.__version__, "device": str(device), "load_before": load, "threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                rounds[name].append(measure(step, args.seconds))
        rows = {name: {"updates_per_s": statistics.median(r[0] for r in runs),
                       "cpu_ms_per_update": statistics.median(r[1] for r in runs),
                       "rounds_updates_per_s": [round(r[0], 1) for r in runs]} for name, runs in rounds.items()}
        results["threads"][threads] = rows
        print(f"\n{threads} thread(s)          upd/s   CPU ms/upd   rounds (upd/s)")
        for name, row in rows.items():
            print(f"  {name:8s}  {row['updates_per_s']:12.1f}  {row['cpu_ms_per_update']:11.2f}   "
                  f"{row['rounds_updates_per_s']}")

        def ratio(a: str, b: str, k: str, rows: dict = rows) -> float:
            return rows[a][k] / rows[b][k] if b in rows else float("nan")

        print(f"  after/before {ratio('after', 'before', 'updates_per_s'):.2f}, "
              f"after/corl {ratio('after', 'corl', 'updates_per_s'):.2f} wall "
              f"({1 / ratio('after', 'corl', 'cpu_ms_per_update'):.2f} CPU time), "
              f"loop/after {ratio('loop', 'after', 'updates_per_s'):.2f}, "
              f"loop/corl {ratio('loop', 'corl', 'updates_per_s'):.2f}")
    results["load_after"] = os.getloadavg()
    print(f"load average after: {results['load_after'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
