"""Camera policies: the ResNet encoder, DrQ shift, frozen/pretrained encoders, safetensors, TD3, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port, hilrl_status, wait_until
from safetensors.torch import save_file

from hilrl.buffers.spec import Feature, Spec, state_vector
from hilrl.buffers.torch_batch import state_tensor, to_torch
from hilrl.learner.encoders import (
    ResNetTrunk,
    feature_map_shape,
    load_trunk_weights,
    make_trunk,
    random_shift,
    shift_images,
)
from hilrl.learner.networks import (
    Policy,
    PolicyConfig,
    make_critic,
    policy_config_for,
    policy_from_safetensors_bytes,
    policy_to_safetensors_bytes,
)
from hilrl.learner.td3 import TD3, TD3Config

S, A, B = 5, 4, 6
HW = 64  # smoke-size images keep CI fast; the benchmark and the sim use 128x128
CAMS = ("front", "wrist")
CPU = torch.device("cpu")
LOW, HIGH = np.array([-1, -1, -1, 0], np.float32), np.array([1, 1, 1, 2], np.float32)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cam_cfg(hw: int = HW, encoder: str = "resnet10") -> PolicyConfig:
    return PolicyConfig(S, A, (32, 32), CAMS, (hw, hw, 3), encoder, 16)


def images(n: int = B, hw: int = HW, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {c: torch.randint(0, 256, (n, hw, hw, 3), dtype=torch.uint8, generator=g) for c in CAMS}


def image_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"state": torch.randn(B, S, generator=g), "next_state": torch.randn(B, S, generator=g),
            "action": torch.as_tensor(LOW) + torch.rand(B, A, generator=g) * torch.as_tensor(HIGH - LOW),
            "reward": torch.rand(B, generator=g), "done": torch.zeros(B),
            "images": images(seed=seed), "next_images": images(seed=seed + 1)}


def make_td3(**cfg) -> TD3:
    """The trained-encoder (DrQ-v2, GPU) path unless a test freezes the encoder (the default CPU route)."""
    td3 = TD3(cam_cfg(), TD3Config(**{"freeze_encoder": False, **cfg}), CPU, seed=0)
    td3.set_normalization(np.zeros(S), np.ones(S), LOW, HIGH)
    return td3


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


# ---------------------------------------------------------------- shapes and configs


def test_shapes_of_encoder_actor_and_critic():
    cfg = cam_cfg()
    torch.manual_seed(0)
    policy = Policy(cfg)
    fmaps = policy.encode(images())
    assert fmaps.shape == (B, 2, *feature_map_shape((HW, HW))) == (B, 2, 512, 2, 2)
    assert feature_map_shape((128, 128)) == (512, 4, 4)
    for hw in (100, 128):  # the arithmetic agrees with the real trunk, also for sizes that do not divide by 32
        assert ResNetTrunk()(torch.zeros(1, 3, hw, hw)).shape[1:] == feature_map_shape((hw, hw))
    out = policy(torch.randn(B, S), images())
    assert out.shape == (B, A) and out.dtype == torch.float32
    q1, q2 = make_critic(cfg)(torch.randn(B, S), torch.randn(B, A), fmaps)
    assert q1.shape == q2.shape == (B,)
    with pytest.raises(ValueError, match="images"):
        policy(torch.randn(B, S))
    with pytest.raises(ValueError, match="wrist"):
        policy(torch.randn(B, S), {"front": images()["front"]})


def test_the_cpu_sized_convnet_trunk_fits_the_policy_and_its_weights_load(tmp_path: Path):
    for hw in (64, 100, 128):  # the shape arithmetic agrees with the real trunk
        assert make_trunk("convnet")(torch.zeros(1, 3, hw, hw)).shape[1:] == feature_map_shape((hw, hw), "convnet")
    assert feature_map_shape((64, 64), "convnet") == (64, 8, 8)
    cfg = cam_cfg(encoder="convnet")
    assert cfg.feature_map == (64, 8, 8)
    torch.manual_seed(0)
    policy = Policy(cfg)
    assert policy(torch.randn(B, S), images()).shape == (B, A)
    q1, _ = make_critic(cfg)(torch.randn(B, S), torch.randn(B, A), policy.encode(images()))
    assert q1.shape == (B,)
    saved = tmp_path / "convnet.safetensors"
    save_file(policy.encoder.trunk.state_dict(), str(saved))
    fresh = make_trunk("convnet")
    load_trunk_weights(fresh, saved)
    assert all(torch.equal(v, policy.encoder.trunk.state_dict()[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(ValueError, match="do not fit the resnet10 trunk: missing: bn1"):
        load_trunk_weights(ResNetTrunk("resnet10"), saved)  # a convnet file is not a ResNet's
    with pytest.raises(ValueError, match="unknown encoder 'vit'"):
        make_trunk("vit")
    with pytest.raises(ValueError, match="unknown encoder 'vit'"):
        cam_cfg(encoder="vit")


def test_policy_config_from_spec_and_json():
    spec = Spec((Feature("agent_pos", "float32", (S,)), Feature("front", "uint8", (HW, HW, 3)),
                 Feature("wrist", "uint8", (HW, HW, 3))), Feature("action", "float32", (A,), tuple(LOW), tuple(HIGH)))
    cfg = policy_config_for(spec, (32, 32), "resnet10", 16)
    assert cfg == cam_cfg()
    assert PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = {"state_dim": 21, "action_dim": 4, "hidden": [256, 256]}  # a state-only config from before cameras
    assert PolicyConfig.from_dict(old).cameras == () and Policy(PolicyConfig.from_dict(old)).encoder is None
    with pytest.raises(ValueError, match="image_shape"):
        PolicyConfig(S, A, cameras=("front",), image_shape=(HW, HW))
    with pytest.raises(ValueError, match="unknown encoder"):
        PolicyConfig(S, A, cameras=("front",), image_shape=(HW, HW, 3), encoder="resnet50")
    mixed = Spec((Feature("s", "float32", (S,)), Feature("front", "uint8", (HW, HW, 3)),
                  Feature("wrist", "uint8", (32, 32, 3))), spec.action)
    with pytest.raises(ValueError, match="same image shape"):
        policy_config_for(mixed, (32, 32))


# ---------------------------------------------------------------- DrQ random shift


def reference_shift(img: np.ndarray, dx: int, dy: int, pad: int) -> np.ndarray:
    """Replicate-pad by `pad`, crop the HxW window at offset (pad + dy, pad + dx): DrQ's definition."""
    h, w = img.shape[:2]
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[pad + dy: pad + dy + h, pad + dx: pad + dx + w]


def test_shift_is_a_pure_translation_with_replicate_padding():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    dx, dy = np.array([-4, 0, 4, 2, -1]), np.array([3, 0, -4, -2, 4])
    out = shift_images(torch.from_numpy(imgs), torch.from_numpy(dx), torch.from_numpy(dy)).numpy()
    for n in range(5):
        np.testing.assert_array_equal(out[n], reference_shift(imgs[n], dx[n], dy[n], 4))
    assert out.dtype == np.uint8


def test_random_shift_draws_translations_within_the_pad():
    pad = 4
    imgs = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = random_shift(imgs, pad, torch.Generator().manual_seed(2)).numpy()
    seen = set()
    for n in range(len(imgs)):
        matches = [(dx, dy) for dx in range(-pad, pad + 1) for dy in range(-pad, pad + 1)
                   if np.array_equal(out[n], reference_shift(imgs[n].numpy(), dx, dy, pad))]
        assert matches, f"image {n} is not a {pad}-pixel translation of its input"
        seen.update(matches)
    assert len(seen) > 10  # the shifts are random, per image
    assert torch.equal(random_shift(imgs, 0), imgs)


# ---------------------------------------------------------------- frozen, trainable, pretrained encoders


def test_frozen_encoder_gets_no_gradient_and_runs_once_per_batch():
    td3 = make_td3(freeze_encoder=True, policy_delay=1)
    calls = count_calls(td3.encoder)
    before = flat(td3.encoder).clone()
    for i in range(3):  # every update is a critic + actor + target step (policy_delay 1)
        m = td3.update(image_batch(i), bc_weight=1.0)
        assert calls[0] == i + 1 and "actor_loss" in m
    assert torch.equal(flat(td3.encoder), before)
    assert all(p.grad is None and not p.requires_grad for p in td3.encoder.parameters())
    assert td3.target_policy.encoder is None  # targets read the online (frozen) features


def test_trainable_encoder_is_trained_by_the_critic_only():
    td3, critic_only = make_td3(policy_delay=1), make_td3(policy_delay=1)  # same seed: same init and noise
    calls = count_calls(td3.encoder)
    before = flat(td3.encoder).clone()
    m = td3.update(image_batch(0), bc_weight=1.0)
    assert "actor_loss" in m
    assert calls[0] == 2  # s with autograd, s' without; the actor and the targets reuse them
    assert not torch.equal(flat(td3.encoder), before)
    critic_only.update(image_batch(0), bc_weight=1.0, update_actor=False)
    # had the actor loss back-propagated into the encoder, its gradients would differ from the critic-only run's
    for p, q in zip(td3.encoder.parameters(), critic_only.encoder.parameters(), strict=True):
        assert p.grad is not None and torch.equal(p.grad, q.grad)
    assert torch.equal(flat(td3.encoder), flat(critic_only.encoder))


def test_camera_training_state_survives_save_and_load(tmp_path: Path):
    td3 = make_td3()
    td3.update(image_batch(0), bc_weight=1.0)
    td3.save(tmp_path / "ckpt")
    restored = TD3(cam_cfg(), TD3Config(freeze_encoder=False), CPU, seed=5)
    restored.load(tmp_path / "ckpt")
    for i in (1, 2):  # the encoder's Adam moments (in the critic optimiser) and the shift RNG come back too
        assert td3.update(image_batch(i), bc_weight=1.0) == restored.update(image_batch(i), bc_weight=1.0)
    assert torch.equal(flat(td3.encoder), flat(restored.encoder))


def test_pretrained_weights_load_and_mismatches_are_named(tmp_path: Path):
    torch.manual_seed(7)
    donor = ResNetTrunk("resnet10")
    tensors = {k: v.clone() for k, v in donor.state_dict().items()}
    tensors["fc.weight"] = torch.zeros(10, 512)  # a torchvision classifier head is ignored
    tensors["bn1.num_batches_tracked"] = torch.tensor(5)
    good = tmp_path / "resnet10.safetensors"
    save_file(tensors, str(good))
    td3 = TD3(cam_cfg(), TD3Config(encoder_weights=str(good), freeze_encoder=True), CPU, seed=0)
    for k, v in donor.state_dict().items():
        assert torch.equal(td3.encoder.trunk.state_dict()[k], v), k

    r18 = tmp_path / "resnet18.safetensors"
    save_file(ResNetTrunk("resnet18").state_dict(), str(r18))
    with pytest.raises(ValueError, match=r"unexpected: layer1\.1\."):
        load_trunk_weights(ResNetTrunk("resnet10"), r18)
    with pytest.raises(ValueError, match=r"missing: layer1\.1\."):
        load_trunk_weights(ResNetTrunk("resnet18"), good)
    bad = dict(donor.state_dict())
    bad["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"shape mismatch: conv1\.weight"):
        load_trunk_weights(ResNetTrunk(), tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        TD3(cam_cfg(), TD3Config(encoder_weights=str(tmp_path / "nowhere.safetensors")), CPU)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_trunk_weights(ResNetTrunk(), tmp_path / "junk.safetensors")


# ---------------------------------------------------------------- what travels, and learning


def test_camera_policy_roundtrips_through_safetensors_bytes():
    td3 = make_td3()
    td3.update(image_batch(0), bc_weight=1.0)
    td3.update(image_batch(1), bc_weight=1.0)  # trained weights, not just the initialisation
    blob = policy_to_safetensors_bytes(td3.policy)
    restored = policy_from_safetensors_bytes(cam_cfg(), blob)
    keys = set(restored.state_dict())
    assert any(k.startswith("encoder.trunk.") for k in keys) and any(k.startswith("actor.heads.") for k in keys)
    assert {"obs_mean", "obs_std", "action_low", "action_high"} <= keys
    assert not any("q1_net" in k or "critic" in k for k in keys)  # critics never travel
    state, imgs = torch.randn(B, S), images(seed=9)
    with torch.no_grad():
        assert torch.equal(restored(state, imgs), td3.policy(state, imgs))
    with pytest.raises(RuntimeError):  # another architecture refuses the blob
        policy_from_safetensors_bytes(cam_cfg(encoder="resnet18"), blob)


def test_td3_update_on_images_decreases_the_critic_loss_on_a_fixed_batch():
    td3 = make_td3(image_pad=4)
    batch = image_batch(3)
    losses = [td3.update(batch, bc_weight=1.0)["critic_loss"] for _ in range(16)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses


def test_trainer_batches_reach_the_device_as_stored(tmp_path: Path):
    """The Trainer's sampling path with a trained encoder (no feature cache): uint8 images stay uint8, the state
    vector is assembled by torch."""
    from hilrl.buffers.replay import Transition
    from hilrl.learner.config import LearnerConfig
    from hilrl.learner.core import LearnerCore
    from hilrl.learner.training import Trainer

    spec = Spec((Feature("agent_pos", "float32", (3,)), Feature("block", "float32", (2,)),
                 Feature("front", "uint8", (HW, HW, 3)), Feature("wrist", "uint8", (HW, HW, 3))),
                Feature("action", "float32", (A,), tuple(LOW), tuple(HIGH)))
    core = LearnerCore(LearnerConfig(output_dir=tmp_path / "out", hidden=(16, 16), batch_size=8, device="cpu",
                                     human_capacity=64, policy_capacity=64, algo=TD3Config(freeze_encoder=False)))
    core.open()
    core.hello("a", spec)
    rng = np.random.default_rng(0)

    def obs() -> dict:
        return {"agent_pos": rng.normal(size=3).astype(np.float32), "block": rng.normal(size=2).astype(np.float32),
                **{c: rng.integers(0, 256, (HW, HW, 3), dtype=np.uint8) for c in CAMS}}

    for i in range(20):
        core.buffers.add(Transition(obs(), LOW.copy(), 0.0, obs(), False, False, i, is_intervention=i % 2 == 0))
    trainer = Trainer(core)
    trainer._build()
    assert trainer.td3.policy_cfg.cameras == CAMS
    batch = trainer._sample(human_only=False)
    assert batch["images"]["front"].dtype == torch.uint8 and batch["images"]["front"].shape == (8, HW, HW, 3)
    assert float(batch["human"].sum()) == 4.0
    raw = core.buffers.human.gather(np.arange(5))
    np.testing.assert_array_equal(state_tensor(to_torch(raw, CPU)["obs"], spec).numpy(),
                                  state_vector(raw["obs"], spec))
    trainer._update(bc_weight=1.0, human_only=False)
    assert core.learner_step == 1


# ---------------------------------------------------------------- end to end over gRPC


@pytest.mark.e2e
def test_camera_learner_and_sim_actor_over_grpc(spawn, tmp_path: Path):
    """A real learner and a real sim actor with --sim-cameras: demos, offline updates, weights, online updates;
    the CPU route (frozen encoder, cached features) and no privileged state in the stream."""
    port, out = free_port(), tmp_path / "learner"
    learner = spawn("learner", "--port", str(port), "--output-dir", str(out), "--demo-episodes", "1",
                    "--offline-steps", "2", "--publish-every", "2", "--batch-size", "4", "--hidden", "16,16",
                    "--human-capacity", "400", "--policy-capacity", "400", "--torch-threads", "1",
                    "--algo.image-pad", "4", "--encoder-pretrain-steps", "2", name="learner")  # camera defaults
    actor = spawn("actor", "--learner", f"127.0.0.1:{port}", "--env", "sim", "--sim-cameras", "--fps", "0",
                  "--state-dir", str(tmp_path / "actor"), "--seed", "0", "--takeover-after", "3",
                  "--max-episodes", "6", name="actor")  # demos go on while the learner pretrains its encoder
    address = f"127.0.0.1:{port}"

    def online_with_updates() -> dict | None:
        s = hilrl_status(address)
        ok = s and s["stage"] == "online" and s["learner_step"] >= 4 and s["weight_version"] >= 2
        return s if ok else None

    wait_until(online_with_updates, 150, "camera learner online with weights v>=2",
               diagnose=lambda: f"learner:\n{learner.stderr[-2000:]}\nactor:\n{actor.stderr[-2000:]}")
    assert actor.wait(120) == 0, actor.stderr[-2000:]
    summary = json.loads(actor.stdout.strip().splitlines()[-1])
    assert summary["weight_version"] >= 1 and summary["episodes"] == 6  # the actor ran the camera policy
    assert (out / "encoder.safetensors").is_file()  # the learner pretrained its frozen encoder on the demos
    spec = json.loads((out / "spec.json").read_text())
    assert {"name": "front", "dtype": "uint8", "shape": [128, 128, 3]} in spec["observation"]
    assert "environment_state" not in {f["name"] for f in spec["observation"]}  # never sent with cameras
    assert learner.stop() == 0
    from safetensors import safe_open

    with safe_open(str(out / "policy.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["policy_config"])["cameras"] == ["front", "wrist"]
        names = list(f.keys())
    assert any(k.startswith("encoder.trunk.") for k in names)
