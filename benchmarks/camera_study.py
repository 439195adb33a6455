"""The pre-registered camera-policy study of docs/camera-policy.md (issue 17): runner and report.

    for s in 200 201 202; do MUJOCO_GL=egl python benchmarks/camera_study.py --seeds $s --out docs/camera-policy & done
    python benchmarks/camera_study.py --report --out docs/camera-policy --plot docs/camera-policy.png
    smoke: MUJOCO_GL=egl python benchmarks/camera_study.py --seeds 999 --demos 2 --budget 4 --eval-every 2 \\
        --eval-episodes 1 --pretrain-steps 2 --offline-steps 2 --out /tmp/cs

Observation = ``front`` + ``wrist`` cameras (64x64 in the protocol) + ``agent_pos``; ``SimPickCube(cameras=True)``
has no ``environment_state`` in its spec, so no privileged state reaches the buffers, the encoder pretraining, the
policy or the critic. The scripted human reads the block position from ``SimPickCube.scene()`` to act.

One run (the product's classes in a synchronous in-process loop, so the update-to-data ratio does not
depend on machine load): ``--demos`` scripted demonstrations into a `DualBuffer`; the encoder pretrained
by behaviour cloning on them (learner/encoder_pretrain.py); a `TD3` with the frozen pretrained encoder and
the feature cache (learner/features.py, ``feature_views`` views per frame); TD3+BC offline on the human
buffer; then online with the learner's defaults (50/50 sampling, UTD, BC weight schedule, scripted takeover
after ``takeover_after`` steps) for ``--budget`` env steps; every ``--eval-every`` steps the deterministic
policy is evaluated on ``--eval-episodes`` held-out block positions (the same for every run).

Where the time goes is recorded per run (``time_s``): ``sim`` (env steps with rendering, demos included),
``pretrain``, ``offline`` (offline updates), ``act`` (one encoder pass per policy step, which becomes the frame's
cached view 0), ``update`` (online updates, cache fills included), ``eval`` (``eval_sim``: its env steps).
One JSON per seed in ``--out``, rewritten after every evaluation; a finished seed is skipped, an unfinished
one starts again from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from learning_study import commit
from sample_efficiency import draw_curves, online_step

from hilrl.actor.config import ActorConfig
from hilrl.actor.evaluate import evaluate_batched
from hilrl.actor.human import ScriptedTeleop
from hilrl.actor.policy_runner import PolicyRunner
from hilrl.buffers.replay import DualBuffer, Transition
from hilrl.buffers.spec import state_vector
from hilrl.hardware.expert import ScriptedExpert
from hilrl.hardware.sim import SimPickCube
from hilrl.learner.config import LearnerConfig
from hilrl.learner.encoder_pretrain import pretrain_encoder
from hilrl.learner.features import cached_batch, dual_indices, feature_cache
from hilrl.learner.networks import compute_state_stats, policy_config_for
from hilrl.learner.td3 import TD3
from hilrl.learner.training import actor_holds_still, bc_weight_schedule


@dataclass(frozen=True)
class Protocol:
    """docs/camera-policy.md's study protocol, revised after pilot C1 and pre-registered before any online run
    (overrides are for pilots and smoke runs only)."""

    demos: int = 30
    budget: int = 5_000
    eval_every: int = 1000
    eval_episodes: int = 50
    eval_seed: int = 777_777  # held-out block positions: a stream no training episode uses
    pretrain_steps: int = 2000
    pretrain_batch: int = 64
    offline_steps: int = LearnerConfig().offline_steps
    feature_views: int = 2
    encoder: str = "convnet"
    image_size: int = 64
    eval_envs: int = 10  # envs stepped together in an evaluation (one encoder pass per step for all): speed only
    goal_mean: float = 0.70
    goal_each: float = 0.60


class Clock:
    """Seconds per phase, summed over a run (``eval_sim``: the env steps inside ``eval``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] += time.monotonic() - t0


def write_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class TimedEnv:
    """An env whose resets and steps count as ``phase`` on ``clock`` (the rendering share of evaluations)."""

    def __init__(self, env: SimPickCube, clock: Clock, phase: str) -> None:
        self.env, self.clock, self.phase, self.spec = env, clock, phase, env.spec

    def reset(self, seed: int | None = None) -> dict:
        with self.clock(self.phase):
            return self.env.reset(seed=seed)

    def step(self, action: np.ndarray) -> tuple:
        with self.clock(self.phase):
            return self.env.step(action)


class EncoderTap:
    """The last output of the policy's encoder: the acting pass over the frame the policy acted on, which
    `FeatureCache.offer` turns into that frame's view 0 (so the cache does not encode it a second time)."""

    def __init__(self, td3: TD3) -> None:
        self.last: torch.Tensor | None = None
        assert td3.policy.encoder is not None
        td3.policy.encoder.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.last = output

    def clear(self) -> None:
        self.last = None


def record_demos(env: SimPickCube, expert: ScriptedExpert, episodes: int, buffers: DualBuffer, clock: Clock) -> None:
    for episode in range(episodes):
        obs, done = env.reset(), False
        expert.reset()
        while not done:
            action = expert.act({**obs, **env.scene()})  # the human sees the block; the observation does not
            with clock("sim"):
                nxt, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            buffers.add(Transition(obs, action, reward, nxt, terminated, truncated, -1 - episode, True))
            obs = nxt


def run(seed: int, proto: Protocol, out: Path, log=print) -> dict:
    """One seed to the full budget; the result is rewritten at ``out/seed<seed>.json`` after every evaluation."""
    lcfg, actor = LearnerConfig(), ActorConfig()
    algo = replace(lcfg.algo, freeze_encoder=True, feature_views=proto.feature_views)
    path, clock, started = out / f"seed{seed}.json", Clock(), time.monotonic()
    result = {"seed": seed, "protocol": asdict(proto), "algo": asdict(algo), "commit": commit(), "curve": [],
              "settings": {k: getattr(lcfg, k) for k in ("batch_size", "human_ratio", "utd_ratio", "online_bc_weight",
                                                         "online_bc_decay_steps", "critic_warmup_steps", "hidden")},
              "actor": {"demo_noise": actor.demo_noise, "exploration_noise": actor.exploration_noise,
                        "takeover_after": actor.takeover_after}, "finished": False}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = SimPickCube(seed=seed, cameras=True, image_size=proto.image_size)
    spec = env.spec
    assert "environment_state" not in {f.name for f in spec.observation}, "privileged state in a camera spec"
    capacity = proto.budget + 100 * proto.demos + 1
    buffers = DualBuffer(spec, capacity, capacity)
    record_demos(env, ScriptedExpert(noise=actor.demo_noise, seed=seed + 6000), proto.demos, buffers, clock)
    result["demo_steps"] = len(buffers.human)
    weights = out / f"encoder-seed{seed}.safetensors"
    with clock("pretrain"):
        result["pretrain"] = pretrain_encoder(spec, buffers.human, weights, steps=proto.pretrain_steps,
                                              batch_size=proto.pretrain_batch, pad=algo.image_pad, seed=seed,
                                              encoder=proto.encoder)
    algo = replace(algo, encoder_weights=str(weights))
    td3 = TD3(policy_config_for(spec, tuple(lcfg.hidden), proto.encoder), algo, torch.device("cpu"), seed=seed)
    states = buffers.human.valid_slice(tuple(f.name for f in spec.state_features))
    td3.set_normalization(*compute_state_stats(state_vector(states, spec)), spec.action.low, spec.action.high)
    cache, lock = feature_cache(td3), nullcontext()
    assert cache is not None
    batch_size = lcfg.batch_size

    def update(bc_weight: float, human_only: bool, update_actor: bool = True) -> None:
        with clock("offline" if human_only else "update"):
            batch = cached_batch(cache, lambda: dual_indices(buffers, batch_size, lcfg.human_ratio, rng, human_only),
                                 spec, lock, rng)
            td3.update(batch, bc_weight=bc_weight, update_actor=update_actor)

    eval_envs = [SimPickCube(seed=0, cameras=True, image_size=proto.image_size)
                 for _ in range(min(proto.eval_envs, proto.eval_episodes))]
    timed_envs = [TimedEnv(e, clock, "eval_sim") for e in eval_envs]

    def evaluate_at(steps: int) -> None:
        with clock("eval"):
            rate = evaluate_batched(td3.policy, timed_envs, proto.eval_episodes, seed=proto.eval_seed)
        result["curve"].append([steps, rate["success_rate"]])
        result["eval_steps"] = result.get("eval_steps", 0) + round(rate["mean_length"] * rate["episodes"])
        result.update(time_s={k: round(v, 1) for k, v in clock.seconds.items()},
                      wall_s=round(time.monotonic() - started, 1), frames_encoded=cache.encoded,
                      view0_from_acting=cache.reused)
        write_atomic(path, result)
        log(f"seed {seed}: online step {steps}: success {rate['success_rate']:.2f} ({result['wall_s']:.0f} s; "
            + ", ".join(f"{k} {v:.0f}" for k, v in result["time_s"].items()) + ")")

    for _ in range(proto.offline_steps):
        update(1.0, human_only=True)
    evaluate_at(0)  # the offline-only policy
    human = ScriptedTeleop(ScriptedExpert(noise=actor.demo_noise, seed=seed + 1), actor.takeover_after,
                           scene=env.scene)
    runner = PolicyRunner(spec, actor.exploration_noise, np.random.default_rng(seed + 2))
    runner.policy = td3.policy
    tap, policy_side = EncoderTap(td3), buffers.policy
    steps = updates = episodes = interventions = 0
    while steps < proto.budget:
        obs, done = env.reset(), False
        human.reset()
        episodes += 1
        while not done and steps < proto.budget:
            tap.clear()
            obs, done, takeover = online_step(env, human, runner, buffers, obs, episodes, clock)
            if not takeover and tap.last is not None:  # the acting pass = view 0 of the frame acted on
                row = (policy_side.added - 1) % policy_side.capacity
                cache.offer(policy_side.frames, int(policy_side.obs_frame[row]), tap.last)
            steps, interventions = steps + 1, interventions + int(takeover)
            while updates < lcfg.utd_ratio * steps:
                update(bc_weight_schedule(lcfg.online_bc_weight, lcfg.online_bc_decay_steps, updates), False,
                       update_actor=not actor_holds_still(
                           lcfg.critic_warmup_steps, proto.offline_steps > 0, updates))
                updates += 1
            if steps % proto.eval_every == 0:
                result.update(episodes=episodes, human_steps=interventions, updates=updates)
                evaluate_at(steps)
    env.close()
    for e in eval_envs:
        e.close()
    result.update(finished=True, wall_s=round(time.monotonic() - started, 1))
    write_atomic(path, result)
    return result


def report(out: Path, plot: Path | None = None) -> str:
    runs = [json.loads(f.read_text()) for f in sorted(out.glob("seed*.json"))]
    if not runs:
        return "no runs"
    proto = Protocol(**runs[0]["protocol"])
    if plot is not None:
        colors = [f"C{i % 10}" for i in range(len(runs))]
        draw_curves([(f"seed {r['seed']}", color, [r]) for r, color in zip(runs, colors, strict=True)],
                    proto.goal_mean, f"eval success, % ({proto.eval_episodes} held-out positions)",
                    f"pick-cube, two {proto.image_size}x{proto.image_size} cameras + agent_pos, {proto.demos} demos, "
                    f"frozen {proto.encoder}; step 0 = offline only", plot)
    lines = ["| seed | offline only | last two evaluations | finished | wall s | time shares |", "| --- " * 6 + "|"]
    last2 = []
    for r in runs:
        ys = [y for _, y in r["curve"]]
        value = float(np.mean(ys[-2:])) if len(ys) > 1 else float("nan")
        if r["finished"]:
            last2.append(value)
        total = sum(v for k, v in r.get("time_s", {}).items() if k != "eval_sim") or 1.0  # eval_sim is in eval
        shares = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in r.get("time_s", {}).items())
        lines.append(f"| {r['seed']} | {100 * ys[0]:.0f} % | {100 * value:.0f} % | {r['finished']} | "
                     f"{r.get('wall_s', 0):.0f} | {shares} |")
    if last2:
        ok = np.mean(last2) >= proto.goal_mean and min(last2) >= proto.goal_each
        lines.append(f"goal (mean >= {100 * proto.goal_mean:.0f} %, each >= {100 * proto.goal_each:.0f} %): "
                     f"{'met' if ok else 'NOT met'} over {len(last2)} finished seed(s), "
                     f"mean {100 * np.mean(last2):.1f} %")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[200, 201, 202])
    p.add_argument("--out", type=Path, default=Path("docs/camera-policy"), help="one JSON per seed here")
    p.add_argument("--report", action="store_true", help="print the table of the runs in --out")
    p.add_argument("--plot", type=Path, help="with --report: draw the curves to this PNG")
    for name in ("demos", "budget", "eval_every", "eval_episodes", "pretrain_steps", "pretrain_batch", "offline_steps",
                 "feature_views", "eval_envs", "image_size"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help="smoke runs only: override the protocol")
    p.add_argument("--encoder", choices=("resnet10", "resnet18", "convnet"),
                   help="smoke runs only: override the protocol")
    args = p.parse_args()
    if args.report:
        print(report(args.out, args.plot))
        return
    torch.set_num_threads(1)
    overrides = {k: getattr(args, k) for k in asdict(Protocol()) if getattr(args, k, None) is not None}
    proto = replace(Protocol(), **overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        path = args.out / f"seed{seed}.json"
        if path.exists() and json.loads(path.read_text()).get("finished"):
            print(f"seed {seed}: finished already, skipped", flush=True)
            continue
        run(seed, proto, args.out, log=lambda m: print(m, flush=True))
    print(report(args.out))


if __name__ == "__main__":
    main()
