"""Online environment steps to reach 80 % evaluation success, with and without demos and offline pretraining.

    python benchmarks/sample_efficiency.py --seeds 0 1 2 --demos 5 --offline-steps 10000 --out results.json
    python benchmarks/sample_efficiency.py --report results.json --plot docs/sample-efficiency.png

(docs/sample-efficiency.md has the exact commands behind the committed table, run as parallel processes.)

Conditions (same online update rule, same scripted human, same miscalibrated arm):

* ``a`` — TD3+BC offline on the demos, then online TD3 on the 50/50 dual buffer (the hilrl recipe);
* ``b`` — the same demos in the human buffer, online TD3 from a random policy, no offline stage (RLPD/HIL-SERL);
* ``c`` — online TD3 with no demos (the human buffer holds only takeovers).

The loop is synchronous and in-process: one env step (policy + exploration noise, or the scripted human
once it has taken over) -> `DualBuffer.add` -> ``utd`` `TD3.update` calls on `DualBuffer.sample` minibatches
-> the next step acts with the updated policy. It uses the project's own `SimPickCube` (behind
`hardware.perturb.OffsetArm`), `ScriptedExpert`/`ScriptedTeleop`, `PolicyRunner`, `DualBuffer` and `TD3`;
nothing is reimplemented. Unlike the two-process `hilrl demo` the result does not depend on how fast
the machine is (no weight lag, no race between actor and learner), which is what a step count needs.
Every ``--eval-every`` online env steps the deterministic policy runs ``--eval-episodes`` episodes (no
noise, no takeover) on fixed block positions; a run ends at the first evaluation >= ``--target`` or at
``--max-env-steps`` ("not reached").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hilrl.actor.evaluate import evaluate
from hilrl.actor.human import ScriptedTeleop
from hilrl.actor.policy_runner import PolicyRunner
from hilrl.buffers.replay import DualBuffer, Transition
from hilrl.buffers.spec import Spec, state_vector
from hilrl.hardware.expert import ScriptedExpert
from hilrl.hardware.perturb import make_sim
from hilrl.learner.networks import PolicyConfig, compute_state_stats
from hilrl.learner.td3 import TD3, TD3Config

CONDITIONS = {"a": "TD3+BC offline -> online TD3, 50/50", "b": "demos 50/50, no offline (RLPD-style)",
              "c": "online TD3, no demos"}


@dataclass
class Settings:
    action_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    demos: int = 10
    demo_noise: float = 0.1
    offline_steps: int = 2000
    alpha: float = 0.5
    online_bc_weight: float = 1.0
    utd: int = 1
    batch_size: int = 256
    human_ratio: float = 0.5
    exploration_noise: float = 0.1
    takeover_after: int = 50
    eval_every: int = 500
    eval_episodes: int = 20
    target: float = 0.8
    max_env_steps: int = 6000
    hidden: tuple[int, ...] = field(default=(256, 256))


def record_demos(settings: Settings, seed: int) -> tuple[Spec, list[Transition]]:
    """Scripted-expert demonstrations on the *unperturbed* arm (the demos never saw the offset)."""
    env = make_sim(seed=seed + 5000)
    expert = ScriptedExpert(noise=settings.demo_noise, seed=seed + 6000)
    out: list[Transition] = []
    for episode in range(settings.demos):
        obs, done = env.reset(), False
        expert.reset()
        while not done:
            action = expert.act(obs)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            out.append(Transition(obs, action, reward, next_obs, terminated, truncated, -1 - episode, True))
            obs = next_obs
    env.close()
    return env.spec, out


def td3_batch(sampled: dict, spec: Spec) -> dict[str, torch.Tensor]:
    """A sampled minibatch in the form `TD3.update` takes (as the learner's Trainer builds it); also the
    h-step windows of buffers/sequences.py for `ChunkedTD3.update` (benchmarks/chunking_efficiency.py)."""
    done = sampled["terminated"] if "terminated" in sampled else sampled["done"]
    batch = {"state": state_vector(sampled["obs"], spec), "next_state": state_vector(sampled["next_obs"], spec),
             "done": done.astype(np.float32)}
    for key in ("human", "action", "reward", "valid", "action_mask"):
        if key in sampled:
            batch[key] = sampled[key]
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def _eval(td3: TD3, settings: Settings, seed: int) -> float:
    env = make_sim(seed=seed, action_offset=settings.action_offset)
    try:
        return evaluate(td3.policy, env, settings.eval_episodes, seed=10_000 + seed, progress=False)["success_rate"]
    finally:
        env.close()


def online_loop_parts(td3: TD3, spec: Spec, settings: Settings, seed: int) -> tuple:
    """The online arm (offset applied), the scripted human and the policy runner of one run, seeded the same
    in every benchmark that uses them (also benchmarks/chunking_efficiency.py)."""
    env = make_sim(seed=seed, action_offset=settings.action_offset)
    human = ScriptedTeleop(ScriptedExpert(noise=settings.demo_noise, seed=seed + 1), settings.takeover_after)
    runner = PolicyRunner(spec, settings.exploration_noise, np.random.default_rng(seed + 2))
    runner.policy = td3.policy
    return env, human, runner


def online_step(env, human, runner, buffers: DualBuffer, obs: dict, episode: int,
                clock: Callable[[str], AbstractContextManager] | None = None) -> tuple[dict, bool, bool]:
    """One online env step as the actor takes it: the scripted human once it has taken over (a chunked
    policy then drops its plan), else the policy with exploration noise; the transition goes into the dual
    buffer. Returns (next observation, episode done, was a takeover). ``clock(phase)``, if given, times the
    choice of the action ("act") and the env step ("sim") (benchmarks/camera_study.py); it changes nothing else."""
    timed = clock or _untimed
    takeover = human.poll(obs).takeover
    if takeover:
        runner.drop_plan()
    with timed("act"):
        action = runner.clamp(human.action(obs)) if takeover else runner.act(obs, explore=True)
    with timed("sim"):
        next_obs, reward, terminated, truncated, _ = env.step(action)
    buffers.add(Transition(obs, action, reward, next_obs, terminated, truncated, episode, takeover))
    return next_obs, terminated or truncated, takeover


def _untimed(phase: str) -> AbstractContextManager:
    return nullcontext()


class Curve:
    """The evaluation curve of one run, kept in `result` (saved after every evaluation, so a run stopped
    early keeps its partial curve); also used by benchmarks/chunking_efficiency.py."""

    def __init__(self, td3: TD3, settings: Settings, seed: int, result: dict, save, log, label: str) -> None:
        self.td3, self.settings, self.seed = td3, settings, seed
        self.result, self.save, self.log, self.label = result, save, log, label
        self.started = time.monotonic()
        self.points: list[tuple[int, float]] = []

    @property
    def reached(self) -> bool:
        return self.points[-1][1] >= self.settings.target

    def evaluate(self, steps: int, episodes: int, interventions: int) -> bool:
        """Evaluate at `steps` online env steps; True when the run ends here (target reached or cap)."""
        self.points.append((steps, _eval(self.td3, self.settings, self.seed)))
        self.result.update(episodes=episodes, human_steps=interventions)
        self.save()
        self.log(f"  {self.label}: env steps {steps} success {self.points[-1][1]:.2f} "
                 f"(episodes {episodes}, human steps {interventions}, {time.monotonic() - self.started:.0f}s)")
        return self.reached or steps >= self.settings.max_env_steps

    def finish(self, episodes: int, interventions: int) -> dict:
        reached = next((s for s, r in self.points if r >= self.settings.target), None)
        self.result.update(steps_to_target=reached, episodes=episodes, human_steps=interventions, finished=True,
                           wall_s=round(time.monotonic() - self.started, 1))
        return self.result


def run(condition: str, seed: int, settings: Settings, log=print, result: dict | None = None,
        save=lambda: None) -> dict:
    """One run of one condition; returns its learning curve and the env steps to reach the target.

    `result` (filled in place, "finished" false until the end) and `save` (called after every evaluation)
    let a caller keep the partial curve of a run that is stopped early.
    """
    result = {} if result is None else result
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec, demos = record_demos(settings, seed)
    buffers = DualBuffer(spec, 200_000, 200_000)
    td3 = TD3(PolicyConfig(spec.state_dim, spec.action_dim, settings.hidden), TD3Config(alpha=settings.alpha),
              torch.device("cpu"), seed=seed)
    low, high = np.array(spec.action.low), np.array(spec.action.high)
    if condition in ("a", "b"):
        for t in demos:
            buffers.add(t)
        td3.set_normalization(*compute_state_stats(np.stack([state_vector(t.obs, spec) for t in demos])), low, high)
    curve = Curve(td3, settings, seed, result, save, log, f"{condition} seed {seed}")
    result.update(condition=condition, seed=seed, steps_to_target=None, curve=curve.points, finished=False)
    if condition == "a":
        for _ in range(settings.offline_steps):
            idx = buffers.human.sample_indices(settings.batch_size, rng)
            part = buffers.human.gather(idx)
            part["human"] = np.ones(settings.batch_size, np.float32)
            td3.update(td3_batch(part, spec), bc_weight=1.0)
    env, human, runner = online_loop_parts(td3, spec, settings, seed)
    steps = episodes = interventions = 0
    curve.evaluate(0, episodes, interventions)
    normalized = condition != "c"
    while not curve.reached and steps < settings.max_env_steps:
        obs, done, t = env.reset(), False, 0
        human.reset()
        episodes += 1
        while not done:
            obs, done, takeover = online_step(env, human, runner, buffers, obs, episodes)
            t, steps = t + 1, steps + 1
            interventions += int(takeover)
            if not normalized and done:  # (c): statistics of the first episode, as the learner takes them
                states = [buffers.human.valid_slice(), buffers.policy.valid_slice()]
                stacked = np.concatenate([state_vector(s, spec) for s in states if len(s["agent_pos"])])
                td3.set_normalization(*compute_state_stats(stacked), low, high)
                normalized = True
            if normalized:
                for _ in range(settings.utd):
                    sampled = buffers.sample(settings.batch_size, settings.human_ratio, rng)
                    td3.update(td3_batch(sampled, spec), bc_weight=settings.online_bc_weight)
            if steps % settings.eval_every == 0 and curve.evaluate(steps, episodes, interventions):
                break
    env.close()
    return curve.finish(episodes, interventions)


# ---------------------------------------------------------------------------------------------- report


def _fmt(r: dict, cap: int) -> str:
    if r["steps_to_target"] is not None:
        return str(r["steps_to_target"])
    if not r.get("finished", True):  # stopped before its cap (out of time): a lower bound only
        return f"not reached by {r['curve'][-1][0]} (stopped)"
    return f"not reached (cap {cap})"


def _median(values: list[int | None], cap: int) -> str:
    """Median with "not reached" counted as more than any number of steps."""
    keyed = sorted(float("inf") if v is None else v for v in values)
    m = statistics.median_low(keyed) if len(keyed) % 2 == 0 else statistics.median(keyed)
    return "not reached" if m == float("inf") else str(int(m))


def ratio_line(data: dict) -> str:
    """The goal's figure: (b)'s median steps over (a)'s. "not reached" counts as the cap, so the ratio
    is then a lower bound (">="); (a) at 0 steps (the offline stage alone reached the target) counts as
    one evaluation interval, so that ratio is a lower bound as well."""
    cap, every = data["settings"]["max_env_steps"], data["settings"]["eval_every"]
    med = {}
    for c in ("a", "b"):
        values = [r["steps_to_target"] for r in data["runs"] if r.get("condition") == c]
        if not values:
            return ""
        med[c] = _median(values, cap)
    if med["a"] == "not reached":
        return f"(b)/(a) median online steps: (a) {med['a']}, (b) {med['b']}: no ratio"
    a = max(int(med["a"]), every)
    b, bound = (cap, ">=") if med["b"] == "not reached" else (int(med["b"]), "" if int(med["a"]) else ">=")
    return (f"(b)/(a) median online steps: (a) {med['a']}, (b) {med['b']}"
            f"{f' (counted as the cap, {cap})' if med['b'] == 'not reached' else ''}: ratio {bound}{b / a:.1f}")


def merge(results: list[dict]) -> dict:
    """One results object from several files written with the same settings."""
    for other in results[1:]:
        if other["settings"] != results[0]["settings"]:
            raise SystemExit("--report: the files were written with different settings; report them separately")
    return {"settings": results[0]["settings"], "runs": [r for data in results for r in data["runs"]]}


def report(data: dict, plot: Path | None) -> str:
    cap = data["settings"]["max_env_steps"]
    seeds = sorted({r["seed"] for r in data["runs"] if r})
    lines = ["| condition | " + " | ".join(f"seed {s}" for s in seeds) + " | median |",
             "| --- |" + " --- |" * (len(seeds) + 1)]
    for c, name in CONDITIONS.items():
        runs = {r["seed"]: r for r in data["runs"] if r.get("condition") == c}
        if not runs:
            continue
        cells = [_fmt(runs[s], cap) if s in runs else "-" for s in seeds]
        lines.append(f"| ({c}) {name} | " + " | ".join(cells) + f" | "
                     f"{_median([r['steps_to_target'] for r in runs.values()], cap)} |")
    start = ["| condition | " + " | ".join(f"seed {s}" for s in seeds) + " |", "| --- |" + " --- |" * len(seeds)]
    for c, name in CONDITIONS.items():
        runs = {r["seed"]: r for r in data["runs"] if r.get("condition") == c}
        if runs:
            start.append(f"| ({c}) {name} | " + " | ".join(
                f"{runs[s]['curve'][0][1]:.0%}" if s in runs else "-" for s in seeds) + " |")
    at = range(0, cap + 1, data["settings"]["eval_every"])
    curves = ["| run | " + " | ".join(f"step {x}" for x in at) + " | human steps | episodes |",
              "| --- |" + " --- |" * (len(at) + 2)]
    for c in CONDITIONS:
        for r in sorted((r for r in data["runs"] if r.get("condition") == c), key=lambda r: r["seed"]):
            points = {int(x): y for x, y in r["curve"]}
            cells = [f"{points[x]:.0%}" if x in points else "" for x in at]
            curves.append(f"| ({c}) seed {r['seed']} | " + " | ".join(cells)
                          + f" | {r.get('human_steps', 0)} | {r.get('episodes', 0)} |")
    start += ["", "eval success at every evaluation (online env steps; human steps = takeover steps):", ""] + curves
    if plot is not None:
        _plot(data, plot)
    return ("\n".join(lines) + f"\n\n{ratio_line(data)}\n\n"
            + "success at online env step 0 (after the offline stage for (a)):\n\n" + "\n".join(start))


def draw_curves(groups: list[tuple[str, str, list[dict]]], target: float, ylabel: str, title: str,
                path: Path) -> None:
    """One line per run (its "curve" of [online step, success]), one colour and legend entry per group of
    (label, colour, runs); also used by benchmarks/learning_study.py."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for label, color, runs in groups:
        for i, r in enumerate(runs):
            xs, ys = zip(*r["curve"], strict=True)
            ax.plot(xs, [100 * y for y in ys], color=color, alpha=0.75, marker="o", ms=3,
                    label=label if i == 0 else None)
    ax.axhline(100 * target, color="grey", ls="--", lw=1)
    ax.set_xlabel("online environment steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.set_ylim(-3, 103)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot(data: dict, path: Path) -> None:
    colors = {"a": "tab:blue", "b": "tab:orange", "c": "tab:green"}
    s = data["settings"]
    arm = f"arm offset {tuple(s['action_offset'])}" if any(s["action_offset"]) else "plain arm"
    draw_curves([(f"({c}) {name}", colors[c], [r for r in data["runs"] if r.get("condition") == c])
                 for c, name in CONDITIONS.items()], s["target"], f"eval success, % ({s['eval_episodes']} episodes)",
                f"pick-cube, {arm}, {s['demos']} demos, (a) {s['offline_steps']} offline updates; one line per seed",
                path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Settings()
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--action-offset", nargs=3, type=float, default=[0.0, 0.0, 0.0],
                   help="constant shift of the executed dx dy dz (action units) on the online arm")
    for name in ("demos", "offline_steps", "utd", "eval_every", "eval_episodes", "max_env_steps", "takeover_after"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("demo_noise", "alpha", "online_bc_weight", "exploration_noise", "target"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--out", type=Path, help="write every run's curve here (JSON), rewritten after each run")
    p.add_argument("--report", type=Path, nargs="+", help="print the table of results JSON file(s) (e.g. one per "
                   "seed, from parallel runs) instead of running")
    p.add_argument("--plot", type=Path, help="with --report: also draw the learning curves to this PNG")
    args = p.parse_args()
    if args.report is not None:
        print(report(merge([json.loads(f.read_text()) for f in args.report]), args.plot))
        return
    torch.set_num_threads(1)
    settings = Settings(action_offset=tuple(args.action_offset), **{
        k: getattr(args, k) for k in ("demos", "offline_steps", "utd", "eval_every", "eval_episodes",
                                      "max_env_steps", "takeover_after", "demo_noise", "alpha",
                                      "online_bc_weight", "exploration_noise", "target")})
    data = {"settings": asdict(settings), "runs": []}
    def save() -> None:
        if args.out is not None:
            args.out.write_text(json.dumps(data, indent=1))

    for seed in args.seeds:
        for c in args.conditions:
            data["runs"].append({})
            run(c, seed, settings, result=data["runs"][-1], save=save)
            save()
    print(report(data, None))


if __name__ == "__main__":
    main()
