"""Minimal-norm attacks: C&W L2 and FMN. Each returns, per sample, the smallest adversarial
perturbation it found, so one run gives a whole success-against-norm curve.

- ``CW``: Carlini & Wagner 2017, "Towards evaluating the robustness of neural networks" (S&P),
  the L2 attack: ``x' = lo + (hi - lo)(tanh(w) + 1) / 2`` (the box for free), Adam on
  ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j, -kappa)``, and a binary search over ``c``
  per sample (upper bound halves on success, ×10 until the first success).
- ``FMN``: Pintor, Roli, Brendel & Biggio 2021, "Fast minimum-norm adversarial attacks through
  adaptive norm constraints" (NeurIPS): gradient steps on the logit margin inside an Lp ball of
  radius ``eps_k``, where ``eps_k`` shrinks by ``(1 - gamma)`` while the iterate is adversarial and
  grows (by ``(1 + gamma)``; before the first success to ``(1 + gamma)`` times the linear estimate
  of the boundary ``||delta|| + m / ||g||_*``, at least) while it is not; ``gamma`` and the step follow cosine annealing.

Without ``eps`` the attacks are unbounded (``AttackResult.norms`` holds the minimal norms, and a
failed sample returns the clean image); with ``eps`` the result is kept inside that ball.
``minimal_norms`` turns a result into per-sample minimal norms (``inf`` where it failed).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hardened._util.validate import check_int, check_real
from hardened.attacks.base import ATTACKS, Attack, AttackResult, Oracle
from hardened.attacks.losses import logit_margin
from hardened.attacks.options import check_threat
from hardened.errors import ConfigError
from hardened.threat import ThreatModel, check_norm, norms_of, project_ball

__all__ = ["CW", "FMN", "minimal_norms"]

_TINY = 1e-12
_DUAL = {"linf": 1.0, "l2": 2.0, "l1": math.inf}


def minimal_norms(result: AttackResult, norm: str) -> Tensor:
    """Per-sample ``norm`` of the perturbation of a minimal-norm result; ``inf`` where it failed.

    Feeds ``hardened.evaluate.success_curve`` (``norm_values``) and ``MinimalPerturbation``.
    """
    values = result.norms[check_norm(norm)].double()
    return torch.where(result.success, values, torch.full_like(values, math.inf))


def _goal_margin(logits: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
    """Negative exactly when the attack's goal is met: ``z_y - max_{j!=y} z_j`` (untargeted) or
    ``max_{j!=t} z_j - z_t`` (targeted)."""
    return logit_margin(logits, y) if targets is None else -logit_margin(logits, targets)


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def _bounded(
    norm: str, eps: float | None, bounds: tuple[float, float], attack: str, norms: tuple[str, ...]
) -> tuple[ThreatModel | None, str, tuple[float, float]]:
    """The optional threat model, the checked norm and the checked bounds."""
    if eps is None:
        box = ThreatModel(norm, 0.0, bounds)
        if box.norm not in norms:
            raise ConfigError(f"{attack} supports norm {' or '.join(norms)}, got {norm!r}")
        return None, box.norm, box.bounds
    threat = check_threat(norm, eps, bounds, norms=norms, attack=attack)
    return threat, threat.norm, threat.bounds


@ATTACKS.register("cw", aliases=("cw-l2", "carlini-wagner"))
class CW(Attack):
    """Carlini-Wagner L2 attack (minimal norm; untargeted or targeted).

    Args:
        eps: optional L2 bound on the result (``None``: unbounded, the minimal-norm attack).
        norm: ``"l2"`` only.
        steps: Adam iterations per constant.
        binary_steps: binary-search rounds over ``c``.
        initial_const: the first ``c``; lr: Adam's step; kappa: the confidence margin.
    """

    name = "cw"
    norms = ("l2",)
    targeted = True
    minimal = True

    def __init__(
        self,
        *,
        eps: float | None = None,
        norm: str = "l2",
        steps: int = 100,
        binary_steps: int = 9,
        initial_const: float = 1e-2,
        lr: float = 1e-2,
        kappa: float = 0.0,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.threat, self.norm, self.bounds = _bounded(norm, eps, bounds, "the C&W attack", self.norms)
        self.steps = check_int(steps, "steps", minimum=1)
        self.binary_steps = check_int(binary_steps, "binary_steps", minimum=1)
        self.initial_const = check_real(initial_const, "initial_const", minimum=0.0, open_below=True)
        self.lr = check_real(lr, "lr", minimum=0.0, open_below=True)
        self.kappa = check_real(kappa, "kappa", minimum=0.0)

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        lo, hi = self.bounds
        n = x.shape[0]
        limit = math.inf if self.threat is None else self.threat.eps
        w0 = torch.atanh(((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        const = torch.full((n,), self.initial_const, dtype=x.dtype, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        best = x.clone()
        best_norm = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        for _ in range(self.binary_steps):
            w = w0.clone()
            m, v = torch.zeros_like(w), torch.zeros_like(w)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            for t in range(1, self.steps + 1):
                x_adv = lo + (hi - lo) * (torch.tanh(w) + 1) / 2
                c = const

                def objective(logits: Tensor, c: Tensor = c) -> Tensor:
                    return c * _goal_margin(logits, y, targets).clamp(min=-self.kappa)

                logits, _, grad = oracle.objective_and_grad(x_adv, objective)
                margin = _goal_margin(logits, y, targets)
                distance = norms_of(x_adv - x)["l2"]
                improved = (margin < 0) & (distance < best_norm) & (distance <= limit)
                best[improved] = x_adv[improved]
                best_norm[improved] = distance[improved]
                succeeded |= margin < 0
                grad = (grad + 2 * (x_adv - x)) * (hi - lo) / 2 * (1 - torch.tanh(w) ** 2)
                m = 0.9 * m + 0.1 * grad
                v = 0.999 * v + 0.001 * grad**2
                w = w - self.lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
        return best


@ATTACKS.register("fmn", aliases=("fast-minimum-norm",))
class FMN(Attack):
    """Fast minimum-norm attack (Pintor et al. 2021), Linf, L2 or L1; untargeted or targeted.

    Args:
        eps: optional bound on the result (``None``: unbounded, the minimal-norm attack).
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        steps: iterations.
        step_size: the first step's L2 length (``alpha_0``; cosine-annealed to 1/100 of it).
        gamma: the first radius update factor (cosine-annealed to ``gamma / 50``).
    """

    name = "fmn"
    norms = ("linf", "l2", "l1")
    targeted = True
    minimal = True

    def __init__(
        self,
        *,
        eps: float | None = None,
        norm: str = "l2",
        steps: int = 100,
        step_size: float = 1.0,
        gamma: float = 0.05,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.threat, self.norm, self.bounds = _bounded(norm, eps, bounds, "the FMN attack", self.norms)
        self.steps = check_int(steps, "steps", minimum=1)
        self.step_size = check_real(step_size, "step_size", minimum=0.0, open_below=True)
        self.gamma = check_real(gamma, "gamma", minimum=0.0, maximum=1.0, open_below=True, open_above=True)

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        norm, n = self.norm, x.shape[0]
        lo, hi = self.bounds
        limit = math.inf if self.threat is None else self.threat.eps
        delta = torch.zeros_like(x)
        eps = torch.zeros(n, dtype=x.dtype, device=x.device)
        best = x.clone()
        best_norm = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        for k in range(self.steps):
            cosine = (1 + math.cos(math.pi * k / self.steps)) / 2
            gamma = self.gamma / 50 + (self.gamma - self.gamma / 50) * cosine
            alpha = self.step_size / 100 + (self.step_size - self.step_size / 100) * cosine
            logits, margin, grad = oracle.objective_and_grad(x + delta, lambda z: _goal_margin(z, y, targets))
            size = norms_of(delta)[norm].to(x.dtype)
            adversarial = margin < 0
            improved = adversarial & (size < best_norm)
            best[improved] = (x + delta)[improved]
            best_norm[improved] = size[improved]
            flat = grad.flatten(1)
            dual = flat.norm(p=_DUAL[norm], dim=1) if norm != "l1" else flat.abs().amax(dim=1)
            estimate = size + margin.clamp(min=0) / (dual + _TINY)
            # before the first success: the boundary estimate, but never less than eps grown by
            # (1 + gamma) (on a linear model the estimate lands exactly on the boundary)
            grown = torch.where(torch.isfinite(best_norm), eps, estimate.clamp(min=eps)) * (1 + gamma)
            eps = torch.where(adversarial, torch.minimum(eps * (1 - gamma), best_norm), grown)
            eps = eps.clamp(max=limit)
            step = grad / _per_sample(flat.norm(dim=1) + _TINY, grad)
            delta = project_ball(delta - alpha * step, norm, eps)
            delta = (x + delta).clamp(lo, hi) - x
        logits = oracle.logits(x + delta)
        size = norms_of(delta)[norm].to(x.dtype)
        improved = (_goal_margin(logits, y, targets) < 0) & (size < best_norm)
        best[improved] = (x + delta)[improved]
        return best

