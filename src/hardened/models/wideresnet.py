"""WideResNet (Zagoruyko & Komodakis 2016, "Wide residual networks") in the CIFAR shape that
robust CIFAR-10 models use, with RobustBench's module names, so their state dicts load as is.

``WRN-d-k``: a 3×3 stem conv to 16 channels, three groups of ``n = (d - 4) / 6`` pre-activation
basic blocks of 16k, 32k and 64k channels (the second and third groups start with stride 2),
then BN-ReLU, global average pooling and a linear layer. A block is

    BN-ReLU-conv3(stride)-BN-ReLU-conv3  +  shortcut

where the shortcut is the block's input when the shape is kept, else a 1×1 conv (with the
stride) of the *activated* input (as in the reference code). WRN-28-10 has 36.5M parameters.

State-dict keys are RobustBench's (``conv1``, ``block1.layer.0.bn1``, ...,
``block2.layer.0.convShortcut``, ``bn1``, ``fc``); the input normalisation is a ``Normalize``
layer whose statistics are not saved with the weights (they are architecture arguments, in the
sidecar), since RobustBench checkpoints carry none. Its default is the identity (mean 0, std 1):
RobustBench's WideResNets take [0, 1] pixels. The residual sum is an ``Add`` module and each
block names its (conv1, bn2) pair, so LRP gives the sum its own rule and folds that BatchNorm;
the pre-activation BatchNorms (after a sum) are element-wise affine layers with their own rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from hardened.errors import ConfigError
from hardened.models.normalize import Normalize
from hardened.models.residual import Add

__all__ = ["WideResNet", "wrn", "wrn_16_2", "wrn_28_10"]

InputShape = tuple[int, int, int]


class _PreActBlock(nn.Module):
    """BN-ReLU-conv3-BN-ReLU-conv3 plus the shortcut (identity, or ``convShortcut``: a strided
    1×1 conv of the activated input when the shape changes), added by an ``Add`` module."""

    batchnorm_pairs = (("conv1", "bn2"),)

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal_in_out = cin == cout and stride == 1
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.add = Add()

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return self.add(shortcut, out)  # type: ignore[no-any-return]


class _Group(nn.Module):
    """``depth`` blocks in ``layer`` (RobustBench's ``NetworkBlock``); the first has the stride."""

    def __init__(self, depth: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*(_PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)  # type: ignore[no-any-return]


def check_wrn_depth(depth: int) -> int:
    """Blocks per group, ``(depth - 4) / 6``; ``ConfigError`` unless that is a whole number >= 1."""
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"a WideResNet's depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40...), got {depth}")
    return (depth - 4) // 6


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` for images of ``input_shape``; returns logits N×``num_classes``."""

    def __init__(
        self,
        input_shape: InputShape = (3, 32, 32),
        num_classes: int = 10,
        depth: int = 28,
        width: int = 10,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        blocks = check_wrn_depth(int(depth))
        channels = input_shape[0]
        # the statistics are architecture arguments (sidecar), not weights: RobustBench files have none
        self.normalize = Normalize(list(mean) if mean is not None else [0.0] * channels,
                                   list(std) if std is not None else [1.0] * channels, persistent=False)
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = _Group(blocks, widths[0], widths[1], 1)
        self.block2 = _Group(blocks, widths[1], widths[2], 2)
        self.block3 = _Group(blocks, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        return self.fc(self.flatten(self.pool(self.relu(self.bn1(out)))))  # type: ignore[no-any-return]


def wrn(
    input_shape: InputShape = (3, 32, 32),
    num_classes: int = 10,
    depth: int = 28,
    width: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> WideResNet:
    """WideResNet-``depth``-``width`` (depth 6n + 4); WRN-28-10 by default."""
    return WideResNet(input_shape, num_classes, depth, width, mean, std)


def wrn_28_10(
    input_shape: InputShape = (3, 32, 32),
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> WideResNet:
    """WRN-28-10 (36.5M parameters), the shape of many robust CIFAR-10 models (RobustBench)."""
    return WideResNet(input_shape, num_classes, 28, 10, mean, std)


def wrn_16_2(
    input_shape: InputShape = (3, 32, 32),
    num_classes: int = 10,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> WideResNet:
    """WRN-16-2 (0.7M parameters): the same layout, small enough for tests and CPU runs."""
    return WideResNet(input_shape, num_classes, 16, 2, mean, std)
