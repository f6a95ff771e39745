"""One-step attacks: FGSM (Linf, Goodfellow et al. 2015) and FGM (L2).

Both are the PGD loop with one step of length eps from the clean image and no early stop: for
Linf the step is ``eps * sign(g)``; for L2 it is ``eps * g / ||g||_2``, of L2 norm exactly eps
before clipping to the box.
"""

from __future__ import annotations

from typing import Any

from hardened.attacks.base import ATTACKS
from hardened.attacks.pgd import PGD

__all__ = ["FGSM", "FGM"]


@ATTACKS.register("fgsm")
class FGSM(PGD):
    """Fast gradient sign method; ``norm="l2"`` gives the fast gradient method (FGM)."""

    name = "fgsm"
    seeded = False

    def __init__(self, *, eps: float, norm: str = "linf", loss: str = "ce", **kwargs: Any) -> None:
        super().__init__(
            eps=eps,
            norm=norm,
            steps=1,
            step_size=eps,
            random_start=False,
            restarts=1,
            loss=loss,
            early_stop=False,
            **kwargs,
        )


@ATTACKS.register("fgm")
class FGM(FGSM):
    """Fast gradient method: FGSM in the L2 norm."""

    name = "fgm"

    def __init__(self, *, eps: float, norm: str = "l2", **kwargs: Any) -> None:
        super().__init__(eps=eps, norm=norm, **kwargs)
