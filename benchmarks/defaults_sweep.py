"""Which learner recipe should be the default? Offline success and the online curve of candidate recipes.

    python benchmarks/defaults_sweep.py --seeds 0 --out docs/defaults-sweep   # one JSON per recipe and seed
    python benchmarks/defaults_sweep.py --report docs/defaults-sweep          # the table

The regime is the one users bring: a few scripted-expert demonstrations (``--demos``, noise 0.1), a
sparse reward, an arm that must improve online. Per seed the demos are recorded once and the offline
TD3+BC stage is run once per offline setting (alpha, steps); every recipe sharing it continues from a
copy of the same offline weights, so recipes differ only in what they change.

The online part is `benchmarks/sample_efficiency.py`'s synchronous, in-process loop (the project's own
`SimPickCube`, `ScriptedTeleop`, `PolicyRunner`, `DualBuffer`, `TD3`: one env step -> `DualBuffer.add`
-> ``utd`` updates), extended by what the learner's `Trainer` does at and after the switch: the online
BC weight on human rows with its linear decay (`bc_weight_schedule`, as the Trainer), a critic warm-up (actor
held still), and optionally the policy buffer seeded with the demo episodes. Every run goes to the full
``--online-steps`` budget, except that a run stops once it has *collapsed*: two consecutive online
evaluations more than 15 points below its offline start.

Evaluation: the deterministic policy (no noise, no takeover), ``--eval-episodes`` episodes on block
positions drawn from a seed no training episode uses, at online step 0 (= the offline result) and every
``--eval-every`` online env steps.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sample_efficiency import Settings, _eval, online_loop_parts, online_step, record_demos, td3_batch

from hilrl.buffers.replay import DualBuffer, Transition
from hilrl.buffers.spec import state_vector
from hilrl.learner.config import LearnerConfig
from hilrl.learner.networks import PolicyConfig, compute_state_stats
from hilrl.learner.td3 import TD3, TD3Config
from hilrl.learner.training import actor_holds_still, bc_weight_schedule

COLLAPSE_DROP = 0.15


@dataclass(frozen=True)
class Recipe:
    """One candidate: the learner options it sets (names as in learner/config.py and TD3Config)."""

    alpha: float = 0.5
    offline_steps: int = 5000
    online_bc_weight: float = 1.0
    online_bc_decay_steps: int = 0
    critic_warmup_steps: int = 0
    utd_ratio: int = 1
    seed_policy_buffer: bool = False  # the demo episodes also go into the policy buffer at the switch
    policy_noise: float = 0.2
    actor_lr: float = 3e-4
    policy_delay: int = 2

    @classmethod
    def defaults(cls, **changes) -> Recipe:
        """The recipe `hilrl learner` runs with no algorithm flags (learner/config.py), with `changes`."""
        cfg = LearnerConfig()
        if cfg.utd_ratio != int(cfg.utd_ratio):
            raise ValueError(f"this loop runs a whole number of updates per env step, not {cfg.utd_ratio}")
        return replace(cls(alpha=cfg.algo.alpha, offline_steps=cfg.offline_steps, online_bc_weight=cfg.online_bc_weight,
                           online_bc_decay_steps=cfg.online_bc_decay_steps, critic_warmup_steps=cfg.critic_warmup_steps,
                           utd_ratio=int(cfg.utd_ratio),
                           policy_noise=cfg.algo.policy_noise, actor_lr=cfg.algo.actor_lr,
                           policy_delay=cfg.algo.policy_delay), **changes)


RECIPES: dict[str, Recipe] = {
    "known-good": Recipe(),  # what `hilrl demo` passed by hand: alpha 0.5, online BC 1.0 on human rows
    "bc0": Recipe(online_bc_weight=0.0),  # the old learner default online: pure TD3
    "alpha2.5": Recipe(alpha=2.5),  # the old learner default alpha (with the known-good online stage)
    "bc-decay": Recipe(online_bc_decay_steps=1000),  # BC 1.0 -> 0 linearly over 1000 online updates
    "warmup": Recipe(critic_warmup_steps=500),  # the critic alone for the first 500 online updates
    "seeded": Recipe(seed_policy_buffer=True),
    "utd2": Recipe(utd_ratio=2),
    "bc0-warmup-seeded": Recipe(online_bc_weight=0.0, critic_warmup_steps=500, seed_policy_buffer=True),
    "noise0.1": Recipe(policy_noise=0.1),
    "actor-lr1e-4": Recipe(actor_lr=1e-4),
    "defaults": Recipe.defaults(),  # whatever learner/config.py says now
    "warmup1000": Recipe.defaults(critic_warmup_steps=1000),  # the critic alone for the first 1000 online updates
    "seeded-defaults": Recipe.defaults(seed_policy_buffer=True),  # the defaults, policy buffer seeded with the demos
    "bc2.5": Recipe.defaults(online_bc_weight=2.5),  # a stronger anchor on the human rows online
    # condition (b) of the learning studies (the demos, online from scratch, no offline stage), tuned:
    "scratch-rlpd": Recipe.defaults(offline_steps=0, online_bc_weight=0.0, utd_ratio=2),  # the studies' (b)
    "scratch-bc": Recipe.defaults(offline_steps=0),  # + the online BC term on the human rows, UTD 1
    "scratch-bc-utd2": Recipe.defaults(offline_steps=0, utd_ratio=2),  # + the online BC term, UTD 2
}


def offline_stage(recipe: Recipe, settings: Settings, seed: int) -> tuple:
    """Record the seed's demos, fill the human buffer, run the offline TD3+BC stage (as the Trainer does)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec, demos = record_demos(settings, seed)
    cfg = TD3Config(alpha=recipe.alpha, policy_noise=recipe.policy_noise, actor_lr=recipe.actor_lr,
                    policy_delay=recipe.policy_delay)
    td3 = TD3(PolicyConfig(spec.state_dim, spec.action_dim, settings.hidden), cfg, torch.device("cpu"), seed=seed)
    td3.set_normalization(*compute_state_stats(np.stack([state_vector(t.obs, spec) for t in demos])),
                          np.array(spec.action.low), np.array(spec.action.high))
    buffers = DualBuffer(spec, 200_000, 200_000)
    for t in demos:
        buffers.add(t)
    started = time.monotonic()
    for _ in range(recipe.offline_steps):
        idx = buffers.human.sample_indices(settings.batch_size, rng)
        part = buffers.human.gather(idx)
        part["human"] = np.ones(len(idx), np.float32)
        td3.update(td3_batch(part, spec), bc_weight=1.0)
    return spec, demos, td3, buffers, time.monotonic() - started


def online_stage(recipe: Recipe, settings: Settings, seed: int, spec, demos: list[Transition], td3: TD3,
                 buffers: DualBuffer, start: float, online_steps: int, log=print) -> dict:
    """The online stage from the offline weights `td3` (modified in place), whose evaluation is `start`;
    its evaluation curve."""
    rng = np.random.default_rng(seed + 7)
    if recipe.seed_policy_buffer:
        for t in demos:
            buffers.policy.add(replace(t, is_intervention=False))
    env, human, runner = online_loop_parts(td3, spec, settings, seed)
    started = time.monotonic()
    curve = [(0, start)]
    steps = episodes = interventions = updates = 0
    collapsed = None
    while steps < online_steps and collapsed is None:
        obs, done = env.reset(), False
        human.reset()
        episodes += 1
        while not done and steps < online_steps:
            obs, done, takeover = online_step(env, human, runner, buffers, obs, episodes)
            steps, interventions = steps + 1, interventions + int(takeover)
            for _ in range(recipe.utd_ratio):
                w = bc_weight_schedule(recipe.online_bc_weight, recipe.online_bc_decay_steps, updates)
                sampled = buffers.sample(settings.batch_size, settings.human_ratio, rng)
                td3.update(td3_batch(sampled, spec), bc_weight=w,
                           update_actor=not actor_holds_still(
                               recipe.critic_warmup_steps, recipe.offline_steps > 0, updates))
                updates += 1
            if steps % settings.eval_every == 0:
                curve.append((steps, _eval(td3, settings, seed)))
                log(f"  online step {steps} success {curve[-1][1]:.2f} ({time.monotonic() - started:.0f}s)")
                low = [r < start - COLLAPSE_DROP for _, r in curve[1:]]
                if len(low) >= 2 and low[-1] and low[-2]:
                    collapsed = steps
    env.close()
    return {"curve": curve, "collapsed_at": collapsed, "episodes": episodes, "human_steps": interventions,
            "online_wall_s": round(time.monotonic() - started, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--demos", type=int, default=10)
    p.add_argument("--offline-steps", type=int, help="override every recipe's offline updates (a weaker start)")
    p.add_argument("--online-steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--offline-only", action="store_true", help="evaluate the offline stage only (no online run)")
    p.add_argument("--out", type=Path, default=Path("defaults-sweep"), help="directory, one JSON per run")
    p.add_argument("--report", type=Path, help="print the table of the JSON files in this directory instead")
    args = p.parse_args()
    if args.report is not None:
        print(report(args.report))
        return
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = Settings(demos=args.demos, eval_every=args.eval_every, eval_episodes=args.eval_episodes)
    for seed in args.seeds:
        offline: dict = {}  # (alpha, offline steps, TD3 options) -> the offline stage's result, shared
        for name in args.recipes:
            recipe = RECIPES[name]
            if args.offline_steps is not None:
                recipe = replace(recipe, offline_steps=args.offline_steps)
            path = args.out / (f"{name}-demos{args.demos}-offline{recipe.offline_steps}-seed{seed}"
                               f"{'-offline-only' if args.offline_only else ''}.json")
            if path.exists():
                print(f"{path}: done already, skipped")
                continue
            key = (recipe.alpha, recipe.offline_steps, recipe.policy_noise, recipe.actor_lr, recipe.policy_delay)
            print(f"{name} seed {seed}: {recipe}", flush=True)
            if key not in offline:
                spec, demos, td3, buffers, wall = offline_stage(recipe, settings, seed)
                start = _eval(td3, settings, seed)
                print(f"  offline: {wall:.0f}s, success {start:.2f}", flush=True)
                offline[key] = (spec, demos, td3, buffers, wall, start)
            spec, demos, td3, buffers, wall, start = offline[key]
            result = {"recipe": name, "options": asdict(recipe), "seed": seed, "settings": asdict(settings),
                      "offline_wall_s": round(wall, 1), "curve": [(0, start)]}
            if not args.offline_only:
                result.update(online_stage(recipe, settings, seed, spec, demos, copy.deepcopy(td3),
                                           copy.deepcopy(buffers), start, args.online_steps,
                                           log=lambda m: print(m, flush=True)))
            path.write_text(json.dumps(result, indent=1))


def report(directory: Path) -> str:
    runs = [json.loads(f.read_text()) for f in sorted(directory.glob("*.json"))]
    by: dict[tuple, list[dict]] = {}
    for r in runs:
        key = (r["recipe"], r["settings"]["demos"], r["options"]["offline_steps"], len(r["curve"]) == 1)
        by.setdefault(key, []).append(r)
    lines = ["| recipe | demos | offline updates | seeds | offline start | last eval | mean of online evals "
             "| collapsed | curves |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (name, demos, offline_steps, offline_only), rs in sorted(by.items()):
        rs.sort(key=lambda r: r["seed"])
        starts = [r["curve"][0][1] for r in rs]
        lasts = [r["curve"][-1][1] for r in rs]
        online = [statistics.mean(y for _, y in r["curve"][1:]) for r in rs if len(r["curve"]) > 1]
        curves = "; ".join(f"s{r['seed']}: " + " ".join(f"{100 * y:.0f}" for _, y in r["curve"]) for r in rs)
        collapsed = sum(r.get("collapsed_at") is not None for r in rs)
        lines.append(f"| {name}{' (offline only)' if offline_only else ''} | {demos} | {offline_steps} | "
                     f"{' '.join(str(r['seed']) for r in rs)} | {100 * statistics.mean(starts):.0f} % | "
                     f"{'-' if offline_only else f'{100 * statistics.mean(lasts):.0f} %'} | "
                     f"{f'{100 * statistics.mean(online):.0f} %' if online else '-'} | "
                     f"{'-' if offline_only else f'{collapsed}/{len(rs)}'} | {curves} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
