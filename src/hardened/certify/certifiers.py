"""The registered certifiers: thin classes over ``certify_dataset`` (smoothing) and ``certify_ibp``.

Each turns its method's result into the shared contract, certified radii per image (see
``hardened.certify.base``); the functions stay the full interface (records, margins, resume).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hardened.certify.base import CERTIFIERS, Certifier
from hardened.certify.ibp import certify_ibp
from hardened.certify.runs import certify_dataset
from hardened.certify.smoothing import DEFAULT_ALPHA, DEFAULT_N, DEFAULT_N0, check_certify_settings
from hardened.errors import ConfigError
from hardened.threat import ThreatModel

__all__ = ["Smoothing", "IBP"]


@CERTIFIERS.register("smoothing", aliases=("randomized-smoothing", "rs"))
class Smoothing(Certifier):
    """Randomized smoothing (Cohen et al. 2019): certified L2 radius of the smoothed classifier.

    Image ``i`` draws its noise from ``mix_seed(seed, i)`` (as ``certify_dataset``); the
    radius is 0 where the certificate abstains or names another class than the label.
    """

    name = "smoothing"
    norms = ("l2",)
    deterministic = False

    def __init__(
        self,
        *,
        sigma: float = 0.25,
        n0: int = DEFAULT_N0,
        n: int = DEFAULT_N,
        alpha: float = DEFAULT_ALPHA,
        seed: int = 0,
        batch_size: int | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.sigma, self.n0, self.n, self.alpha, self.batch_size = check_certify_settings(
            sigma, n0, n, alpha, batch_size
        )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.bounds = bounds
        self.norm = "l2"

    def radii(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        run = certify_dataset(model, x, y, sigma=self.sigma, n0=self.n0, n=self.n, alpha=self.alpha,
                              seed=self.seed, batch_size=self.batch_size, bounds=self.bounds)
        values = [record.radius if record.correct else 0.0 for record in run.records]
        return torch.tensor(values, dtype=torch.float64, device=x.device)


@CERTIFIERS.register("ibp", aliases=("interval-bounds",))
class IBP(Certifier):
    """Interval bound propagation (Gowal et al. 2018) in the ``norm`` ball of radius ``eps``.

    The radius is ``eps`` where the label provably keeps the largest logit in the ball, else 0
    (a lower bound on the largest certifiable radius).
    """

    name = "ibp"
    norms = ("linf", "l2")
    deterministic = True

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        bounds: tuple[float, float] = (0.0, 1.0),
        batch_size: int = 256,
    ) -> None:
        threat = ThreatModel(norm, eps, bounds)
        if threat.norm not in self.norms:
            raise ConfigError(f"IBP certifies the norms {', '.join(self.norms)}, got {norm!r}")
        self.eps, self.norm, self.bounds = threat.eps, threat.norm, threat.bounds
        self.batch_size = int(batch_size)

    def radii(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        result = certify_ibp(model, x, y, eps=self.eps, norm=self.norm, bounds=self.bounds,
                             batch_size=self.batch_size)
        return result.certified.to(torch.float64) * self.eps
