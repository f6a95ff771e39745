"""Input normalisation as a layer, so every attack, certificate and guard works in pixel space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; ``mean`` and ``std`` are buffers, saved with the model's
    weights unless ``persistent=False`` (when they are architecture arguments instead)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, persistent: bool = True) -> None:
        super().__init__()
        if any(not float(s) > 0 for s in std):  # on Python floats, so it also works on "meta"
            from hardened.errors import ConfigError

            raise ConfigError(f"std must be positive, got {list(std)}")
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean_t, persistent=persistent)
        self.register_buffer("std", std_t, persistent=persistent)

    mean: Tensor
    std: Tensor

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
