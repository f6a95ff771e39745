"""Reference architectures. Each starts with a ``Normalize`` layer and returns logits.

``mlp``, ``lenet`` and ``strided_cnn`` are plain ``nn.Sequential`` stacks of Linear/Conv2d/ReLU/MaxPool/Flatten,
which every explanation rule and interval bound in the library can walk layer by layer.
``resnet_small`` and ``resnet18`` (He et al. 2016, "Deep residual learning", in the 32×32 CIFAR
shape: a 3×3 stem, no stem pooling; ``resnet18(stem="imagenet")`` has ImageNet's 7×7 stride-2
stem and max pooling, for 224×224 inputs) are residual networks whose skip connection is an
``Add`` module, so LRP gives it its own rule, and whose blocks name their BatchNorm pairs for
folding. ``wrn`` (``wrn_28_10``, ``wrn_16_2``) is the WideResNet of robust CIFAR-10 models
(:mod:`hardened.models.wideresnet`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from hardened.errors import ConfigError
from hardened.models.normalize import Normalize
from hardened.models.residual import Add
from hardened.models.schema import check_arch_kwargs
from hardened.models.wideresnet import wrn, wrn_16_2, wrn_28_10

__all__ = [
    "ARCHITECTURES", "Add", "STEMS", "arch_kwargs_for", "build_model", "mlp", "lenet", "strided_cnn", "resnet_small",
    "resnet18", "wrn", "wrn_16_2", "wrn_28_10",
]

InputShape = tuple[int, int, int]


def _stats(input_shape: InputShape, mean: Sequence[float] | None, std: Sequence[float] | None):
    channels = input_shape[0]
    return (list(mean) if mean is not None else [0.5] * channels,
            list(std) if std is not None else [0.5] * channels)


def mlp(
    input_shape: InputShape = (1, 28, 28),
    num_classes: int = 10,
    hidden: Sequence[int] = (256, 128),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Sequential:
    """Fully connected ReLU network: Normalize, Flatten, Linear+ReLU per hidden width, Linear."""
    m, s = _stats(input_shape, mean, std)
    layers: list[nn.Module] = [Normalize(m, s), nn.Flatten()]
    width = input_shape[0] * input_shape[1] * input_shape[2]
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def lenet(
    input_shape: InputShape = (1, 28, 28),
    num_classes: int = 10,
    channels: Sequence[int] = (16, 32),
    hidden: int = 128,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Sequential:
    """LeNet-style MNIST CNN: conv5-ReLU-maxpool2, conv5-ReLU-maxpool2, fc-ReLU, fc.

    Convolutions keep the size (padding 2) and each pooling floors it by half, so H×W inputs
    reach the first dense layer as ``channels[1]``×⌊H/4⌋×⌊W/4⌋ (28×28: 7×7), computed without
    a probe forward pass (so sizes can be checked on the ``meta`` device at no cost).
    """
    m, s = _stats(input_shape, mean, std)
    c1, c2 = (int(c) for c in channels)
    rows, cols = int(input_shape[1]) // 4, int(input_shape[2]) // 4
    if rows < 1 or cols < 1:
        raise ConfigError(f"lenet needs images of at least 4×4 pixels, got {input_shape[1]}×{input_shape[2]}")
    features = nn.Sequential(
        Normalize(m, s),
        nn.Conv2d(input_shape[0], c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
    )
    return nn.Sequential(
        *features, nn.Linear(c2 * rows * cols, int(hidden)), nn.ReLU(), nn.Linear(int(hidden), num_classes)
    )


def strided_cnn(
    input_shape: InputShape = (1, 28, 28),
    num_classes: int = 10,
    channels: Sequence[int] = (16, 32),
    hidden: int = 100,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Sequential:
    """The MNIST network of Wong et al. 2020's code (fast adversarial training): two 4×4
    convolutions of stride 2 (padding 1), ReLU, a dense layer, ReLU, the output layer.

    Each convolution halves H×W (28×28: 14×14, then 7×7); no pooling. About 5× cheaper than
    ``lenet`` per image, and in issue 18's runs single-step training on it did not collapse
    where ``lenet`` did.
    """
    m, s = _stats(input_shape, mean, std)
    c1, c2 = (int(c) for c in channels)
    rows, cols = int(input_shape[1]) // 4, int(input_shape[2]) // 4
    if rows < 1 or cols < 1:
        raise ConfigError(f"strided_cnn needs images of at least 4×4 pixels, got {input_shape[1]}×{input_shape[2]}")
    return nn.Sequential(
        Normalize(m, s),
        nn.Conv2d(input_shape[0], c1, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c2 * rows * cols, int(hidden)), nn.ReLU(), nn.Linear(int(hidden), num_classes),
    )


class _BasicBlock(nn.Module):
    """conv3-BN-ReLU-conv3-BN, plus the shortcut (identity, or conv1-BN when the shape
    changes), added, then ReLU. ``batchnorm_pairs`` names the (conv, BN) attribute pairs that
    LRP's BatchNorm folding merges (the shortcut is an ``nn.Sequential``, folded as such)."""

    batchnorm_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.add(out, self.shortcut(x)))


#: ResNet stems: ``cifar`` (3×3 conv, stride 1) for small images, ``imagenet`` (7×7 conv stride 2,
#: then 3×3 max pooling stride 2: a quarter of the size) for 224×224 ones
STEMS = ("cifar", "imagenet")


def _stem(channels: int, width: int, stem: str) -> nn.Sequential:
    if stem not in STEMS:
        raise ConfigError(f"unknown ResNet stem {stem!r}: use one of {', '.join(STEMS)}")
    if stem == "cifar":
        return nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
    return nn.Sequential(nn.Conv2d(channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.MaxPool2d(3, 2, 1))


class ResNet(nn.Module):
    """A ResNet of basic blocks: a stem (``STEMS``; 3×3 conv-BN-ReLU by default), one stage per
    entry of ``widths`` (``depths[i]`` blocks; every stage after the first halves the size),
    global average pool, linear."""

    def __init__(
        self,
        input_shape: InputShape,
        num_classes: int,
        widths: Sequence[int],
        depths: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        m, s = _stats(input_shape, mean, std)
        self.normalize = Normalize(m, s)
        self.stem = _stem(input_shape[0], widths[0], stem)
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (cout, depth) in enumerate(zip(widths, depths, strict=True)):
            for b in range(depth):
                stages.append(_BasicBlock(cin, cout, 2 if (i > 0 and b == 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.stages(self.stem(self.normalize(x))))))


class ResNetSmall(ResNet):
    """A small ResNet for 32×32 RGB: three stages of widths ``width``, 2×, 4×, ``blocks`` each."""

    def __init__(
        self,
        input_shape: InputShape = (3, 32, 32),
        num_classes: int = 10,
        width: int = 16,
        blocks: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(input_shape, num_classes, (width, 2 * width, 4 * width), (blocks,) * 3, mean, std)


def resnet_small(**kwargs: Any) -> ResNetSmall:
    """A small ResNet (about 0.2M parameters at width 16) for 32×32 RGB images."""
    return ResNetSmall(**kwargs)


def resnet18(
    input_shape: InputShape = (3, 32, 32),
    num_classes: int = 10,
    width: int = 64,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    stem: str = "cifar",
) -> ResNet:
    """ResNet-18 (11.2M parameters at width 64): stages of 64, 128, 256, 512 channels with 2
    basic blocks each; any input size (global pooling), 32×32 by default. ``stem="imagenet"``
    (7×7 stride-2 conv and max pooling) works at a quarter of the resolution: the shape for
    224×224 inputs, 16× cheaper there than the CIFAR stem."""
    return ResNet(input_shape, num_classes, (width, 2 * width, 4 * width, 8 * width), (2, 2, 2, 2), mean, std,
                  stem)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet": lenet,
    "strided_cnn": strided_cnn,
    "resnet_small": resnet_small,
    "resnet18": resnet18,
    "wrn": wrn,
    "wrn_28_10": wrn_28_10,
    "wrn_16_2": wrn_16_2,
}


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build a reference architecture by name with keyword arguments, checked first (types,
    ranges, at most ``schema.MAX_PARAMETERS`` parameters) so that nothing huge is allocated."""
    key = arch.lower().replace("-", "_")
    if key not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}")
    checked = check_arch_kwargs(key, kwargs, where=f"architecture {key}")
    return ARCHITECTURES[key](**checked)


def arch_kwargs_for(data: Any) -> dict[str, Any]:
    """Architecture arguments fitted to a training ``Dataset``: its input shape, class count, and
    per-channel pixel mean/std for the ``Normalize`` layer (std floored at 1e-3 so a constant
    channel cannot divide by zero). JSON-ready, for the model's sidecar."""
    return {
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "mean": data.x.mean(dim=(0, 2, 3)).tolist(),
        "std": data.x.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist(),
    }
