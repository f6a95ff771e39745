"""Binomial statistics for certificates: Clopper-Pearson bounds and the two-sided binomial test.

All computations defer to ``scipy.stats`` (beta quantiles, ``binomtest``); nothing is re-derived.
``scipy.stats`` is imported on first use: it is slow to import and ``import hardened`` stays fast.
"""

from __future__ import annotations

import math
from types import ModuleType

from hardened.errors import ConfigError


def _stats() -> ModuleType:
    from scipy import stats

    return stats

__all__ = [
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "binomial_test",
    "min_samples_to_certify",
    "min_samples_to_predict",
    "check_alpha",
    "normal_ppf",
]


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as a float, or raise ``ConfigError`` unless ``0 < alpha < 1``."""
    if not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0 or math.isnan(alpha):
        raise ConfigError(
            f"alpha must lie strictly between 0 and 1 (the allowed failure probability, "
            f"e.g. 0.001), got {alpha!r}"
        )
    return float(alpha)


def _check_counts(k: int, n: int) -> None:
    if n < 1 or k < 0 or k > n:
        raise ConfigError(f"need 0 <= k <= n and n >= 1 for a binomial bound, got k={k}, n={n}")


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n trials.

    ``P(p >= bound) >= 1 - alpha``; the bound is ``Beta.ppf(alpha; k, n - k + 1)`` and 0 for k = 0
    (Clopper and Pearson 1934; used by Cohen et al. 2019 for pA).
    """
    _check_counts(k, n)
    check_alpha(alpha)
    if k == 0:
        return 0.0
    return float(_stats().beta.ppf(alpha, k, n - k + 1))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound: ``Beta.ppf(1 - alpha; k + 1, n - k)``."""
    _check_counts(k, n)
    check_alpha(alpha)
    if k == n:
        return 1.0
    return float(_stats().beta.ppf(1.0 - alpha, k + 1, n - k))


def binomial_test(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test p-value of k successes in n trials under ``p``."""
    _check_counts(k, n)
    return float(_stats().binomtest(int(k), int(n), p, alternative="two-sided").pvalue)


def normal_ppf(p: float) -> float:
    """The standard normal quantile Phi^-1(p)."""
    return float(_stats().norm.ppf(p))


def min_samples_to_certify(alpha: float) -> int:
    """Smallest n for which ``certify`` can ever certify: all n samples agreeing must give
    ``clopper_pearson_lower(n, n, alpha) = alpha ** (1 / n) > 1/2``, i.e. ``n > log2(1 / alpha)``."""
    alpha = check_alpha(alpha)
    n = max(1, math.floor(math.log2(1.0 / alpha)))
    while alpha ** (1.0 / n) <= 0.5:
        n += 1
    while n > 1 and alpha ** (1.0 / (n - 1)) > 0.5:
        n -= 1
    return n


def min_samples_to_predict(alpha: float) -> int:
    """Smallest n for which ``predict`` can ever answer: the two-sided binomial test of n
    agreeing samples has p-value ``2 * 0.5 ** n``, which must be ``<= alpha``."""
    alpha = check_alpha(alpha)
    n = max(1, math.ceil(math.log2(2.0 / alpha)))
    while n > 1 and 2.0 * 0.5 ** (n - 1) <= alpha:
        n -= 1
    while 2.0 * 0.5**n > alpha:
        n += 1
    return n
