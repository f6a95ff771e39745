"""Robustness measurements: accuracy over an eps sweep, minimal eps per sample, ASR vs norm."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hardened._util.atomic import write_json
from hardened._util.progress import progress_bar
from hardened.attacks import ATTACKS, attack_in_batches, make_attack
from hardened.attacks.minimal import minimal_norms
from hardened.errors import ConfigError
from hardened.threat import check_norm

__all__ = [
    "SweepResult",
    "MinimalPerturbation",
    "SuccessCurve",
    "robust_accuracy_sweep",
    "minimal_eps",
    "minimal_norm",
    "success_curve",
    "load_result",
]


def _check_eps_values(eps_values: list[float] | tuple[float, ...]) -> list[float]:
    values = [float(e) for e in eps_values]
    if not values:
        raise ConfigError("give at least one eps value")
    bad = [e for e in values if not math.isfinite(e) or e < 0]
    if bad:
        raise ConfigError(f"eps values must be finite and >= 0, got {bad}")
    return sorted(values)


@dataclass(frozen=True)
class SweepResult:
    """Robust accuracy of one attack at each eps (accuracy at eps=0 is the clean accuracy)."""

    attack: str
    norm: str
    eps: list[float]
    robust_accuracy: list[float]
    n: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    kind: str = "sweep"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepResult:
        return cls(**data)


@dataclass(frozen=True)
class MinimalPerturbation:
    """Per-sample smallest eps at which the attack succeeded (``inf``: not even at ``eps_max``).

    Found by bisection on ``[0, eps_max]``; each value is within ``eps_max / 2**steps`` above
    the attack's true threshold for that sample.
    """

    attack: str
    norm: str
    eps: list[float]
    eps_max: float
    steps: int
    seconds: float
    kind: str = "minimal_eps"

    def median(self) -> float:
        """The median minimal eps (``inf`` when most samples were never fooled)."""
        return float(np.median(self.eps)) if self.eps else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "eps": [e if math.isfinite(e) else None for e in self.eps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MinimalPerturbation:
        eps = [float("inf") if e is None else float(e) for e in data["eps"]]
        return cls(**{**data, "eps": eps})


@dataclass(frozen=True)
class SuccessCurve:
    """Attack success rate as a function of the perturbation norm: the fraction of samples
    whose attack succeeded with a perturbation of norm ``<= threshold``."""

    attack: str
    norm: str
    thresholds: list[float]
    success_rate: list[float]
    kind: str = "success_curve"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuccessCurve:
        return cls(**data)


def _attack_batched(
    model: nn.Module, x: Tensor, y: Tensor, attack: Any, batch_size: int
) -> tuple[Tensor, Tensor]:
    """Run ``attack`` over batches; return (pred_adv == y, success) per sample."""
    result = attack_in_batches(attack, model, x, y, batch_size=batch_size)
    return (result.pred_adv == result.labels).cpu(), result.success.cpu()


def robust_accuracy_sweep(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps_values: list[float] | tuple[float, ...],
    attack: str = "pgd",
    norm: str = "linf",
    batch_size: int = 256,
    progress: bool = False,
    **attack_kwargs: Any,
) -> SweepResult:
    """Accuracy of ``model`` on ``attack`` at each eps in ``eps_values`` (sorted ascending)."""
    values = _check_eps_values(eps_values)
    norm = check_norm(norm)
    start = time.perf_counter()
    accuracies = []
    params: dict[str, Any] = {}
    with progress_bar(len(values), f"{attack} {norm} sweep", progress) as bar:
        for eps in values:
            instance = make_attack(attack, eps=eps, norm=norm, **attack_kwargs)
            params = instance.params()
            correct, _ = _attack_batched(model, x, y, instance, batch_size)
            accuracies.append(float(correct.float().mean()))
            bar.describe(f"{attack} {norm} eps={eps:g}: accuracy {accuracies[-1]:.3f}")
            bar.advance()
    params.pop("eps", None)
    return SweepResult(
        attack=attack, norm=norm, eps=values, robust_accuracy=accuracies, n=int(len(x)),
        seconds=time.perf_counter() - start, params=params,
    )


def minimal_eps(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps_max: float,
    attack: str = "pgd",
    norm: str = "linf",
    steps: int = 8,
    batch_size: int = 256,
    progress: bool = False,
    **attack_kwargs: Any,
) -> MinimalPerturbation:
    """Per-sample minimal successful eps by bisection on ``[0, eps_max]``.

    Samples already misclassified get 0. Each bisection round attacks the samples that share a
    midpoint together, so the work is ``len(x) * (steps + 1)`` attack runs in all.
    """
    if not (math.isfinite(eps_max) and eps_max > 0):
        raise ConfigError(f"eps_max must be a finite number > 0, got {eps_max}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    norm = check_norm(norm)
    start = time.perf_counter()
    n = len(x)
    lo = torch.zeros(n, dtype=torch.float64)
    hi = torch.full((n,), float(eps_max), dtype=torch.float64)
    with progress_bar(steps + 2, f"minimal eps ({attack} {norm})", progress) as bar:
        clean_ok, _ = _attack_batched(model, x, y, make_attack(attack, eps=0.0, norm=norm, **attack_kwargs), batch_size)
        bar.advance()
        _, fooled = _attack_batched(model, x, y, make_attack(attack, eps=eps_max, norm=norm, **attack_kwargs), batch_size)
        bar.advance()
        found = fooled | ~clean_ok
        hi[~clean_ok] = 0.0
        searching = found & clean_ok
        for _ in range(steps):
            mid = (lo + hi) / 2
            for value in torch.unique(mid[searching]).tolist():
                members = (searching & (mid == value)).nonzero().squeeze(1)
                instance = make_attack(attack, eps=value, norm=norm, **attack_kwargs)
                _, success = _attack_batched(model, x[members], y[members], instance, batch_size)
                hi[members[success]] = value
                lo[members[~success]] = value
            bar.advance()
    eps = torch.where(found, hi, torch.full_like(hi, float("inf")))
    return MinimalPerturbation(
        attack=attack, norm=norm, eps=eps.tolist(), eps_max=float(eps_max), steps=steps,
        seconds=time.perf_counter() - start,
    )


def minimal_norm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attack: str = "fmn",
    norm: str = "l2",
    batch_size: int = 256,
    **attack_kwargs: Any,
) -> MinimalPerturbation:
    """Per-sample minimal adversarial norm from one run of a minimal-norm attack (FMN, C&W).

    The same result as ``minimal_eps`` without the bisection: one attack run instead of
    ``steps + 2``. Samples already misclassified get 0, samples never fooled ``inf``;
    ``eps_max`` is the largest norm found and ``steps`` is 0 (no bisection).
    """
    if not ATTACKS.get(attack).minimal:
        raise ConfigError(f"{attack} is not a minimal-norm attack: use fmn or cw, or minimal_eps (bisection)")
    norm = check_norm(norm)
    start = time.perf_counter()
    result = attack_in_batches(make_attack(attack, norm=norm, **attack_kwargs), model, x, y, batch_size=batch_size)
    eps = minimal_norms(result, norm).cpu()
    eps[(result.pred_clean != result.labels).cpu()] = 0.0
    finite = eps[torch.isfinite(eps)]
    return MinimalPerturbation(
        attack=result.attack, norm=norm, eps=eps.tolist(), eps_max=float(finite.max()) if finite.numel() else 0.0,
        steps=0, seconds=time.perf_counter() - start,
    )


def success_curve(
    norm_values: Tensor | list[float],
    success: Tensor | list[bool],
    thresholds: list[float] | Tensor,
    *,
    attack: str = "",
    norm: str = "linf",
) -> SuccessCurve:
    """ASR(t) = mean(success & norm <= t) for each threshold t.

    ``norm_values`` are the per-sample perturbation norms (or minimal eps, with ``inf`` for
    samples never fooled) and ``success`` the per-sample success mask.
    """
    values = torch.as_tensor(norm_values, dtype=torch.float64)
    ok = torch.as_tensor(success, dtype=torch.bool)
    if values.shape != ok.shape:
        raise ConfigError(f"norm_values {tuple(values.shape)} and success {tuple(ok.shape)} differ")
    grid = [float(t) for t in torch.as_tensor(thresholds, dtype=torch.float64).tolist()]
    n = max(len(values), 1)
    rates = [float(((values <= t) & ok).sum()) / n for t in grid]
    return SuccessCurve(attack=attack, norm=norm, thresholds=grid, success_rate=rates)


_KINDS = {"sweep": SweepResult, "minimal_eps": MinimalPerturbation, "success_curve": SuccessCurve}


def save_result(result: SweepResult | MinimalPerturbation | SuccessCurve, path: str | os.PathLike[str]) -> None:
    """Write a result as JSON (atomically)."""
    write_json(path, result.to_dict())


def load_result(path: str | os.PathLike[str]) -> SweepResult | MinimalPerturbation | SuccessCurve:
    """Read a result written by ``save_result``."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    kind = data.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"{path} is not a hardened evaluation result (kind={kind!r})")
    return _KINDS[kind].from_dict(data)  # type: ignore[attr-defined,no-any-return]
