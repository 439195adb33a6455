"""A LeRobot ACT policy as the residual base (``--residual-base lerobot:PATH``): run as LeRobot runs it,
a takeover drops its chunk, the residual starts at exactly its action, and bad policy directories are refused.

The policy is tests/data/lerobot_act_tiny: what ``lerobot-train`` wrote after 5 steps on 4 exported scripted
demonstrations (benchmarks/lerobot_act.py --tiny regenerates it). Its skill does not matter here.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Link, free_port, run_hilrl, train_online

from hilrl.actor.config import ActorConfig
from hilrl.actor.human import HumanEvents
from hilrl.actor.lerobot_base import LeRobotBase
from hilrl.actor.loop import ActorLoop
from hilrl.actor.outbox import Outbox, StateDir
from hilrl.actor.residual_base import ResidualBaseEnv, make_base
from hilrl.buffers.assembler import Step
from hilrl.buffers.spec import Feature, Spec, state_vector
from hilrl.hardware.sim import SimPickCube
from hilrl.learner.networks import policy_config_for
from hilrl.learner.residual import BASE_ACTION
from hilrl.learner.td3 import TD3, TD3Config
from hilrl.protos import codec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = Path(__file__).parent / "data" / "lerobot_act_tiny"


def _sim_spec() -> Spec:
    sim = SimPickCube(seed=0)
    try:
        return sim.spec
    finally:
        sim.close()


class Twin:
    """The same directory run by LeRobot's own functions, exactly as ``lerobot-record`` runs a policy."""

    def __init__(self, path: Path) -> None:
        from lerobot.policies.act.modeling_act import ACTPolicy
        from lerobot.policies.factory import make_pre_post_processors

        self.policy = ACTPolicy.from_pretrained(path)
        self.pre, self.post = make_pre_post_processors(self.policy.config, pretrained_path=str(path))

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        from lerobot.utils.control_utils import predict_action

        frame = {"observation.state": obs["agent_pos"], "observation.environment_state": obs["environment_state"]}
        action = predict_action(frame, self.policy, torch.device("cpu"), self.pre, self.post, use_amp=False)
        return action.reshape(-1).numpy()


class TakeoverAt:
    """The human holds the takeover button at the given ticks of a policy episode."""

    def __init__(self, ticks: tuple[int, ...]) -> None:
        self.ticks, self.t = ticks, 0

    def reset(self, demonstrating: bool = False) -> None:
        self.t = 0

    def poll(self, obs) -> HumanEvents:
        events = HumanEvents(takeover=self.t in self.ticks)
        self.t += 1
        return events

    def action(self, obs) -> np.ndarray:
        return np.array([0.0, 0.0, 0.0, 1.0], np.float32)

    def close(self) -> None:
        pass


def _untrained_residual(spec: Spec, scale: float = 0.1):
    td3 = TD3(policy_config_for(spec, (32, 32), residual_scale=scale), TD3Config(), torch.device("cpu"), seed=0)
    td3.set_normalization(np.zeros(spec.state_dim), np.ones(spec.state_dim), spec.action.low, spec.action.high)
    return td3.policy


def test_the_base_is_lerobots_own_pipeline_and_a_takeover_drops_the_rest_of_its_chunk(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    sim = SimPickCube(seed=3)
    base = LeRobotBase(TINY, sim.spec)
    assert [f.name for f in base.inputs.values()] == ["agent_pos", "environment_state"] and base.n_action_steps == 5
    env = ResidualBaseEnv(sim, base, base.reset)
    state = StateDir(tmp_path / "state", "t")
    outbox = Outbox(tmp_path / "state" / "outbox")
    cfg = ActorConfig(fps=0, max_episodes=1, exploration_noise=0.0, seed=0)
    loop = ActorLoop(cfg, env, TakeoverAt((2, 3)), Link(_untrained_residual(env.spec)), outbox, state,
                     threading.Event())
    loop.run()
    steps = [i for b in outbox.pending_after(0, timeout=0) for i in codec.decode_items(b, env.spec)
             if isinstance(i, Step)]
    state.close()
    env.close()
    assert [s.is_intervention for s in steps[:6]] == [False, False, True, True, False, False]

    # LeRobot's own pipeline over the same observations: a fresh plan at the episode start and after each
    # step that was not the policy's (the takeover ticks 2 and 3 -> observations 3 and 4), else its queue
    twin = Twin(TINY)
    observations = [s.obs for s in steps]
    for t, obs in enumerate(observations):
        if t in (0, 3, 4):
            twin.policy.reset()
        np.testing.assert_allclose(obs[BASE_ACTION], np.clip(twin(obs), env.low, env.high), rtol=0, atol=1e-6,
                                   err_msg=f"observation {t}")
    # without the drop, observations 3 and 4 would still come from the chunk planned at observation 0
    stale = Twin(TINY)
    stale_actions = [stale(o) for o in observations[:5]]
    assert np.abs(stale_actions[3] - observations[3][BASE_ACTION]).max() > 1e-4
    # the untrained residual executes exactly the base on the policy's own steps
    for s in steps:
        if not s.is_intervention:
            np.testing.assert_allclose(s.action, s.obs[BASE_ACTION], rtol=0, atol=1e-6)


def _variant(tmp_path: Path, **changes: object) -> Path:
    out = tmp_path / "policy"
    shutil.copytree(TINY, out)
    config = json.loads((out / "config.json").read_text())
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))
    return out


UNAVAILABLE = "cuda" if not torch.cuda.is_available() else "mps"


@pytest.mark.parametrize("case, expect", [
    ("empty", "not a LeRobot policy directory: config.json, model.safetensors, policy_preprocessor.json"),
    ("parent", "did you mean"),
    ("file", "is not a directory"),
    ("state_shape", "input 'observation.state' needs float32[12], hilrl observation 'agent_pos' is "
                    "agent_pos: float32[18]"),
    ("camera", "input 'observation.images.top' (uint8[96, 96, 3]) has no hilrl observation 'top'"),
    ("map", "--residual-base-map names 'observation.nope', which is not an input of the policy"),
    ("action", "the policy's action has shape [6], the actor's is [4]"),
    ("units", "the policy's actions are not in this actor's units (entry 0: trained on [-100, 56.11], the actor "
              "allows [-1, 1]; entry 1: trained on [-100, 100]"),
    ("type", "policy type 'pi0' cannot be a residual base"),
    ("device", f"the policy is to run on '{UNAVAILABLE}' (its config.json), which this machine does not have"),
])
def test_bad_policy_directories_are_refused_with_what_to_change(tmp_path: Path, case: str, expect: str) -> None:
    spec, mapping = _sim_spec(), ()
    feats = json.loads((TINY / "config.json").read_text())["input_features"]
    if case == "empty":
        path = tmp_path
    elif case == "parent":
        shutil.copytree(TINY, tmp_path / "run" / "checkpoints" / "last" / "pretrained_model")
        path = tmp_path / "run"
    elif case == "file":
        path = TINY / "config.json"
    elif case == "state_shape":
        path = _variant(tmp_path, input_features={**feats, "observation.state": {"type": "STATE", "shape": [12]}})
    elif case == "camera":
        path = _variant(tmp_path, input_features={**feats, "observation.images.top": {"type": "VISUAL",
                                                                                      "shape": [3, 96, 96]}})
    elif case == "map":
        path, mapping = TINY, ("observation.nope=agent_pos",)
    elif case == "action":
        path = _variant(tmp_path, output_features={"action": {"type": "ACTION", "shape": [6]}})
    elif case == "units":  # trained on actions 100x larger (e.g. -100..100 motor units instead of [-1, 1])
        from safetensors.numpy import load_file, save_file

        path = _variant(tmp_path)
        stats = path / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"
        tensors = load_file(stats)
        save_file({k: v * 100 if k in ("action.min", "action.max") else v for k, v in tensors.items()}, stats)
    elif case == "type":
        path = _variant(tmp_path, type="pi0")
    else:
        path = _variant(tmp_path, device=UNAVAILABLE)
    with pytest.raises(SystemExit) as err:
        make_base(f"lerobot:{path}", spec, base_map=mapping)
    assert expect in str(err.value)
    if case == "camera":  # one error names every problem and what the actor has
        assert "The actor observes: agent_pos: float32[18], environment_state: float32[3]" in str(err.value)
    if case == "device":  # ... and the way out works
        base, _ = make_base(f"lerobot:{path}", spec, device="cpu")
        assert base.device == "cpu"


def _save(policy, stats: dict, out: Path) -> Path:
    """``policy`` and its processors (with ``stats``) saved the way lerobot-train saves them."""
    from lerobot.policies.factory import make_pre_post_processors

    pre, post = make_pre_post_processors(policy.config, dataset_stats=stats)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


def test_a_diffusion_policy_runs_with_its_observation_and_action_queues(tmp_path: Path) -> None:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.utils.control_utils import predict_action

    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (18,)),
              "observation.environment_state": PolicyFeature(FeatureType.ENV, (3,))}
    cfg = DiffusionConfig(input_features=inputs, output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
                          device="cpu", horizon=8, n_action_steps=4, n_obs_steps=2, down_dims=(32, 64),
                          num_inference_steps=5, diffusion_step_embed_dim=32)
    stats = {k: {"min": -torch.ones(n), "max": torch.ones(n)} for k, n in
             (("observation.state", 18), ("observation.environment_state", 3))}
    stats["action"] = {"min": torch.tensor([-1.0, -1.0, -1.0, 0.0]), "max": torch.tensor([1.0, 1.0, 1.0, 2.0])}
    out = _save(DiffusionPolicy(cfg), stats, tmp_path / "diffusion")
    base = LeRobotBase(out, _sim_spec())
    assert base.type == "diffusion" and base.n_action_steps == 4
    twin = DiffusionPolicy.from_pretrained(out)
    tpre, tpost = make_pre_post_processors(twin.config, pretrained_path=str(out))
    rng = np.random.default_rng(0)
    for t in range(6):  # a new sample (noise) every 4 steps; the same seed for both
        obs = {"agent_pos": rng.normal(size=18).astype(np.float32),
               "environment_state": rng.normal(size=3).astype(np.float32)}
        torch.manual_seed(t)
        got = base(obs)
        torch.manual_seed(t)
        want = predict_action({"observation.state": obs["agent_pos"],
                               "observation.environment_state": obs["environment_state"]},
                              twin, torch.device("cpu"), tpre, tpost, use_amp=False).reshape(-1).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"step {t}")


def test_a_camera_policy_reads_hilrl_images_and_never_downloads_its_backbone(tmp_path: Path, monkeypatch) -> None:
    """A tiny image ACT built with LeRobot's classes; its config names torchvision's ImageNet weights, which
    the loader must not fetch (an empty TORCH_HOME and no network: a download attempt fails the test)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.utils.control_utils import predict_action

    torch.manual_seed(0)
    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (18,)),
              "observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, 128, 128))}
    cfg = ACTConfig(input_features=inputs, output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
                    device="cpu", dim_model=32, dim_feedforward=64, n_heads=2, n_encoder_layers=1,
                    n_decoder_layers=1, chunk_size=3, n_action_steps=3, use_vae=False,
                    pretrained_backbone_weights=None)
    stats = {"observation.state": {"mean": torch.zeros(18), "std": torch.ones(18)},
             "observation.images.front": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.2)},
             "action": {"mean": torch.zeros(4), "std": torch.ones(4)}}
    out = _save(ACTPolicy(cfg), stats, tmp_path / "camera_act")
    config = json.loads((out / "config.json").read_text())
    config["pretrained_backbone_weights"] = "ResNet18_Weights.IMAGENET1K_V1"  # what a trained ACT carries
    (out / "config.json").write_text(json.dumps(config))

    spec = Spec((Feature("agent_pos", "float32", (18,)), Feature("front", "uint8", (128, 128, 3)),
                 Feature("wrist", "uint8", (128, 128, 3))), _sim_spec().action)
    base = LeRobotBase(out, spec)
    assert {k: f.name for k, f in base.inputs.items()} == {"observation.state": "agent_pos",
                                                           "observation.images.front": "front"}
    twin = ACTPolicy.from_pretrained(out, config=base.policy.config)
    tpre, tpost = make_pre_post_processors(twin.config, pretrained_path=str(out))
    rng = np.random.default_rng(0)
    for _ in range(4):
        obs = {"agent_pos": rng.normal(size=18).astype(np.float32),
               "front": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
               "wrist": np.zeros((128, 128, 3), np.uint8)}
        want = predict_action({"observation.state": obs["agent_pos"], "observation.images.front": obs["front"]},
                              twin, torch.device("cpu"), tpre, tpost, use_amp=False).reshape(-1).numpy()
        np.testing.assert_allclose(base(obs), want, rtol=0, atol=1e-6)


def test_the_actor_exits_non_zero_with_the_reason_on_a_bad_policy_directory(tmp_path: Path) -> None:
    """(The in-process test above covers each refusal; this one the process: exit code, stderr, no hang.)"""
    r = run_hilrl("actor", "--learner", f"127.0.0.1:{free_port()}", "--env", "sim", "--state-dir",
                  str(tmp_path / "actor"), "--residual-base", f"lerobot:{tmp_path / 'nothing'}", "--max-episodes", "1")
    assert r.returncode != 0 and "is not a directory: give the pretrained_model directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = run_hilrl("actor", "--env", "sim", "--residual-base-map", "observation.state=agent_pos")
    assert r.returncode == 2 and "are for --residual-base lerobot:PATH" in r.stderr


# ------------------------------------------------------------------ a real learner and actor over gRPC


@pytest.mark.e2e
def test_learner_and_actor_train_a_residual_on_a_lerobot_act(spawn, tmp_path: Path) -> None:
    """v1 (no update yet) is exactly the ACT's action on every recorded observation; later weights move it,
    never by more than the bound; ``hilrl eval`` runs the result over the same base."""
    from hilrl.buffers.recording import read_steps
    from hilrl.learner.networks import load_policy_file

    port, out, scale = free_port(), tmp_path / "learner", 0.2
    learner = spawn("learner", "--port", str(port), "--output-dir", str(out), "--residual", "--residual-scale",
                    str(scale), "--demo-episodes", "1", "--offline-steps", "0", "--publish-every", "10",
                    "--keep-weight-versions", "1000", "--batch-size", "32", "--torch-threads", "1", "--hidden",
                    "32,32", name="learner")
    actor = spawn("actor", "--learner", f"127.0.0.1:{port}", "--env", "sim", "--fps", "0", "--state-dir",
                  str(tmp_path / "actor"), "--seed", "0", "--residual-base", f"lerobot:{TINY}",
                  "--exploration-noise", "0", "--record", str(tmp_path / "steps.zarr"), name="actor")
    train_online(learner, actor, f"127.0.0.1:{port}", "online on a LeRobot ACT base with weights v>=2 applied")
    assert "Traceback" not in actor.stderr and "Traceback" not in learner.stderr

    spec, stream = read_steps(tmp_path / "steps.zarr")
    steps = list(stream)
    states = torch.from_numpy(np.stack([state_vector(s.obs, spec) for s in steps]))
    bases = torch.from_numpy(np.stack([s.obs[BASE_ACTION] for s in steps]))
    versions = sorted((out / "weights").glob("v*.safetensors"))
    assert len(versions) >= 2
    half = torch.from_numpy((np.asarray(spec.action.high) - np.asarray(spec.action.low)) / 2)
    with torch.no_grad():
        first = load_policy_file(versions[0])(states)
        last = load_policy_file(versions[-1])(states)
    torch.testing.assert_close(first, bases, rtol=0, atol=1e-6)  # the residual starts at exactly the base
    moved = (last - bases).abs()
    assert moved.max() > 1e-4, "the published updates never changed the action"
    assert (moved <= scale * half + 1e-5).all(), f"correction beyond the bound: {moved.max(0).values}"

    r = run_hilrl("eval", "--checkpoint", str(out), "--episodes", "1", "--residual-base", f"lerobot:{TINY}",
                  timeout=180)  # a guard against a hang; the process imports torch, MuJoCo and lerobot
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["episodes"] == 1
