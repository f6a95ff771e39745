"""Thresholds from held-out in-distribution scores, and the score distribution to choose them.

A guard accepts an input when ``score <= threshold``. Two rules:

- ``fpr``: the conformal order statistic. With held-out scores ``s_(1) <= ... <= s_(n)`` the
  threshold is ``s_(k)`` with ``k = ceil((n + 1)(1 - fpr))``, so that a fresh in-distribution
  input (exchangeable with the held-out ones) is refused with probability at most ``fpr``
  (Vovk et al. 2005; Angelopoulos & Bates 2021). It needs ``n >= ceil(1 / fpr)`` samples, e.g.
  100 for a 1% rate; fewer is an error rather than a silently looser threshold.
- ``max``: the largest held-out score (0% false positives on the held-out set).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hardened._util.seeding import make_generator
from hardened.data.dataset import Dataset
from hardened.errors import ConfigError, InputError

__all__ = ["ScoreSummary", "Calibration", "summarize_scores", "calibrate_threshold", "calibration_split",
           "check_calibration", "METHODS", "min_samples_for"]

METHODS = ("fpr", "max")
DEFAULT_PERCENTILES = (90.0, 95.0, 99.0, 99.9)


def _finite_array(scores: Tensor | np.ndarray | Sequence[float], what: str) -> np.ndarray:
    array = (scores.detach().cpu().double().numpy() if isinstance(scores, Tensor)
             else np.asarray(scores, dtype=np.float64)).reshape(-1)
    if array.size == 0:
        raise InputError(f"{what}: no scores given; pass held-out in-distribution scores")
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise InputError(
            f"{what}: {bad} of {array.size} scores are NaN or infinite; the score failed on those "
            "inputs, so it cannot be calibrated: check the inputs and the score's fit"
        )
    return array


@dataclass(frozen=True)
class ScoreSummary:
    """The distribution of a set of scores: size, min, quartiles, mean, max, chosen percentiles."""

    n: int
    min: float
    q1: float
    median: float
    q3: float
    mean: float
    max: float
    percentiles: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, float]]:
        """``(label, value)`` pairs in display order."""
        rows = [("min", self.min), ("q1 (25%)", self.q1), ("median", self.median),
                ("mean", self.mean), ("q3 (75%)", self.q3)]
        rows += [(f"p{k}", v) for k, v in self.percentiles.items()]
        return rows + [("max", self.max)]

    def __str__(self) -> str:
        return "\n".join(f"{label:>10}  {value:.6g}" for label, value in self.rows())


def summarize_scores(
    scores: Tensor | np.ndarray | Sequence[float], percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> ScoreSummary:
    """Summary of finite scores; percentiles in (0, 100) use linear interpolation."""
    array = _finite_array(scores, "summarize_scores")
    for p in percentiles:
        if not 0.0 < float(p) < 100.0:
            raise ConfigError(f"percentiles must lie in (0, 100), got {p}")
    q1, median, q3 = np.percentile(array, [25, 50, 75])
    return ScoreSummary(
        n=int(array.size),
        min=float(array.min()),
        q1=float(q1),
        median=float(median),
        q3=float(q3),
        mean=float(array.mean()),
        max=float(array.max()),
        percentiles={f"{float(p):g}": float(np.percentile(array, float(p))) for p in percentiles},
    )


@dataclass(frozen=True)
class Calibration:
    """A calibrated threshold and how it was chosen.

    Attributes:
        threshold: accept when ``score <= threshold``.
        method: ``"fpr"`` or ``"max"``.
        target_fpr: the requested false-positive rate (``None`` for ``max``).
        heldout_fpr: fraction of the held-out scores above the threshold.
        n: number of held-out scores.
        summary: their distribution.
    """

    threshold: float
    method: str
    target_fpr: float | None
    heldout_fpr: float
    n: int
    summary: ScoreSummary

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["summary"] = self.summary.to_dict()
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Calibration:
        try:
            summary = ScoreSummary(**record["summary"])
            return cls(
                threshold=float(record["threshold"]),
                method=str(record["method"]),
                target_fpr=None if record.get("target_fpr") is None else float(record["target_fpr"]),
                heldout_fpr=float(record["heldout_fpr"]),
                n=int(record["n"]),
                summary=summary,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise ConfigError(f"the calibration record is incomplete or malformed: {error}") from error


def min_samples_for(fpr: float) -> int:
    """Smallest held-out size for which a threshold at ``fpr`` is defined: ``ceil(1 / fpr)``."""
    return int(math.ceil(1.0 / fpr - 1e-9))


def check_calibration(fpr: float | None, method: str, n: int | None = None) -> float | None:
    """Check a calibration rule before any scoring: a known ``method``, for ``fpr`` a rate in
    (0, 1) and (given ``n`` held-out samples) at least ``min_samples_for(fpr)`` of them.
    Returns the target rate (``None`` for ``max``)."""
    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}: use one of {', '.join(METHODS)}")
    if method == "max":
        return None
    if fpr is None or not 0.0 < float(fpr) < 1.0:
        raise ConfigError(f"fpr must lie in (0, 1) for method 'fpr', got {fpr}")
    target = float(fpr)
    need = min_samples_for(target)
    if n is not None and n < need:
        raise InputError(
            f"too few held-out samples for a {100 * target:g}% false-positive rate: got {n}, "
            f"need at least {need} (= 1 / rate); use more held-out data, a larger rate, "
            "or method='max'"
        )
    return target


def calibrate_threshold(
    scores: Tensor | np.ndarray | Sequence[float],
    *,
    fpr: float | None = 0.05,
    method: str = "fpr",
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> Calibration:
    """Choose a threshold from held-out in-distribution ``scores`` (see the module docstring).

    Raises ``InputError`` for NaN/infinite scores or too few samples for the rate, and
    ``ConfigError`` for an unknown method or a rate outside (0, 1).
    """
    check_calibration(fpr, method)
    array = _finite_array(scores, "calibrate")
    n = int(array.size)
    target = check_calibration(fpr, method, n)
    summary = summarize_scores(array, percentiles)
    ordered = np.sort(array)
    if target is None:
        threshold = float(ordered[-1])
    else:
        k = int(math.ceil((n + 1) * (1.0 - target) - 1e-9))
        threshold = float(ordered[min(max(k, 1), n) - 1])
    heldout = float((array > threshold).mean())
    tied = int((array == threshold).sum())
    if target is not None and tied > 1 and heldout < 0.5 * target:
        warnings.warn(
            f"{tied} of {n} held-out scores tie at the threshold {threshold:.6g}, so only "
            f"{100 * heldout:.2f}% of them are refused (target {100 * target:g}%): the score is too "
            "coarse at this rate; choose another score or a larger rate",
            RuntimeWarning,
            stacklevel=2,
        )
    return Calibration(threshold, method, target, heldout, n, summary)


def calibration_split(test: Dataset, calibration_n: int, seed: int) -> tuple[Dataset, Dataset]:
    """A seeded split of held-out data into (calibration, evaluation) sets of ``calibration_n``
    and ``len(test) - calibration_n`` images; ``guard fit`` and ``guard evaluate`` share it."""
    if not 0 < calibration_n < len(test):
        raise ConfigError(
            f"--calibration-n must lie in [1, {len(test) - 1}] (the test part has {len(test)} images)"
        )
    order = torch.randperm(len(test), generator=make_generator(seed + 7919))
    return (test.subset(order[:calibration_n], f"{test.name}:calibration"),
            test.subset(order[calibration_n:], f"{test.name}:evaluation"))
