"""Model registry: name -> constructor. Every network takes float32 N x 3 x H x W in [0, 1].

- ``tutorial_net``: the classic PyTorch CIFAR-10 tutorial ``Net``, layer for layer (the
  baseline), behind the tutorial's own ``Normalize((0.5,)*3, (0.5,)*3)``.
- ``resnet18``: the CIFAR ResNet-18 (3x3 stem, no max-pool; He et al. 2016, as in kuangliu's
  pytorch-cifar), base width ``width`` (64 = the standard model).
- ``fastnet``: a small network in the style of the CIFAR-10 speed records (airbench): a frozen
  2x2 patch-whitening stem fitted to the training data, three conv-pool-BN-GELU groups and a
  scaled linear head. ``width`` sets the first group's channels; later groups use 2x and 4x.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from auditflow.core.errors import ModelError

# Per-channel statistics of CIFAR-10's training set; a fine default for natural images.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """(x - mean) / std per channel; part of the model so ONNX consumers feed [0, 1] pixels."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TutorialNet(nn.Module):
    """The PyTorch "Training a Classifier" tutorial network, unchanged but for `num_classes`."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stem, four stages of two basic blocks, global average pool."""

    def __init__(self, num_classes: int = 10, width: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, c_in = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = width * 2**i
            layers += [_BasicBlock(c_in, c_out, stride), _BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x))


class _ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(c_out, momentum=0.4)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.bn1(self.pool(self.conv1(x))))
        return F.gelu(self.bn2(self.conv2(x)))


class FastNet(nn.Module):
    """airbench-style CIFAR network; call `fit_whitening` on training images before training."""

    def __init__(self, num_classes: int = 10, width: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        # 2x2x3 = 12 patch dimensions, each whitened direction kept with both signs -> 24 maps.
        self.whiten = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        widths = (width, 2 * width, 4 * width)
        self.groups = nn.Sequential(
            _ConvGroup(24, widths[0]), _ConvGroup(widths[0], widths[1]), _ConvGroup(widths[1], widths[2])
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.scale = 1 / 9  # airbench's logit temperature; keeps early logits small

    @torch.no_grad()
    def fit_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to whiten 2x2 patches of `images` (float N x 3 x H x W, normalised)."""
        patches = images.unfold(2, 2, 1).unfold(3, 2, 1)  # N, C, H-1, W-1, 2, 2
        patches = patches.transpose(1, 3).reshape(-1, 3 * 2 * 2).double()  # components ordered (c, kh, kw)
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigval, eigvec = torch.linalg.eigh(cov)
        filters = (eigvec.T / torch.sqrt(eigval + eps)[:, None]).reshape(12, 3, 2, 2)  # out, in, kh, kw
        weight = torch.cat([filters, -filters]).to(self.whiten.weight.dtype)
        self.whiten.weight.copy_(weight)
        self.whiten.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.whiten(x))
        x = self.groups(x)
        x = torch.flatten(F.adaptive_max_pool2d(x, 1), 1)
        return self.head(self.dropout(x)) * self.scale


def _tutorial(num_classes: int, width: int, dropout: float) -> nn.Module:
    return nn.Sequential(Normalize((0.5,) * 3, (0.5,) * 3), TutorialNet(num_classes))


def _resnet18(num_classes: int, width: int, dropout: float) -> nn.Module:
    return nn.Sequential(Normalize(CIFAR_MEAN, CIFAR_STD), ResNet18(num_classes, width, dropout))


def _fastnet(num_classes: int, width: int, dropout: float) -> nn.Module:
    return nn.Sequential(Normalize(CIFAR_MEAN, CIFAR_STD), FastNet(num_classes, width, dropout))


REGISTRY: dict[str, Callable[[int, int, float], nn.Module]] = {
    "tutorial_net": _tutorial,
    "fastnet": _fastnet,
    "resnet18": _resnet18,
}


def build_model(
    name: str, num_classes: int, *, width: int = 64, dropout: float = 0.0, dp_compatible: bool = False
) -> nn.Module:
    """A fresh model from the registry; raises `ModelError` for an unknown name.

    `dp_compatible`: the architecture DP-SGD trains (BatchNorm -> GroupNorm, `private.py`), for
    configs with `train.dp`, in training and when a checkpoint is loaded back."""
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of {sorted(REGISTRY)}") from None
    model = factory(num_classes, width, dropout)
    if not dp_compatible:
        return model
    from auditflow.models.training.private import make_compatible  # imports Opacus (seconds): DP runs only

    return make_compatible(model)


@torch.no_grad()
def identity_init(model: nn.Module) -> None:
    """Start every 3x3 convolution of fastnet's groups as a partial identity: the first
    `in_channels` filters copy their input channel through (`nn.init.dirac_`), the rest keep
    their random start. Each group then begins close to passing its input on, as airbench
    initialises (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds", section 3.3)."""
    for module in model.modules():
        if isinstance(module, _ConvGroup):
            for conv in (module.conv1, module.conv2):
                nn.init.dirac_(conv.weight[: conv.in_channels])


def prepare_from_data(model: nn.Module, images: torch.Tensor) -> None:
    """Data-dependent initialisation (fastnet's whitening stem); a no-op for other models."""
    for module in model.modules():
        if isinstance(module, FastNet):
            normalise = model[0] if isinstance(model, nn.Sequential) else (lambda t: t)
            module.fit_whitening(normalise(images))
