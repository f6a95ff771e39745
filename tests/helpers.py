"""Tiny models and data shared by the tests (import as ``from helpers import ...``)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from hardened.data import Dataset, Splits


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


def tiny_audit_splits() -> Splits:
    return Splits(train=blob_data(n=90, seed=1), test=blob_data(n=30, seed=2))


def _tiny_budget():
    from hardened.audit import BUDGETS

    return dataclasses.replace(
        BUDGETS["quick"], name="tiny", n_eval=24, pgd_steps=4, eps_linf=(0.0, 0.1, 0.3),
        eps_l2=(0.0, 0.5, 1.0), headline_linf=0.1, headline_l2=0.5, n_minimal=8, fmn_steps=20, n_spatial=8, spatial_points=3,
        n_gallery=3, n_guided=8, n_certify=4, smoothing_n=200, n_guard_fit=60, guard_epochs=1,
        n_guard_eval=24, strong_steps_factor=2, strong_restarts=1,
    )


TINY_BUDGET = _tiny_budget()
