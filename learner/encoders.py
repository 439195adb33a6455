"""Image encoders for camera policies: a small ResNet trunk, per-camera projections, DrQ random shift.

Design (DrQ / DrQ-v2, Yarats et al. 2021; HIL-SERL's ResNet-10):

* One trunk is **shared by all cameras**: ``resnet10`` (one BasicBlock per stage, HIL-SERL's) or
  ``resnet18`` (two), with ImageNet-compatible key names; or ``convnet``, a four-layer stride-2 ConvNet
  (41 M multiply-adds per 128x128 image against ResNet-10's 290 M; 10 M at 64x64) for CPU learners. Every
  camera's images go through the same convolutions in a single batched call
  (``[B*K, 3, H, W]``). Half the weights of a trunk per camera, one large convolution call instead of
  K small ones (better on a GPU), and ImageNet-style pretrained filters are camera-agnostic anyway.
  What is camera-specific is learned by the per-camera `Projection` heads (1x1 conv bottleneck,
  flatten, Linear, LayerNorm, tanh), which keep the spatial layout of each view.
* Normalisation layers are `FrozenBatchNorm2d` (batch-norm with fixed statistics, as used when
  fine-tuning detection backbones with small batches): a batch-norm layer's running statistics change
  with every minibatch and differ between the online and the target networks, which RL does not
  tolerate well. The key names equal torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``, ...),
  so ImageNet weights converted to safetensors load as they are (`load_trunk_weights`).
* Images stay uint8 until they are on the training device: `images_to_float` converts there
  (``/255``, then the fixed ImageNet mean/std the pretrained filters expect).
* `random_shift` is DrQ's augmentation (pad 4, replicate padding, random crop back to the original
  size): an integer translation per image, done as clamped index arithmetic on the device.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

RESNETS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2)}  # BasicBlocks per stage
ENCODERS = (*RESNETS, "convnet")
STAGE_CHANNELS = (64, 128, 256, 512)
CONVNET_LAYERS = ((32, 2), (64, 2), (64, 2), (64, 1))  # (channels, stride) of each 3x3 convolution
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORED_PRETRAINED_KEYS = ("fc.",)  # a torchvision classifier head is not part of the trunk


class FrozenBatchNorm2d(nn.Module):
    """Batch-norm with fixed statistics: ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``.

    ``weight`` and ``bias`` are trainable parameters (when the encoder is not frozen); the running
    statistics are buffers that only change by loading pretrained weights.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = FrozenBatchNorm2d(out_ch)
        nn.init.zeros_(self.bn2.weight)  # each residual branch starts at zero (Goyal et al. 2017)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), FrozenBatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetTrunk(nn.Module):
    """ResNet-10/18 without pooling head: ``[N, 3, H, W]`` float -> ``[N, 512, H/32, W/32]`` feature maps."""

    def __init__(self, name: str = "resnet10") -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; choose one of {sorted(RESNETS)}")
        self.name = name
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for i, (blocks, ch) in enumerate(zip(RESNETS[name], STAGE_CHANNELS, strict=True)):
            stage = [BasicBlock(in_ch, ch, 1 if i == 0 else 2)] + [BasicBlock(ch, ch, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            in_ch = ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ConvTrunk(nn.Module):
    """``convnet``: four 3x3 convolutions with ReLU (strides 2, 2, 2, 1; padding 1), no normalisation:
    ``[N, 3, H, W]`` -> ``[N, 64, H/8, W/8]``. A CPU-sized trunk: 10.3 M multiply-adds per 64x64 image,
    against ResNet-10's 290 M at 128x128 (counted with torch's FlopCounterMode)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "convnet"
        layers: list[nn.Module] = []
        in_ch = 3
        for ch, stride in CONVNET_LAYERS:
            layers += [nn.Conv2d(in_ch, ch, 3, stride, 1), nn.ReLU()]
            in_ch = ch
        self.convs = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x)


def make_trunk(name: str) -> nn.Module:
    """The trunk called ``name`` (one of `ENCODERS`), randomly initialised."""
    if name == "convnet":
        return ConvTrunk()
    if name in RESNETS:
        return ResNetTrunk(name)
    raise ValueError(f"unknown encoder {name!r}; choose one of {list(ENCODERS)}")


def feature_map_shape(image_hw: tuple[int, int], name: str = "resnet10") -> tuple[int, int, int]:
    """``(C, h, w)`` of the trunk's output for ``H x W`` inputs. ResNets: conv1 /2, maxpool /2, three /2
    stages; ``convnet``: its strided convolutions."""

    def down(n: int, k: int, s: int, p: int) -> int:
        return (n + 2 * p - k) // s + 1

    h, w = image_hw
    if name == "convnet":
        for _, stride in CONVNET_LAYERS:
            h, w = down(h, 3, stride, 1), down(w, 3, stride, 1)
        return CONVNET_LAYERS[-1][0], h, w
    if name not in RESNETS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {list(ENCODERS)}")
    h, w = down(h, 7, 2, 3), down(w, 7, 2, 3)
    h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)
    for _ in range(3):
        h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)
    return STAGE_CHANNELS[-1], h, w


class Projection(nn.Module):
    """One camera's readout: 1x1 conv bottleneck -> flatten (keeps where things are) -> Linear -> LN -> tanh."""

    def __init__(self, fmap: tuple[int, int, int], out_dim: int, bottleneck: int = 32) -> None:
        super().__init__()
        c, h, w = fmap
        self.reduce = nn.Conv2d(c, bottleneck, 1)
        self.fc = nn.Linear(bottleneck * h * w, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, fmap: Tensor) -> Tensor:
        x = torch.relu(self.reduce(fmap)).flatten(1)
        return torch.tanh(self.norm(self.fc(x)))


class CameraHeads(nn.Module):
    """Per-camera projections of the trunk's feature maps, concatenated: ``[B, K, C, h, w] -> [B, K*dim]``."""

    def __init__(self, cameras: int, fmap: tuple[int, int, int], out_dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(Projection(fmap, out_dim) for _ in range(cameras))
        self.out_dim = cameras * out_dim

    def forward(self, fmaps: Tensor) -> Tensor:
        return torch.cat([head(fmaps[:, k]) for k, head in enumerate(self.heads)], dim=-1)


class ImageEncoder(nn.Module):
    """uint8 camera images ``[B, K, H, W, 3]`` -> trunk feature maps ``[B, K, C, h, w]`` (one batched call)."""

    image_mean: Tensor
    image_std: Tensor

    def __init__(self, name: str = "resnet10") -> None:
        super().__init__()
        self.name = name
        self.trunk = make_trunk(name)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        b, k, h, w, c = images.shape
        if c != 3:
            raise ValueError(f"expected RGB images [B, K, H, W, 3], got shape {list(images.shape)}")
        x = images_to_float(images.reshape(b * k, h, w, c), self.image_mean, self.image_std)
        fmaps = self.trunk(x)
        return fmaps.reshape(b, k, *fmaps.shape[1:])


def images_to_float(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 ``[N, H, W, 3]`` -> float ``[N, 3, H, W]``: ``/255`` then ``(x - mean) / std``, on images' device."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std


def shift_images(images: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """Translate every image ``[N, H, W, C]`` (any dtype) by its own integer ``(dx[n], dy[n])`` pixels.

    ``out[n, i, j] = images[n, clamp(i + dy[n]), clamp(j + dx[n])]``: the same as replicate-padding
    by ``max|shift|`` and cropping at offset ``(pad + dy, pad + dx)``, without materialising the pad.
    """
    n, h, w = images.shape[:3]
    dev = images.device
    rows = (torch.arange(h, device=dev)[None, :] + dy[:, None]).clamp_(0, h - 1)  # [N, H]
    cols = (torch.arange(w, device=dev)[None, :] + dx[:, None]).clamp_(0, w - 1)  # [N, W]
    batch = torch.arange(n, device=dev)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


def random_shift(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """DrQ augmentation: each image ``[N, H, W, C]`` shifted by a uniform integer in ``[-pad, pad]^2``.

    Equivalent to padding ``pad`` pixels with replicate padding and cropping a random ``H x W``
    window. ``pad <= 0`` returns the images unchanged. Runs on the images' device.
    """
    if pad <= 0:
        return images
    shifts = torch.randint(-pad, pad + 1, (2, images.shape[0]), device=images.device, generator=generator)
    return shift_images(images, shifts[0], shifts[1])


def load_trunk_weights(trunk: nn.Module, path: str | Path) -> None:
    """Load pretrained trunk weights from a local safetensors file (a ResNet's: torchvision key names;
    a ``convnet``'s: as `pretrain_encoder` saves them).

    A classifier head (``fc.*``) and ``num_batches_tracked`` counters in the file are ignored; any
    other difference (a missing key, an unexpected key, a shape mismatch) is an error that lists it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights {path} do not exist (expected a local .safetensors file "
                                f"with torchvision ResNet key names, e.g. conv1.weight, layer1.0.bn1.running_mean)")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"encoder weights {path}: not a readable safetensors file ({exc})") from exc
    tensors = {k: v for k, v in tensors.items()
               if not k.startswith(IGNORED_PRETRAINED_KEYS) and not k.endswith("num_batches_tracked")}
    own = trunk.state_dict()
    missing = sorted(own.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - own.keys())
    shapes = [f"{k}: file {list(tensors[k].shape)} != model {list(own[k].shape)}"
              for k in sorted(own.keys() & tensors.keys()) if tensors[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                problems.append(f"{label}: {', '.join(items[:5])}{more}")
        name = getattr(trunk, "name", type(trunk).__name__)
        raise ValueError(f"encoder weights {path} do not fit the {name} trunk: " + "; ".join(problems))
    trunk.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)
