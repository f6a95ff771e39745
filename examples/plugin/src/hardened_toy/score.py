"""``toy-brightness``: how far an image's mean brightness lies from the training images'.

Score ``|mean(x) - mu| / sd`` with ``mu`` and ``sd`` the mean and standard deviation of the
training images' mean brightness; higher = less like the training data. No classifier needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hardened.guard import BaseScore


class Brightness(BaseScore):
    """Mean-brightness z-score (a toy: it catches inverted or blank images, little else)."""

    name = "toy-brightness"
    differentiable = True

    def _fit(self, x: Tensor, y: Tensor | None, progress: bool) -> None:
        means = x.mean(dim=(1, 2, 3)).double()
        self.stats = torch.stack([means.mean(), means.std().clamp(min=1e-6)]).to(x.device)

    def _score(self, x: Tensor) -> Tensor:
        mu, sd = self.stats.to(x.device, x.dtype)
        return (x.mean(dim=(1, 2, 3)) - mu).abs() / sd

    def _state(self) -> dict[str, Tensor]:
        return {"stats": self.stats}

    def _load(self, tensors: dict[str, Tensor], input_shape: tuple[int, int, int]) -> None:
        self.stats = tensors["stats"]
