"""Sample efficiency of the action-chunked critic (``--chunk 5``) against one-step TD3 (``--chunk 1``).

    python benchmarks/chunking_efficiency.py --chunks 1 5 --seeds 0 1 2 --out chunking.json
    python benchmarks/chunking_efficiency.py --report chunking.json

The arm-offset regime of `benchmarks/sample_efficiency.py` (docs/sample-efficiency.md, "Earlier regime"),
recipe (a): 20 scripted
demos recorded on the plain arm, TD3+BC offline on them (alpha 0.5), then online TD3 with a BC weight
of 1.0 on the human rows, on an arm whose executed ``dx, dy`` are shifted by 0.3 action units
(`hardware.perturb.OffsetArm`) — the demos never saw the offset, so the online stage has work to do.
The only difference between the two arms of the comparison is the chunk length h:

* h = 1: `TD3` on `DualBuffer.sample` (one-step transitions);
* h = 5: `ChunkedTD3` on `buffers.sequences.sample_sequences` (contiguous 5-step windows, same 50/50 mix),
  and the `PolicyRunner` executes each 5-action chunk open loop (a takeover drops the rest).

One synchronous in-process loop per run, with the project's own classes (no second process, so the
step count does not depend on machine load): one env step (policy + Gaussian exploration noise 0.1,
or the scripted human once it takes over after 50 steps) -> `DualBuffer.add` -> one update per env
step (batch 256) -> the next step acts with the updated weights. Every ``--eval-every`` online env
steps the deterministic policy runs ``--eval-episodes`` episodes (no noise, no takeover, fixed block
positions); a run ends at the first evaluation >= ``--target`` or at ``--max-env-steps``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sample_efficiency import Curve, online_loop_parts, online_step, record_demos, td3_batch
from sample_efficiency import Settings as SampleEfficiencySettings

from hilrl.buffers.replay import DualBuffer
from hilrl.buffers.sequences import sample_buffer_sequences, sample_sequences
from hilrl.buffers.spec import state_vector
from hilrl.learner.chunked import ChunkedTD3
from hilrl.learner.networks import PolicyConfig, compute_state_stats
from hilrl.learner.td3 import TD3, TD3Config


@dataclass
class Settings(SampleEfficiencySettings):
    """benchmarks/sample_efficiency.py's settings, with the regime of docs/chunking.md as defaults."""

    action_offset: tuple[float, float, float] = (0.3, 0.3, 0.0)
    demos: int = 20
    max_env_steps: int = 3000


def run(chunk: int, seed: int, settings: Settings, result: dict, save=lambda: None) -> dict:
    """One run; fills `result` (the learning curve, env steps to the target) in place."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec, demos = record_demos(settings, seed)
    buffers = DualBuffer(spec, 200_000, 200_000)
    algo = ChunkedTD3 if chunk > 1 else TD3
    td3 = algo(PolicyConfig(spec.state_dim, spec.action_dim, settings.hidden, chunk=chunk),
               TD3Config(alpha=settings.alpha), torch.device("cpu"), seed=seed)
    for t in demos:
        buffers.add(t)
    low, high = np.array(spec.action.low), np.array(spec.action.high)
    td3.set_normalization(*compute_state_stats(np.stack([state_vector(t.obs, spec) for t in demos])), low, high)

    def sample(offline: bool) -> dict:
        if chunk > 1:
            if offline:
                return sample_buffer_sequences(buffers.human, settings.batch_size, chunk, rng)
            return sample_sequences(buffers, settings.batch_size, settings.human_ratio, chunk, rng)
        if offline:
            part = buffers.human.gather(buffers.human.sample_indices(settings.batch_size, rng))
            part["human"] = np.ones(settings.batch_size, np.float32)
            return part
        return buffers.sample(settings.batch_size, settings.human_ratio, rng)

    curve = Curve(td3, settings, seed, result, save, lambda line: print(line, flush=True), f"h={chunk} seed {seed}")
    result.update(chunk=chunk, seed=seed, steps_to_target=None, curve=curve.points, finished=False)
    for _ in range(settings.offline_steps):
        td3.update(td3_batch(sample(offline=True), spec), bc_weight=1.0)
    env, human, runner = online_loop_parts(td3, spec, settings, seed)
    steps = episodes = interventions = 0
    curve.evaluate(0, episodes, interventions)
    while not curve.reached and steps < settings.max_env_steps:
        obs, done = env.reset(), False
        human.reset()
        runner.drop_plan()
        episodes += 1
        while not done:
            obs, done, takeover = online_step(env, human, runner, buffers, obs, episodes)
            steps += 1
            interventions += int(takeover)
            td3.update(td3_batch(sample(offline=False), spec), bc_weight=settings.online_bc_weight)
            if steps % settings.eval_every == 0 and curve.evaluate(steps, episodes, interventions):
                break
    env.close()
    return curve.finish(episodes, interventions)


def report(data: dict) -> str:
    cap = data["settings"]["max_env_steps"]
    runs = [r for r in data["runs"] if r]
    seeds = sorted({r["seed"] for r in runs})
    head = "| chunk h | " + " | ".join(f"seed {s}" for s in seeds) + " |"
    lines = [head, "| --- |" + " --- |" * len(seeds)]
    for chunk in sorted({r["chunk"] for r in runs}):
        by_seed = {r["seed"]: r for r in runs if r["chunk"] == chunk}
        cells = []
        for s in seeds:
            r = by_seed.get(s)
            if r is None:
                cells.append("-")
            elif r["steps_to_target"] is not None:
                cells.append(str(r["steps_to_target"]))
            elif r.get("finished"):
                cells.append(f"not reached (cap {cap}; best {max(x for _, x in r['curve']):.0%})")
            else:
                cells.append(f"not reached by {r['curve'][-1][0]} (stopped)")
        lines.append(f"| {chunk} | " + " | ".join(cells) + " |")
    lines += ["", "success curve (online env steps: success), per run:", ""]
    for r in runs:
        lines.append(f"* h={r['chunk']} seed {r['seed']}: "
                     + ", ".join(f"{s}: {x:.0%}" for s, x in r["curve"])
                     + (f" ({r['human_steps']} human steps, {r['wall_s']} s)" if r.get("finished") else ""))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Settings()
    p.add_argument("--chunks", nargs="+", type=int, default=[1, 5])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--action-offset", nargs=3, type=float, default=list(d.action_offset))
    for name in ("demos", "offline_steps", "eval_every", "eval_episodes", "max_env_steps", "takeover_after"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("alpha", "online_bc_weight", "exploration_noise", "target"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--out", type=Path, help="write every run's curve here (JSON), rewritten after each evaluation")
    p.add_argument("--report", type=Path, nargs="+", help="print the table of results file(s) instead of running")
    args = p.parse_args()
    if args.report is not None:
        files = [json.loads(f.read_text()) for f in args.report]
        print(report({"settings": files[0]["settings"], "runs": [r for f in files for r in f["runs"]]}))
        return
    if min(args.chunks) < 1:
        raise SystemExit("--chunks: every chunk length must be at least 1")
    torch.set_num_threads(1)
    settings = Settings(action_offset=tuple(args.action_offset), **{
        k: getattr(args, k) for k in ("demos", "offline_steps", "eval_every", "eval_episodes", "max_env_steps",
                                      "takeover_after", "alpha", "online_bc_weight", "exploration_noise", "target")})
    data: dict = {"settings": asdict(settings), "runs": []}

    def save() -> None:
        if args.out is not None:
            args.out.write_text(json.dumps(data, indent=1))

    for seed in args.seeds:
        for chunk in args.chunks:
            data["runs"].append({})
            run(chunk, seed, settings, data["runs"][-1], save)
            save()
    print(report(data))


if __name__ == "__main__":
    main()
