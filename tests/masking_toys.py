"""Toy defences for the cascade and masking tests: a small CNN trained on blob images, behind a
4-level input quantiser (shattered gradients) and/or uniform input noise (randomness)."""

from __future__ import annotations

import torch
from torch import nn

from helpers import blob_data, tiny_cnn


class Quantise(nn.Module):
    """``round(levels * x) / levels``: zero gradient almost everywhere."""

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(self.levels * x) / self.levels


class UniformNoise(nn.Module):
    """``clip(x + U(-r, r))``: a randomized input defence (global RNG, as such defences do)."""

    def __init__(self, radius: float = 0.1) -> None:
        super().__init__()
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.radius * (2 * torch.rand_like(x) - 1)).clamp(0, 1)


def trained_cnn(seed: int = 0) -> nn.Module:
    """``tiny_cnn`` fitted to blob images (100% clean accuracy, breakable at Linf 0.3)."""
    data = blob_data(n=300, seed=seed)
    net = tiny_cnn(seed=seed).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(net(data.x), data.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval().requires_grad_(False)

