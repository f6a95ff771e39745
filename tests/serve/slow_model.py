"""A factory for the service tests: a classifier of 8×8 images whose every forward takes 50 ms,
so that a test can fill the queue and have requests in flight when it sends SIGTERM."""

from __future__ import annotations

import time

import torch
from torch import nn


class SlowLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.05)
        return self.linear(x.flatten(1))


def slow_model() -> nn.Module:
    torch.manual_seed(0)
    return SlowLinear().eval()
