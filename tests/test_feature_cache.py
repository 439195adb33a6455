"""The frozen-encoder feature cache (learner/features.py): equal to a fresh encoder pass, reused, refreshed."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from hilrl.buffers.replay import DualBuffer, Transition
from hilrl.buffers.spec import Feature, Spec
from hilrl.learner.encoder_pretrain import pretrain_encoder
from hilrl.learner.encoders import shift_images
from hilrl.learner.features import FeatureCache, cached_batch, dual_indices, feature_cache
from hilrl.learner.networks import policy_config_for
from hilrl.learner.td3 import TD3, TD3Config

HW, S, A = 32, 3, 2
CAMS = ("front", "wrist")
SPEC = Spec((Feature("agent_pos", "float32", (S,)), *(Feature(c, "uint8", (HW, HW, 3)) for c in CAMS)),
            Feature("action", "float32", (A,), (-1.0,) * A, (1.0,) * A))
CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def obs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"agent_pos": rng.normal(size=S).astype(np.float32),
            **{c: rng.integers(0, 256, (HW, HW, 3), dtype=np.uint8) for c in CAMS}}


def filled(capacity: int = 64, steps: int = 40, seed: int = 0) -> DualBuffer:
    rng = np.random.default_rng(seed)
    buffers = DualBuffer(SPEC, capacity, capacity)
    for episode in range(2):
        o = obs(rng)
        for t in range(steps // 2):
            nxt = obs(rng)
            buffers.add(Transition(o, rng.uniform(-1, 1, A).astype(np.float32), float(t == steps // 2 - 1), nxt,
                                   t == steps // 2 - 1, False, episode, episode == 0))
            o = nxt
    return buffers


def td3(views: int = 2, pad: int = 2, encoder: str = "resnet10") -> TD3:
    cfg = policy_config_for(SPEC, (16, 16), encoder, image_feature_dim=8)
    agent = TD3(cfg, TD3Config(freeze_encoder=True, feature_views=views, image_pad=pad), CPU, seed=0)
    agent.set_normalization(np.zeros(S), np.ones(S), -np.ones(A), np.ones(A))
    return agent


@pytest.mark.parametrize("encoder", ["resnet10", "convnet"])
def test_cached_view_zero_equals_a_fresh_encoder_pass_and_shifted_views_equal_shifted_passes(encoder: str):
    agent, buffers = td3(views=3, pad=2, encoder=encoder), filled()
    cache = feature_cache(agent)
    assert cache is not None
    frames = np.arange(5)
    cache.generator = torch.Generator().manual_seed(7)
    cache.fill(buffers.human.frames, frames, buffers.human.frames.get(frames, CAMS))
    images = {c: torch.as_tensor(buffers.human.frames.get(frames, CAMS)[c]) for c in CAMS}
    ring = cache.ring(buffers.human.frames)
    with torch.no_grad():
        fresh = agent.policy.encode(images)
        g = torch.Generator().manual_seed(7)
        for view in (1, 2):  # replay the generator: each camera shifted in turn, as fill does
            shifted = {}
            for c in CAMS:
                d = torch.randint(-2, 3, (2, len(frames)), generator=g)
                shifted[c] = shift_images(images[c], d[0], d[1])
            assert torch.allclose(ring.data[frames, view].float(), agent.policy.encode(shifted), atol=2e-2, rtol=1e-2)
    assert torch.allclose(ring.data[frames, 0].float(), fresh, atol=2e-2, rtol=1e-2)  # float16 storage
    assert not torch.equal(ring.data[frames, 1], ring.data[frames, 0])


def test_each_frame_is_encoded_once_across_updates_and_the_update_runs():
    agent, buffers = td3(views=2), filled()
    cache = feature_cache(agent)
    calls = [0]
    agent.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    rng, lock = np.random.default_rng(0), threading.Lock()
    before = [p.detach().clone() for p in agent.critic.parameters()]
    for _ in range(3):
        batch = cached_batch(cache, lambda: dual_indices(buffers, 32, 0.5, rng), SPEC, lock, rng)
        assert batch["fmaps"].dtype == torch.float32 and batch["fmaps"].shape[:2] == (32, 2)
        assert batch["state"].shape == (32, S) and batch["human"].sum() == 16
        agent.update(batch, bc_weight=1.0)
    assert 0 < cache.encoded <= buffers.human.frames.written + buffers.policy.frames.written

    def everything():
        return [(b, b.sampleable(), f) for b, f in ((buffers.human, 1.0), (buffers.policy, 0.0))]

    cached_batch(cache, everything, SPEC, lock, rng)  # caches the frames not drawn yet
    encoded, n = cache.encoded, calls[0]
    for _ in range(3):
        cached_batch(cache, everything, SPEC, lock, rng)
    assert (cache.encoded, calls[0]) == (encoded, n)  # every frame once, reused by every later batch
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.critic.parameters(), strict=True))


def test_an_offered_acting_pass_is_view_zero_and_only_the_shifted_views_are_encoded():
    agent, buffers = td3(views=2, pad=2), filled()
    cache, frames = feature_cache(agent), buffers.human.frames
    assert cache is not None
    images = {c: torch.as_tensor(v) for c, v in frames.get(np.arange(6), CAMS).items()}
    with torch.no_grad():
        fresh = agent.policy.encode(images)
    for f in (1, 4):  # what an actor's encoder pass gave when it acted on frames 1 and 4 (batch of one)
        with torch.no_grad():
            cache.offer(frames, f, agent.policy.encode({c: v[f:f + 1] for c, v in images.items()}))
    seen: list[int] = []
    agent.encoder.register_forward_hook(lambda m, i, o: seen.append(len(o)))
    cache.fill(frames, np.arange(6), frames.get(np.arange(6), CAMS))
    assert seen == [4, 6]  # view 0 of the four frames not offered, then view 1 of all six
    ring = cache.ring(frames)
    assert torch.allclose(ring.data[:6, 0].float(), fresh, atol=2e-2, rtol=1e-2)
    assert len(ring.missing(np.arange(6))) == 0
    seen.clear()
    cache.offer(frames, 2, torch.zeros_like(fresh[:1]))  # already cached: kept as it was
    assert torch.allclose(ring.data[2, 0].float(), fresh[2], atol=2e-2, rtol=1e-2) and not seen


def test_batched_evaluation_plays_evaluate_s_episodes():
    from hilrl.actor.evaluate import evaluate, evaluate_batched
    from hilrl.hardware.sim import SimPickCube
    from hilrl.learner.networks import Policy

    envs = [SimPickCube(seed=0, max_steps=20) for _ in range(3)]
    torch.manual_seed(0)
    policy = Policy(policy_config_for(envs[0].spec, (16,)))
    policy.set_normalization(np.zeros(21), np.full(21, 0.1), envs[0].spec.action.low, envs[0].spec.action.high)
    try:
        one = evaluate(policy, envs[0], 4, seed=5, progress=False)
        assert evaluate_batched(policy, envs, 4, seed=5) == one
        assert evaluate_batched(policy, envs[:1], 4, seed=5) == one
    finally:
        for env in envs:
            env.close()


def test_an_overwritten_frame_is_encoded_again():
    agent, buffers = td3(views=1), filled(capacity=8, steps=8)
    cache, rng = feature_cache(agent), np.random.default_rng(0)
    frames = buffers.human.frames
    live = np.arange(frames.oldest, frames.written)
    cache.fill(frames, *cache.missing_images(frames, live, CAMS))
    assert len(cache.ring(frames).missing(live)) == 0
    gen = np.random.default_rng(1)
    for _ in range(frames.capacity):  # a new episode overwrites every slot
        buffers.add(Transition(obs(gen), np.zeros(A, np.float32), 0.0, obs(gen), False, False, 5, True))
    live = np.arange(frames.oldest, frames.written)
    missing = cache.ring(frames).missing(live)
    assert len(missing) == len(live)
    cache.fill(frames, *cache.missing_images(frames, live, CAMS))
    images = {c: torch.as_tensor(v) for c, v in frames.get(live, CAMS).items()}
    with torch.no_grad():
        fresh = agent.policy.encode(images)
    assert torch.allclose(cache.features(frames, live, rng), fresh, atol=2e-2, rtol=1e-2)


def test_the_cache_serves_a_frozen_encoder_with_one_step_td3_only():
    with pytest.raises(ValueError, match="feature-views must be >= 0"):
        TD3Config(feature_views=-1)
    assert feature_cache(td3()) is not None  # the defaults: frozen encoder, 2 views
    trained_cfg = policy_config_for(SPEC, (16, 16), "resnet10", image_feature_dim=8)
    trained = TD3(trained_cfg, TD3Config(freeze_encoder=False), CPU, seed=0)  # DrQ-v2 (GPU): features change
    assert feature_cache(trained) is None
    assert feature_cache(td3(), chunk=3) is None  # action chunks: every batch is encoded (with a warning)
    with pytest.raises(ValueError, match="at least 1"):
        FeatureCache(lambda x: x, 0, 4, CPU)  # type: ignore[arg-type, return-value]
    state_cfg = policy_config_for(Spec((Feature("agent_pos", "float32", (S,)),), SPEC.action), (16,))
    assert feature_cache(TD3(state_cfg, TD3Config(freeze_encoder=True, feature_views=2), CPU, seed=0)) is None


def test_encoder_pretrained_on_demos_loads_into_a_frozen_learner(tmp_path):
    buffers, path = filled(), tmp_path / "encoder.safetensors"
    result = pretrain_encoder(SPEC, buffers.human, path, steps=4, batch_size=8, pad=2)
    assert np.isfinite(result["last_loss"]) and path.is_file()
    cfg = policy_config_for(SPEC, (16, 16), "resnet10", image_feature_dim=8)
    agent = TD3(cfg, TD3Config(freeze_encoder=True, feature_views=1, encoder_weights=str(path)), CPU, seed=0)
    fresh = TD3(cfg, TD3Config(freeze_encoder=True, feature_views=1), CPU, seed=0)
    trained = agent.encoder.trunk.conv1.weight
    assert not torch.equal(trained, fresh.encoder.trunk.conv1.weight)
    assert not trained.requires_grad
    with pytest.raises(ValueError, match="camera images"):
        pretrain_encoder(Spec((Feature("agent_pos", "float32", (S,)),), SPEC.action), buffers.human, path)


def test_hilrl_encoder_pretrains_from_a_camera_recording(tmp_path, capsys):
    from hilrl.buffers.assembler import Step
    from hilrl.buffers.recording import StepRecorder
    from hilrl.deploy.cli import main
    from hilrl.learner.encoders import ResNetTrunk, load_trunk_weights

    rng = np.random.default_rng(0)
    with StepRecorder(tmp_path / "demos.zarr", SPEC) as rec:
        for t in range(6):
            rec.add(Step(obs(rng), rng.uniform(-1, 1, A).astype(np.float32), float(t == 5), t == 5, False, True, 0, t,
                         obs(rng) if t == 5 else None))
    out = tmp_path / "enc.safetensors"
    assert main(["encoder", "--demos", str(tmp_path / "demos.zarr"), "--output", str(out), "--steps", "2",
                 "--batch-size", "4", "--torch-threads", "1", "--encoder", "resnet10"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["transitions"] == 6
    load_trunk_weights(ResNetTrunk("resnet10"), out)  # the learner's --algo.encoder-weights accepts it


def test_chunking_with_the_camera_defaults_starts_and_sizes_no_cache():
    from hilrl.learner.config import LearnerConfig
    from hilrl.learner.features import cached_feature_bytes

    assert cached_feature_bytes(SPEC, LearnerConfig()) == 2 * 2 * 64 * 4 * 4 * 2  # 2 views, 2 cameras, float16
    assert cached_feature_bytes(SPEC, LearnerConfig(chunk=3)) == 0  # no cache with chunks: nothing to size
    assert cached_feature_bytes(SPEC, LearnerConfig(algo=TD3Config(freeze_encoder=False))) == 0


def test_the_learner_pretrains_a_frozen_encoder_on_the_demos_unless_given_weights(tmp_path):
    import threading

    from hilrl.learner.config import LearnerConfig
    from hilrl.learner.encoder_pretrain import pretrain_learner_encoder

    buffers, lock = filled(), threading.Lock()
    cfg = LearnerConfig(encoder="resnet10", encoder_pretrain_steps=3)
    agent = td3()
    before = agent.encoder.trunk.conv1.weight.clone()
    stop = threading.Event()
    stop.set()  # stopped before it finished: nothing loaded, and the learner does not go offline
    assert not pretrain_learner_encoder(agent, cfg, SPEC, buffers.human, tmp_path / "a.safetensors", CPU, lock, stop)
    assert torch.equal(agent.encoder.trunk.conv1.weight, before) and not (tmp_path / "a.safetensors").exists()
    assert pretrain_learner_encoder(agent, cfg, SPEC, buffers.human, tmp_path / "e.safetensors", CPU, lock)
    assert (tmp_path / "e.safetensors").is_file()
    assert not torch.equal(agent.encoder.trunk.conv1.weight, before)  # behaviour-cloned, then loaded
    assert not agent.encoder.trunk.conv1.weight.requires_grad  # and still frozen
    given = LearnerConfig(encoder="resnet10", algo=TD3Config(encoder_weights=str(tmp_path / "e.safetensors")))
    other = td3()
    assert pretrain_learner_encoder(other, given, SPEC, buffers.human, tmp_path / "x.safetensors", CPU, lock)
    assert not (tmp_path / "x.safetensors").exists()  # --algo.encoder-weights: the user's file, no pretraining
