"""The dataset type: float32 images N×C×H×W in [0, 1], int64 labels, class names, a name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hardened._util.records import MAX_CLASSES
from hardened.errors import DataError

__all__ = ["Dataset", "Splits", "stratified_split"]


@dataclass(frozen=True)
class Dataset:
    """An image classification dataset held in memory.

    Attributes:
        x: float32 images N×C×H×W with values in [0, 1].
        y: int64 labels (N,), values in ``range(len(classes))``.
        classes: class names, index = label.
        name: a short name for reports (e.g. ``"mnist-5k"``).
    """

    x: Tensor
    y: Tensor
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise DataError(f"{self.name}: images must be N×C×H×W, got shape {tuple(self.x.shape)}")
        if self.x.dtype != torch.float32:
            raise DataError(f"{self.name}: images must be float32, got {self.x.dtype}")
        if self.y.dtype != torch.int64 or self.y.dim() != 1 or len(self.y) != len(self.x):
            raise DataError(
                f"{self.name}: labels must be int64 of shape ({len(self.x)},), "
                f"got {self.y.dtype} {tuple(self.y.shape)}"
            )
        if len(self.x) and (float(self.x.min()) < 0 or float(self.x.max()) > 1):
            raise DataError(f"{self.name}: pixel values must lie in [0, 1]")
        if len(self.classes) > MAX_CLASSES:
            raise DataError(f"{self.name}: {len(self.classes):,} classes, over the limit of {MAX_CLASSES:,}")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise DataError(
                f"{self.name}: labels span [{int(self.y.min())}, {int(self.y.max())}] "
                f"but there are {len(self.classes)} classes"
            )
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """C×H×W of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: Sequence[int] | Tensor | slice, name: str | None = None) -> Dataset:
        """The samples at ``indices`` (a list, an index tensor or a slice)."""
        if isinstance(indices, slice):
            return Dataset(self.x[indices], self.y[indices], self.classes, name or self.name)
        index = torch.as_tensor(indices, dtype=torch.long)
        return Dataset(self.x[index], self.y[index], self.classes, name or self.name)

    def head(self, n: int) -> Dataset:
        """The first ``n`` samples (all when ``n`` exceeds the size)."""
        return self.subset(slice(0, n))

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.x.to(device), self.y.to(device), self.classes, self.name)


@dataclass(frozen=True)
class Splits:
    """A train/test pair of the same dataset."""

    train: Dataset
    test: Dataset


def stratified_split(data: Dataset, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """A seeded, deterministic split keeping class proportions in both parts.

    Each class's samples are shuffled with ``numpy.random.default_rng(seed)`` and the first
    ``round(test_fraction * count)`` go to the test part; both parts are then shuffled.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    labels = data.y.numpy()
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(test_fraction * len(members)))
        test_idx.append(members[:cut])
        train_idx.append(members[cut:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    return Splits(
        train=data.subset(torch.from_numpy(train), f"{data.name}:train"),
        test=data.subset(torch.from_numpy(test), f"{data.name}:test"),
    )
