"""The one "which device does this model live on" lookup."""

from __future__ import annotations

import itertools

import torch
from torch import nn

__all__ = ["model_device"]


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of ``model``'s first parameter, else its first buffer, else ``default``
    (a parameter-free model such as a pure preprocessing layer)."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):  # lazily: stops at the first
        return tensor.device
    return torch.device(default)
