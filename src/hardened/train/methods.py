"""Training methods: each a small object that gives the loss of one batch."""

from __future__ import annotations

from typing import Any, Protocol

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TrainingMethod", "Standard"]


class TrainingMethod(Protocol):
    """Gives the batch loss to minimise; may craft adversarial or noisy inputs first."""

    name: str

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor: ...

    def config(self) -> dict[str, Any]: ...


class Standard:
    """Plain cross-entropy on clean inputs."""

    name = "standard"

    def batch_loss(self, model: nn.Module, x: Tensor, y: Tensor, generator: Any) -> Tensor:
        return F.cross_entropy(model(x), y)

    def config(self) -> dict[str, Any]:
        return {"method": self.name}
