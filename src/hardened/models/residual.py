"""The residual addition as a module, shared by the zoo's ResNets and WideResNets."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Add"]


class Add(nn.Module):
    """``a + b`` as a module (no parameters): the residual addition, which LRP gives its own
    rule (relevance split in proportion to the two summands) instead of copying it to both."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b
