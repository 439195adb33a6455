"""Success rate of every k-th published weight version of a learner run (the learning curve).

    python benchmarks/eval_versions.py --run hilrl-runs/demo-XXXX/learner --episodes 20 --every 5

Needs the run's weight history (<output-dir>/weights/v*.safetensors; `hilrl demo` keeps all of it).
Every version is evaluated on the same block positions, without takeover or exploration noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hilrl.actor.evaluate import evaluate
from hilrl.hardware.sim import SimPickCube
from hilrl.learner.networks import load_policy_file
from hilrl.learner.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a learner --output-dir")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per version")
    parser.add_argument("--every", type=int, default=5, help="evaluate v1, every k-th version and the last")
    parser.add_argument("--seed", type=int, default=10_000)
    args = parser.parse_args()
    run = RunDir(args.run)
    files = run.weight_files()
    if not files:
        raise SystemExit(f"no weight history in {run.weight_history}")
    chosen = [f for i, f in enumerate(files) if i == 0 or (i + 1) % args.every == 0 or f == files[-1]]
    print(f"{'version':>8} {'success':>8} {'mean len':>9}")
    rows = []
    for f in chosen:
        with SimPickCube(seed=args.seed) as env:
            r = evaluate(load_policy_file(f), env, args.episodes, seed=args.seed, progress=False)
        version = int(f.stem[1:])
        rows.append({"version": version, **r})
        print(f"{version:>8} {r['success_rate']:>8.2f} {r['mean_length']:>9.1f}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
