"""A model wrapper that counts the images sent forward and backward through it.

Attacks count their own oracle calls, but a cascade also wants the cost of what it runs around
them (verification passes, masking checks, EOT's repeated samples): wrapping the model once
measures everything that reaches it, whatever the attack.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["CountingModel"]


class CountingModel(nn.Module):
    """``model`` with counters: ``forwards`` (images evaluated) and ``backwards`` (images a
    gradient flowed back through). A batch of N images adds N to each."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        self.forwards += int(x.shape[0])
        if out.requires_grad:
            out.register_hook(self._on_backward(int(x.shape[0])))
        return out

    def _on_backward(self, n: int) -> Callable[[Tensor], None]:
        def hook(_grad: Tensor) -> None:
            self.backwards += n

        return hook

    def counts(self) -> tuple[int, int]:
        """``(forwards, backwards)`` so far."""
        return self.forwards, self.backwards
