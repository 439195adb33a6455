"""The pre-registered learning study of docs/learning-study.md (issue 16, item 3): runner and report.

    MUJOCO_GL=egl python benchmarks/learning_study.py --conditions a b d --seeds 100 101 --out docs/learning-study
    python benchmarks/learning_study.py --report --out docs/learning-study --plot docs/learning-study.png

Conditions (every run goes to the full ``--budget`` of online env steps; no early stopping):

* ``a``: the learner's defaults: TD3+BC offline on the demos for ``offline_steps`` updates, then online on the
  50/50 dual buffer with the default online settings;
* ``b``: the same demos in the human buffer, online from a random policy, no offline stage, RLPD / HIL-SERL
  style (LayerNorm critics, which every hilrl critic has, the regime's UTD ``b_utd``, 50/50, no critic
  warm-up) with the regime's online BC weight on the human rows ``b_bc_weight`` (0 in studies 1 and 2);
* ``c``: offline only: (a)'s policy at online step 0 (its start evaluation; no separate run);
* ``d``: no demos: the (a) settings with an empty human buffer at the start (it holds only takeovers), no
  offline stage.

The algorithm settings are the learner's own defaults, read from `LearnerConfig()` / `TD3Config()` when the
run starts (saved in every result, with the commit); the actor-side settings (exploration noise, scripted
takeover rule, demo noise) are `ActorConfig()`'s. The loop is the synchronous in-process one of
benchmarks/sample_efficiency.py (its `record_demos`, `online_loop_parts`, `td3_batch`: the project's
`SimPickCube`, `ScriptedExpert` in `ScriptedTeleop`, `PolicyRunner`, `DualBuffer`, `TD3`), with the
trainer's update schedule: offline updates on human rows with BC weight 1, then ``utd_ratio`` updates per
online transition, the online BC weight and its decay (`bc_weight_schedule`, as the Trainer), critic warm-up.

Evaluation: the deterministic policy on a fixed held-out set of block positions (a seed stream no training
episode uses, the same for every run): ``START_EPISODES`` episodes at online step 0, then ``EVAL_EPISODES``
(the first ones of the same set) every ``EVAL_EVERY`` online steps up to the budget.

One JSON per (condition, seed) in ``--out``, rewritten atomically after every evaluation; a finished run
is skipped, an unfinished one is started again from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sample_efficiency import Settings as LoopSettings
from sample_efficiency import draw_curves, online_loop_parts, online_step, record_demos, td3_batch

from hilrl.actor.config import ActorConfig
from hilrl.actor.evaluate import evaluate
from hilrl.buffers.replay import DualBuffer
from hilrl.buffers.spec import state_vector
from hilrl.hardware.perturb import make_sim
from hilrl.learner.config import LearnerConfig
from hilrl.learner.memory import STATE_CAPACITIES
from hilrl.learner.networks import PolicyConfig, compute_state_stats
from hilrl.learner.td3 import TD3, TD3Config
from hilrl.learner.training import actor_holds_still, bc_weight_schedule

CONDITIONS = {"a": "defaults: offline, then online 50/50", "b": "same demos, online from scratch (RLPD-style)",
              "c": "offline only ((a) at online step 0)", "d": "no demos"}
RUN_CONDITIONS = ("a", "b", "d")


@dataclass(frozen=True)
class Regime:
    """The pre-registered regime (docs/learning-study.md); not a command-line option on purpose."""

    demos: int = 5  # scripted-expert demonstration episodes (seed-specific, shared by (a) and (b))
    budget: int = 4000  # online env steps of every run
    eval_every: int = 500
    eval_episodes: int = 50
    start_episodes: int = 100  # the evaluation at online step 0
    eval_seed: int = 987_654_321  # the held-out block positions (no training episode draws from this stream)
    target: float = 0.8
    b_utd: int = 2  # (b)'s update-to-data ratio (the CPU limit of the issue: a UTD above 2 is GPU only)
    b_bc_weight: float = 0.0  # (b)'s online BC weight on the human rows (0: RLPD-style, studies 1 and 2)


REGIMES = {  # --regime: each study's, fixed by its protocol (docs/learning-study*.md)
    "5-demos": Regime(),  # studies 1 and 2
    "3-demos": Regime(demos=3, budget=6000, b_utd=1, b_bc_weight=1.0),  # study 3 (b from pilot 4)
}


def algorithm(condition: str, regime: Regime) -> dict:
    """The learner settings of one condition: the defaults, with (b)'s and (d)'s documented changes."""
    cfg = LearnerConfig()
    if condition == "b":
        cfg = replace(cfg, offline_steps=0, online_bc_weight=regime.b_bc_weight, online_bc_decay_steps=0,
                      critic_warmup_steps=0, utd_ratio=float(regime.b_utd))
    elif condition == "d":
        cfg = replace(cfg, offline_steps=0)
    keys = ("offline_steps", "online_bc_weight", "online_bc_decay_steps", "critic_warmup_steps", "utd_ratio",
            "batch_size", "human_ratio", "hidden", "human_capacity", "policy_capacity", "seed")
    out = {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}
    for key, state_default in zip(("human_capacity", "policy_capacity"), STATE_CAPACITIES, strict=True):
        if out.get(key) is None:  # automatic (sized for camera specs): this study's state specs get the defaults
            out[key] = state_default
    out["algo"] = asdict(cfg.algo)
    return out


def commit() -> str:
    here = Path(__file__).parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=here).stdout.strip()
    return head + ("-dirty" if dirty else "")


def write_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def held_out_eval(td3: TD3, regime: Regime, episodes: int) -> float:
    env = make_sim(seed=0)
    try:
        return evaluate(td3.policy, env, episodes, seed=regime.eval_seed, progress=False)["success_rate"]
    finally:
        env.close()


def offline_start(condition: str, seed: int, algo: dict, loop: LoopSettings) -> tuple:
    """(spec, buffers, td3, rng) of one run at online step 0: the seed's demos in the human buffer (not for
    (d)) and, for (a), the trainer's offline stage (TD3+BC updates on human rows, BC weight 1). `rng` is the
    run's sampling stream, to be continued online."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec, demos = record_demos(loop, seed)
    buffers = DualBuffer(spec, algo["human_capacity"], algo["policy_capacity"])
    td3 = TD3(PolicyConfig(spec.state_dim, spec.action_dim, tuple(algo["hidden"])), TD3Config(**algo["algo"]),
              torch.device("cpu"), seed=seed)
    if condition != "d":
        for t in demos:
            buffers.add(t)
        td3.set_normalization(*compute_state_stats(np.stack([state_vector(t.obs, spec) for t in demos])),
                              np.array(spec.action.low), np.array(spec.action.high))
    for _ in range(algo["offline_steps"] if condition == "a" else 0):  # the trainer's offline stage
        idx = buffers.human.sample_indices(algo["batch_size"], rng)
        part = buffers.human.gather(idx)
        part["human"] = np.ones(algo["batch_size"], np.float32)
        td3.update(td3_batch(part, spec), bc_weight=1.0)
    return spec, buffers, td3, rng


def run(condition: str, seed: int, regime: Regime, path: Path, log=print) -> dict:
    """One run to the full budget; the result (curve included) is rewritten at `path` after every evaluation."""
    algo = algorithm(condition, regime)
    actor = ActorConfig()
    loop = LoopSettings(demos=regime.demos, demo_noise=actor.demo_noise, exploration_noise=actor.exploration_noise,
                        takeover_after=actor.takeover_after, batch_size=algo["batch_size"])
    started = time.monotonic()
    result = {"condition": condition, "seed": seed, "regime": asdict(regime), "settings": algo,
              "actor": {"demo_noise": actor.demo_noise, "exploration_noise": actor.exploration_noise,
                        "takeover_after": actor.takeover_after}, "commit": commit(), "curve": [],
              "finished": False}
    spec, buffers, td3, rng = offline_start(condition, seed, algo, loop)
    low, high = np.array(spec.action.low), np.array(spec.action.high)
    result["offline_wall_s"] = round(time.monotonic() - started, 1)

    def evaluate_at(steps: int, episodes: int) -> None:
        t0 = time.monotonic()
        result["curve"].append([steps, held_out_eval(td3, regime, episodes)])
        result["eval_wall_s"] = round(result.get("eval_wall_s", 0.0) + time.monotonic() - t0, 1)
        result["wall_s"] = round(time.monotonic() - started, 1)
        write_atomic(path, result)
        log(f"({condition}) seed {seed}: online step {steps} success {result['curve'][-1][1]:.2f} "
            f"({result['wall_s']:.0f}s)")

    evaluate_at(0, regime.start_episodes if condition == "a" else regime.eval_episodes)
    env, human, runner = online_loop_parts(td3, spec, loop, seed)
    normalized = condition != "d"
    steps = episodes = interventions = updates = 0
    while steps < regime.budget:
        obs, done = env.reset(), False
        human.reset()
        episodes += 1
        while not done and steps < regime.budget:
            obs, done, takeover = online_step(env, human, runner, buffers, obs, episodes)
            steps, interventions = steps + 1, interventions + int(takeover)
            if not normalized and done:  # (d): statistics of the first episode, as the learner takes them
                parts = [buffers.human.valid_slice(), buffers.policy.valid_slice()]
                stacked = np.concatenate([state_vector(s, spec) for s in parts if len(s["agent_pos"])])
                td3.set_normalization(*compute_state_stats(stacked), low, high)
                normalized = True
            while normalized and updates < algo["utd_ratio"] * steps:
                sampled = buffers.sample(algo["batch_size"], algo["human_ratio"], rng)
                td3.update(td3_batch(sampled, spec), bc_weight=bc_weight_schedule(
                    algo["online_bc_weight"], algo["online_bc_decay_steps"], updates),
                           update_actor=not actor_holds_still(
                               algo["critic_warmup_steps"], algo["offline_steps"] > 0, updates))
                updates += 1
            if steps % regime.eval_every == 0:
                result.update(episodes=episodes, human_steps=interventions, updates=updates)
                evaluate_at(steps, regime.eval_episodes)
    env.close()
    result.update(finished=True, wall_s=round(time.monotonic() - started, 1))
    write_atomic(path, result)
    return result


# ---------------------------------------------------------------------------------------------- metrics


def metrics(r: dict) -> dict:
    """(i) first online step where this and the next evaluation are >= target (None: > budget), (ii) mean of
    the last two evaluations, (iii) area under the success curve (trapezoids, divided by the budget: 0..1)."""
    curve, reg = r["curve"], r["regime"]
    first = next((s for (s, y), (_, y2) in zip(curve, curve[1:], strict=False)
                  if y >= reg["target"] and y2 >= reg["target"]), None)
    xs, ys = np.array([c[0] for c in curve], float), np.array([c[1] for c in curve], float)
    auc = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / reg["budget"])
    start = curve[0][1]
    after = [y for s, y in curve[1:]]
    collapse = any(a < start - 0.15 and b < start - 0.15 for a, b in zip(after, after[1:], strict=False))
    return {"first": first, "last2": float(np.mean(ys[-2:])), "auc": auc, "start": start, "collapse": collapse}


def offline_only(a: dict) -> dict:
    """(c) from an (a) run: the step-0 policy for the whole budget."""
    start = a["curve"][0][1]
    return {"first": 0 if start >= a["regime"]["target"] else None, "last2": start, "auc": start, "start": start,
            "collapse": False}


def bootstrap(values: list[float], stat, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    arr = np.asarray(values, float)
    boots = [stat(arr[rng.integers(0, len(arr), len(arr))]) for _ in range(n)]
    return float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def load(out: Path, carry: Path | None = None) -> dict[str, dict[int, dict]]:
    """The finished runs in `out`; a condition with none there is taken from `carry` (an earlier study whose
    runs of that condition the change under test does not affect)."""
    runs: dict[str, dict[int, dict]] = {c: {} for c in CONDITIONS}
    for f in sorted(out.glob("*-seed*.json")):
        r = json.loads(f.read_text())
        if r.get("finished"):
            runs[r["condition"]][r["seed"]] = r
    if carry is not None:
        earlier = load(carry)
        for c in RUN_CONDITIONS:
            if not runs[c]:
                runs[c] = earlier[c]
    runs["c"] = {s: r for s, r in runs["a"].items()}
    return runs


def report(out: Path, plot: Path | None, carry: Path | None = None) -> str:
    runs = load(out, carry)
    per = {c: {s: (offline_only(r) if c == "c" else metrics(r)) for s, r in rs.items()} for c, rs in runs.items()}
    any_run = next((r for rs in runs.values() for r in rs.values()), None)
    if any_run is None:
        return "no finished runs"
    reg = any_run["regime"]
    never = reg["budget"] + reg["eval_every"]  # "> budget" sorts above every reached step

    def fmt_first(v: int | None) -> str:
        return f"> {reg['budget']}" if v is None else str(v)

    seeds = sorted({s for rs in runs.values() for s in rs})
    lines = [f"budget {reg['budget']} online steps; {reg['demos']} demos; evaluations every {reg['eval_every']} "
             f"steps on {reg['eval_episodes']} held-out positions ({reg['start_episodes']} at step 0)", ""]
    for key, title in (("first", "(i) first online step with this and the next evaluation >= 80 %"),
                       ("last2", "(ii) mean success of the last two evaluations"),
                       ("auc", "(iii) area under the success curve (mean success over the budget)")):
        lines += [f"**{title}**", "", "| condition | " + " | ".join(str(s) for s in seeds)
                  + " | median [95 % CI] | mean [95 % CI] |", "| --- |" + " --- |" * (len(seeds) + 2)]
        for c, name in CONDITIONS.items():
            if not per[c]:
                continue
            vals = [per[c][s][key] for s in seeds if s in per[c]]
            if key == "first":
                cells = [fmt_first(per[c][s]["first"]) if s in per[c] else "-" for s in seeds]
                nums = [never if v is None else v for v in vals]
                lo, hi = bootstrap(nums, np.median)
                med = statistics.median(nums)
                mean_cell = "-"
                med_cell = (f"{fmt_first(None if med >= never else med)} "
                            f"[{fmt_first(None if lo >= never else lo)}, {fmt_first(None if hi >= never else hi)}]")
            else:
                cells = [f"{100 * per[c][s][key]:.0f}" if s in per[c] else "-" for s in seeds]
                lo, hi = bootstrap(vals, np.median)
                mlo, mhi = bootstrap(vals, np.mean)
                med_cell = f"{100 * statistics.median(vals):.0f} [{100 * lo:.0f}, {100 * hi:.0f}]"
                mean_cell = f"{100 * np.mean(vals):.1f} [{100 * mlo:.0f}, {100 * mhi:.0f}]"
            lines.append(f"| ({c}) {name} | " + " | ".join(cells) + f" | {med_cell} | {mean_cell} |")
        lines.append("")
    starts = {s: m["start"] for s, m in per["a"].items()}
    collapsed = [s for s, m in per["a"].items() if m["collapse"]]
    lines.append(f"(a) start (offline stage alone, {reg['start_episodes']} episodes): "
                 + ", ".join(f"seed {s} {100 * v:.0f} %" for s, v in sorted(starts.items()))
                 + (f"; mean {100 * np.mean(list(starts.values())):.1f} %" if starts else ""))
    lines.append(f"collapses in (a) (two consecutive evaluations > 15 points below the start): {len(collapsed)} of "
                 f"{len(per['a'])}" + (f" (seeds {collapsed})" if collapsed else ""))
    lines.append(goal(per, reg))
    lines += ["", "curves (online step: success %):", ""]
    for c in RUN_CONDITIONS:
        for s, r in sorted(runs[c].items()):
            lines.append(f"- ({c}) seed {s}: " + ", ".join(f"{x}: {100 * y:.0f}" for x, y in r["curve"])
                         + f"  [{r['wall_s']:.0f} s, human steps {r.get('human_steps', 0)}]")
    if plot is not None:
        draw(runs, reg, plot)
    return "\n".join(lines)


def goal(per: dict, reg: dict) -> str:
    """The pre-registered goal: median (i) of (a) <= median (i) of (b) / 3, mean (ii) of (a) >= (c)'s + 30."""
    if not per["a"] or not per["b"]:
        return "goal: not evaluable yet (needs finished (a) and (b) runs)"
    never = reg["budget"] + reg["eval_every"]
    med = {c: statistics.median([never if m["first"] is None else m["first"] for m in per[c].values()])
           for c in ("a", "b")}
    b_text = f"> {reg['budget']} (counted as {reg['budget']}: a lower bound)" if med["b"] >= never else str(med["b"])
    first_ok = med["a"] < never and med["a"] <= min(med["b"], reg["budget"]) / 3
    gain = np.mean([m["last2"] for m in per["a"].values()]) - np.mean([m["last2"] for m in per["c"].values()])
    return (f"goal (i): median (a) {med['a'] if med['a'] < never else '> budget'} vs (b) {b_text}: "
            f"{'met' if first_ok else 'NOT met'}; goal (ii): mean (a) - mean (c) = {100 * gain:.1f} points: "
            f"{'met' if gain >= 0.30 else 'NOT met'} ({len(per['a'])} (a) seeds, {len(per['b'])} (b) seeds)")


def draw(runs: dict, reg: dict, path: Path) -> None:
    colors = {"a": "tab:blue", "b": "tab:orange", "d": "tab:green"}
    draw_curves([(f"({c}) {CONDITIONS[c]}", colors[c], [r for _, r in sorted(runs[c].items())])
                 for c in RUN_CONDITIONS],
                reg["target"], f"held-out success, % ({reg['eval_episodes']} episodes; {reg['start_episodes']} at 0)",
                f"pick-cube, {reg['demos']} demos, learner defaults; one line per seed; (c) = (a) at step 0", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--conditions", nargs="+", default=list(RUN_CONDITIONS), choices=list(RUN_CONDITIONS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(100, 110)))
    p.add_argument("--out", type=Path, default=Path("docs/learning-study"), help="one JSON per run here")
    p.add_argument("--regime", choices=list(REGIMES), default="5-demos",
                   help="the study's regime: 5-demos (studies 1 and 2), 3-demos (study 3)")
    p.add_argument("--demos", type=int, help="pilot only: override the regime's demo count (not for the study)")
    p.add_argument("--budget", type=int, help="pilot only: override the online budget (not for the study)")
    p.add_argument("--report", action="store_true", help="print the tables of the finished runs in --out")
    p.add_argument("--plot", type=Path, help="with --report: draw the curves to this PNG")
    p.add_argument("--carry", type=Path, help="with --report: take the conditions that have no run in --out from "
                                              "this earlier study's directory")
    args = p.parse_args()
    if args.report:
        print(report(args.out, args.plot, args.carry))
        return
    torch.set_num_threads(1)
    regime = REGIMES[args.regime]
    if args.demos is not None or args.budget is not None:
        regime = replace(regime, demos=regime.demos if args.demos is None else args.demos,
                         budget=regime.budget if args.budget is None else args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for c in args.conditions:
            path = args.out / f"{c}-seed{seed}.json"
            if path.exists() and json.loads(path.read_text()).get("finished"):
                print(f"({c}) seed {seed}: finished already, skipped", flush=True)
                continue
            run(c, seed, regime, path, log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    sys.exit(main())
