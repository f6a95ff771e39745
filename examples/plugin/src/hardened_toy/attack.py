"""``toy-search``: random search in the ball, keeping the candidate of highest loss per image.

It needs only the model's outputs (no gradients): each try draws a random direction, steps to
the sphere of radius ``eps`` in ``norm``, and keeps it where the loss beats the best so far.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hardened.attacks import Attack, Oracle
from hardened.attacks.losses import attack_loss, check_loss
from hardened.errors import ConfigError
from hardened.threat import ThreatModel, normalize_direction


class RandomSearch(Attack):
    """Random search attack.

    Args:
        eps, norm: the ball (``linf`` or ``l2``); tries: random candidates per image;
        loss: ``ce`` or ``margin``; seed: seeds the candidates.
    """

    name = "toy-search"
    norms = ("linf", "l2")
    needs_gradients = False
    scores_only = True
    seeded = True

    def __init__(self, *, eps: float, norm: str = "linf", tries: int = 20, loss: str = "margin",
                 seed: int = 0, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        self.threat = ThreatModel(norm, eps, bounds)
        if self.threat.norm not in self.norms:
            raise ConfigError(f"toy-search supports linf or l2, got {norm!r}")
        if int(tries) < 1:
            raise ConfigError(f"tries must be >= 1, got {tries}")
        self.bounds = self.threat.bounds
        self.tries, self.loss, self.seed = int(tries), check_loss(loss), int(seed)

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        best = x.clone()
        best_loss = attack_loss(self.loss, oracle.logits(x), y, False)
        for _ in range(self.tries):
            noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
            step = self.threat.eps * normalize_direction(noise, self.threat.norm)
            candidate = self.threat.project(x + step, x)
            loss = attack_loss(self.loss, oracle.logits(candidate), y, False)
            better = loss > best_loss
            best[better], best_loss[better] = candidate[better], loss[better]
        return best
