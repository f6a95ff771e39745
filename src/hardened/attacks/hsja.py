"""HopSkipJump: a decision-based attack that needs only the model's predicted labels.

Chen, Jordan & Wainwright 2020, "HopSkipJumpAttack: a query-efficient decision-based attack"
(IEEE S&P). From an adversarial starting point (uniform noise), each iteration

1. binary-searches the segment (L2) or box (Linf) between the clean image ``x*`` and the current
   point to the decision boundary (tolerance ``theta = gamma / d^{3/2}`` for L2,
   ``gamma / d^2`` for Linf, ``d`` values per image);
2. estimates the boundary's normal by Monte Carlo: ``n_t = min(init_evals * sqrt(t), max_evals)``
   unit random directions ``u_b`` (Gaussian for L2, uniform for Linf) around the boundary point,
   ``g = mean((phi(x_t + delta u_b) - mean phi) u_b)`` with ``phi = +-1`` adversarial or not and
   ``delta = sqrt(d) theta ||x_t - x*||`` (L2) or ``d theta ||x_t - x*||_inf`` (Linf);
3. steps along ``g / ||g||`` (L2) or ``sign(g)`` (Linf) with the geometric progression: size
   ``||x_t - x*|| / sqrt(t)``, halved until the new point is adversarial.

Targeted (``targets=``): "adversarial" means classified as the target, and the start is one of
the batch's own images the model classifies as the target (the paper's choice), before uniform
noise (which rarely lands in one given class).

Every point the attack keeps has been answered as adversarial by the model, so its iterates stay
on the adversarial (target-class) side; the result is the closest of them. Each sample spends at most ``queries`` model evaluations (the first, at
the clean image, included); the search stops earlier once the kept point is within ``eps``
(``early_stop``). The result is the kept point, projected into the ``eps`` ball by the base class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from hardened._util.seeding import make_generator
from hardened._util.validate import check_flag, check_int, check_real, check_seed
from hardened.attacks.base import ATTACKS, Attack, Oracle
from hardened.attacks.losses import is_success
from hardened.attacks.options import check_threat

__all__ = ["HopSkipJump", "hopskipjump"]

HSJA_NORMS = ("l2", "linf")


class _Spent(Exception):
    """The sample's query budget cannot pay for the next question."""


class _Decider:
    """``phi``: the model's adversarial-or-not answer for images of one sample, counted."""

    def __init__(self, decide: Callable[[Tensor], Tensor], budget: int) -> None:
        self.decide, self.left = decide, budget

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[0] > self.left:
            raise _Spent
        self.left -= x.shape[0]
        return self.decide(x)


def _distance(a: Tensor, b: Tensor, norm: str) -> float:
    diff = (a - b).flatten()
    return float(diff.norm() if norm == "l2" else diff.abs().max())


def hopskipjump(
    decide: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    norm: str,
    queries: int,
    bounds: tuple[float, float],
    generator: torch.Generator,
    eps: float = 0.0,
    iterations: int = 64,
    init_evals: int = 100,
    max_evals: int = 1000,
    gamma: float = 1.0,
    init_tries: int = 100,
    starts: Tensor | None = None,
    trace: list[Tensor] | None = None,
) -> Tensor | None:
    """HopSkipJump on one image ``x`` (C×H×W); ``decide(batch) -> bool (B,)`` is the oracle.

    Returns the closest adversarial point found (one ``decide`` answered True for), or
    ``None`` if no adversarial start was found within the budget. ``starts`` (S×C×H×W, optional)
    are candidate starts asked about (closest first) before ``init_tries`` uniform-noise images;
    the first one answered adversarial is kept. ``trace`` (if given) receives
    every point kept, in order. Stops after ``iterations``, when the budget cannot pay for the
    next question, or once the kept point is within ``eps``.
    """
    phi = _Decider(decide, queries)
    lo, hi = bounds
    d = x.numel()
    theta = gamma / (d * math.sqrt(d)) if norm == "l2" else gamma / d**2
    best: Tensor | None = None
    best_distance = math.inf

    def keep(point: Tensor) -> Tensor:
        """Record an answered-adversarial ``point``; ``best`` is the closest one so far."""
        nonlocal best, best_distance
        if trace is not None:
            trace.append(point.clone())
        distance = _distance(point, x, norm)
        if distance < best_distance:
            best, best_distance = point, distance
        return point

    def project(target: Tensor, alpha: float) -> Tensor:
        if norm == "l2":
            return (1 - alpha) * x + alpha * target
        return torch.minimum(torch.maximum(target, x - alpha), x + alpha)

    def boundary(point: Tensor) -> Tensor:
        """Binary search from ``point`` (adversarial) towards ``x``; returns the adversarial end."""
        dist = _distance(point, x, norm)
        high, low = (1.0, 0.0) if norm == "l2" else (dist, 0.0)
        threshold = theta if norm == "l2" else min(dist * theta, theta)
        while (high - low) > threshold:
            mid = (high + low) / 2
            candidate = project(point, mid)
            if bool(phi(candidate[None])[0]):
                high = mid
                keep(candidate)
            else:
                low = mid
        return project(point, high)

    try:
        if starts is not None and starts.shape[0]:
            order = (starts - x).flatten(1).norm(dim=1).argsort()
            for first in range(0, starts.shape[0], 10):
                candidates = starts[order[first : first + 10]]
                hits = phi(candidates[: phi.left])
                if bool(hits.any()):
                    keep(candidates[int(hits.nonzero()[0, 0])].clone())
                    break
        tried = 0
        while best is None and tried < init_tries and phi.left > 0:
            chunk = min(10, init_tries - tried, phi.left)
            tried += chunk
            noise = torch.rand((chunk, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
            noise = lo + (hi - lo) * noise
            hits = phi(noise)
            if bool(hits.any()):
                keep(noise[int(hits.nonzero()[0, 0])])
        if best is None:
            return None
        current = boundary(best)
        for t in range(1, iterations + 1):
            if best_distance <= eps:
                break
            dist = _distance(current, x, norm)
            if t == 1:
                delta = 0.1 * (hi - lo)
            else:
                delta = (math.sqrt(d) if norm == "l2" else d) * theta * dist
            evals = min(int(init_evals * math.sqrt(t)), max_evals, phi.left)
            if evals < 1:
                break
            grad = _estimate_normal(phi, current, evals, delta, norm, bounds, generator)
            update = grad if norm == "l2" else grad.sign()
            step = dist / math.sqrt(t)
            while True:
                candidate = (current + step * update).clamp(lo, hi)
                if bool(phi(candidate[None])[0]):
                    keep(candidate)
                    break
                step /= 2
            current = boundary(candidate)
    except _Spent:
        pass
    return best


def _estimate_normal(
    phi: _Decider, point: Tensor, evals: int, delta: float, norm: str, bounds: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """Monte-Carlo estimate of the boundary's normal at ``point`` (unit L2 norm)."""
    shape = (evals, *point.shape)
    if norm == "l2":
        u = torch.randn(shape, generator=generator, device=point.device, dtype=point.dtype)
    else:
        u = 2 * torch.rand(shape, generator=generator, device=point.device, dtype=point.dtype) - 1
    u = u / u.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * point.dim()))
    probes = (point + delta * u).clamp(*bounds)
    u = (probes - point) / delta
    signs = 2 * phi(probes).to(point.dtype) - 1
    mean = float(signs.mean())
    if abs(mean) < 1.0:
        signs = signs - mean
    grad = (signs.view(-1, *([1] * point.dim())) * u).mean(dim=0)
    return grad / grad.norm().clamp_min(1e-12)


@ATTACKS.register("hsja", aliases=("hopskipjump",))
class HopSkipJump(Attack):
    """HopSkipJump (Chen et al. 2020), L2 or Linf, from predicted labels only; untargeted or
    targeted (started from a batch image classified as the target, else from noise).

    Args:
        eps: radius of the threat model's ball (the result is projected into it).
        norm: ``"l2"`` (default) or ``"linf"``.
        queries: most model evaluations per sample.
        iterations: most iterations; init_evals, max_evals: the gradient estimate's sample
            sizes (``min(init_evals * sqrt(t), max_evals)``); gamma: the binary-search tolerance
            factor; init_tries: uniform-noise images tried for the start.
        early_stop: stop a sample once its kept point is within ``eps``.
        bounds: the pixel box; seed: seed of the random directions.
    """

    name = "hsja"
    norms = HSJA_NORMS
    targeted = True
    needs_gradients = False
    labels_only = True
    seeded = True

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "l2",
        queries: int = 1000,
        iterations: int = 64,
        init_evals: int = 100,
        max_evals: int = 1000,
        gamma: float = 1.0,
        init_tries: int = 100,
        early_stop: bool = True,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        self.threat = check_threat(norm, eps, bounds, norms=HSJA_NORMS, attack="the HopSkipJump attack")
        self.bounds = self.threat.bounds
        self.queries = check_int(queries, "queries", minimum=1)
        self.iterations = check_int(iterations, "iterations", minimum=1)
        self.init_evals = check_int(init_evals, "init_evals", minimum=1)
        self.max_evals = check_int(max_evals, "max_evals", minimum=1)
        self.gamma = check_real(gamma, "gamma", minimum=0.0, open_below=True)
        self.init_tries = check_int(init_tries, "init_tries", minimum=1)
        self.early_stop = check_flag(early_stop, "early_stop")
        self.seed = check_seed(seed)

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        assert self.threat is not None
        generator = make_generator(self.seed, x.device)
        rows = torch.arange(x.shape[0], device=x.device)
        clean = oracle.query(x, rows)
        done = is_success(clean, y, targets)
        predicted = clean.argmax(dim=1)
        out = x.clone()
        for i in rows[~done].tolist():
            row = rows[i : i + 1]
            goal = None if targets is None else targets[i]

            def decide(batch: Tensor, i: int = i, row: Tensor = row, goal: Tensor | None = goal) -> Tensor:
                answer = oracle.query(batch, row.repeat(batch.shape[0]))
                size = batch.shape[0]
                return is_success(answer, y[i].expand(size), None if goal is None else goal.expand(size))

            found = hopskipjump(
                decide, x[i], norm=self.threat.norm, queries=self.queries - 1, bounds=self.bounds,
                generator=generator, eps=self.threat.eps if self.early_stop else 0.0,
                iterations=self.iterations, init_evals=self.init_evals, max_evals=self.max_evals,
                gamma=self.gamma, init_tries=self.init_tries,
                starts=None if goal is None else x[predicted == goal],
            )
            if found is not None:
                out[i] = found
        return out
