"""NES: projected gradient ascent on a gradient estimated from the model's scores only.

Ilyas, Engstrom, Athalye & Lin 2018, "Black-box adversarial attacks with limited queries and
information" (ICML). The loss gradient at ``x`` is estimated with antithetic Gaussian samples
(natural evolution strategies)::

    g = 1 / (2 sigma m) * sum_{i=1}^{m} [L(x + sigma u_i) - L(x - sigma u_i)] u_i,  u_i ~ N(0, I)

(``m = samples / 2`` pairs), then ``x <- project(x + step * sign(g))`` (Linf) or
``x + step * g / ||g||_2`` (L2). One iteration costs ``samples + 1`` queries per sample (the
estimate and the new point); a sample stops when it is adversarial or when its next iteration
would exceed ``queries`` (the first query, at the clean image, counts too).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hardened._util.seeding import make_generator
from hardened._util.validate import check_int, check_real, check_seed
from hardened.attacks.base import ATTACKS, Attack, Oracle
from hardened.attacks.losses import attack_loss, check_loss, is_success
from hardened.attacks.options import check_threat
from hardened.errors import ConfigError

__all__ = ["NES"]

NES_NORMS = ("linf", "l2")


@ATTACKS.register("nes")
class NES(Attack):
    """NES gradient-estimation attack (Ilyas et al. 2018), Linf or L2, from scores only.

    Args:
        eps: radius of the threat model's ball.
        norm: ``"linf"`` (default) or ``"l2"``.
        queries: most model evaluations per sample.
        samples: evaluations per gradient estimate (even: ``samples / 2`` antithetic pairs).
        sigma: the sampling radius (in pixel units).
        step_size: step per iteration (default ``eps / 5``).
        loss: ``"margin"`` (default) or ``"ce"``.
        bounds: the pixel box; seed: seed of the samples.
    """

    name = "nes"
    norms = NES_NORMS
    targeted = True
    needs_gradients = False
    scores_only = True
    seeded = True

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        queries: int = 2000,
        samples: int = 50,
        sigma: float = 1e-3,
        step_size: float | None = None,
        loss: str = "margin",
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        self.threat = check_threat(norm, eps, bounds, norms=NES_NORMS, attack="the NES attack")
        self.bounds = self.threat.bounds
        self.queries = check_int(queries, "queries", minimum=1)
        self.samples = check_int(samples, "samples", minimum=2)
        if self.samples % 2:
            raise ConfigError(f"samples must be even (antithetic pairs), got {self.samples}")
        self.sigma = check_real(sigma, "sigma", minimum=0.0, open_below=True)
        self.step_size = self.threat.eps / 5 if step_size is None else check_real(step_size, "step_size", minimum=0.0)
        self.loss = check_loss(loss)
        self.seed = check_seed(seed)

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        assert self.threat is not None
        threat, n = self.threat, x.shape[0]
        if threat.eps == 0.0:
            return x
        generator = make_generator(self.seed, x.device)
        goal = y if targets is None else targets
        rows = torch.arange(n, device=x.device)
        logits = oracle.query(x, rows)
        done = is_success(logits, y, targets)
        current = x.clone()
        spent = 1
        pairs = self.samples // 2
        while spent + self.samples + 1 <= self.queries:
            active = rows[~done]
            if active.numel() == 0:
                break
            xa = current[active]
            k = active.numel()
            u = torch.randn((pairs, *xa.shape), generator=generator, device=x.device, dtype=x.dtype)
            probes = torch.cat([xa + self.sigma * u, xa - self.sigma * u]).flatten(0, 1).clamp(*self.bounds)
            probe_rows = active.repeat(2 * pairs)
            losses = attack_loss(self.loss, oracle.query(probes, probe_rows), goal[probe_rows], targets is not None)
            plus, minus = losses.view(2, pairs, k).to(x.dtype)
            diff = (plus - minus).view(pairs, k, *([1] * (x.dim() - 1)))
            grad = (diff * u).sum(dim=0) / (2 * self.sigma * pairs)
            candidate = threat.project(xa + self._step(grad), x[active])
            logits = oracle.query(candidate, active)
            spent += self.samples + 1
            current[active] = candidate
            done[active] = is_success(logits, y[active], None if targets is None else targets[active])
        return current

    def _step(self, grad: Tensor) -> Tensor:
        assert self.threat is not None
        if self.threat.norm == "linf":
            return self.step_size * grad.sign()
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        return self.step_size * grad / norm

