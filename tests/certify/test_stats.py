"""Statistics: Clopper-Pearson bounds against their closed forms, minimal sample counts."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from hardened.certify.stats import (
    binomial_test,
    clopper_pearson_lower,
    clopper_pearson_upper,
    min_samples_to_certify,
    min_samples_to_predict,
)
from hardened.errors import ConfigError


@pytest.mark.parametrize("n", [1, 10, 100, 1000])
def test_all_successes_closed_form(n: int) -> None:
    # P(K = n | p) = p**n = alpha  =>  lower bound alpha**(1/n)
    assert clopper_pearson_lower(n, n, 0.001) == pytest.approx(0.001 ** (1 / n), rel=1e-9)
    assert clopper_pearson_lower(0, n, 0.01) == 0.0
    assert clopper_pearson_upper(0, n, 0.001) == pytest.approx(1 - 0.001 ** (1 / n), rel=1e-9)


@pytest.mark.parametrize(("k", "n"), [(3, 10), (50, 100), (990, 1000)])
def test_lower_bound_is_where_the_tail_equals_alpha(k: int, n: int) -> None:
    alpha = 0.05
    bound = clopper_pearson_lower(k, n, alpha)
    # the defining equation: P(K >= k | p = bound) = alpha
    assert stats.binom.sf(k - 1, n, bound) == pytest.approx(alpha, rel=1e-6)
    assert bound < k / n < clopper_pearson_upper(k, n, alpha)


def test_min_samples() -> None:
    for alpha in (0.5, 0.1, 0.01, 0.001, 2**-10, 1e-6):
        n = min_samples_to_certify(alpha)
        assert clopper_pearson_lower(n, n, alpha) > 0.5
        assert n == 1 or clopper_pearson_lower(n - 1, n - 1, alpha) <= 0.5
        m = min_samples_to_predict(alpha)
        assert binomial_test(m, m) <= alpha
        assert m == 1 or binomial_test(m - 1, m - 1) > alpha
    assert min_samples_to_certify(0.001) == 10
    assert min_samples_to_predict(0.001) == 11


def test_binomial_test_matches_scipy() -> None:
    assert binomial_test(60, 100) == pytest.approx(stats.binomtest(60, 100).pvalue)
    assert binomial_test(5, 5) == pytest.approx(2 * 0.5**5)


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, math.nan])
def test_bad_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        clopper_pearson_lower(1, 2, alpha)
