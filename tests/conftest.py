"""Tiny models and data shared by the tests; torch limited to one thread per test worker."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from hardened.data import Dataset

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def tiny_cnn(channels: int = 1, size: int = 8, classes: int = 3, seed: int = 0) -> nn.Module:
    """A small random CNN (conv-relu-pool-flatten-linear) with fixed weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * (size // 2) ** 2, classes),
    ).eval()


def tiny_mlp(channels: int = 1, size: int = 8, classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(channels * size * size, 16), nn.ReLU(), nn.Linear(16, classes)
    ).eval()


def blob_data(n: int = 60, size: int = 8, classes: int = 3, seed: int = 0) -> Dataset:
    """Separable synthetic images: class k has a bright square in corner k, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 0.15 * torch.rand(n, 1, size, size, generator=g)
    half = size // 2
    corners = [(0, 0), (0, half), (half, 0), (half, half)]
    for i in range(n):
        r, c = corners[int(y[i]) % 4]
        x[i, 0, r : r + half, c : c + half] += 0.7
    return Dataset(x.clamp(0, 1), y.long(), tuple(str(k) for k in range(classes)), "blobs")


@pytest.fixture
def blobs() -> Dataset:
    return blob_data()


@pytest.fixture
def cnn() -> nn.Module:
    return tiny_cnn()
