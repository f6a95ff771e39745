"""Calibration: the conformal threshold's false-positive rate, the max rule, summaries, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from hardened.errors import ConfigError, InputError
from hardened.guard import calibrate_threshold, summarize_scores
from hardened.guard.calibrate import Calibration, min_samples_for


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("seed", [0, 1])
def test_threshold_hits_target_fpr_on_fresh_data(fpr, seed):
    """Held-out n=2000, fresh m=20000 from the same law. The fresh FPR has mean <= fpr and
    spread from the threshold's quantile (Beta, var ~ fpr(1-fpr)/n) plus binomial noise (/m):
    a 4.5-sigma band fails with probability below 1e-5 per case."""
    g = np.random.default_rng(seed)
    n, m = 2000, 20000
    record = calibrate_threshold(g.standard_normal(n), fpr=fpr)
    fresh = float((g.standard_normal(m) > record.threshold).mean())
    sigma = math.sqrt(fpr * (1 - fpr) * (1 / n + 1 / m))
    assert abs(fresh - fpr) < 4.5 * sigma, (fresh, fpr)
    assert record.heldout_fpr <= fpr


def test_conformal_rank_is_exact():
    scores = torch.arange(1, 101, dtype=torch.float32)  # 1..100
    # k = ceil(101 * 0.95) = 96 -> the 96th smallest
    assert calibrate_threshold(scores, fpr=0.05).threshold == 96.0
    assert calibrate_threshold(scores, fpr=0.05).heldout_fpr == pytest.approx(0.04)
    with pytest.raises(InputError, match="need at least 20"):
        calibrate_threshold(scores[:19], fpr=0.05)
    record = calibrate_threshold(scores[:20], fpr=0.05)
    assert record.threshold == 20.0 and record.n == 20


def test_max_rule_accepts_every_heldout_score():
    scores = torch.randn(50, generator=torch.Generator().manual_seed(0))
    record = calibrate_threshold(scores, method="max")
    assert record.threshold == float(scores.max()) and record.heldout_fpr == 0.0
    assert record.target_fpr is None


def test_too_few_samples_for_the_rate():
    with pytest.raises(InputError, match="need at least 100"):
        calibrate_threshold(np.random.default_rng(0).random(50), fpr=0.01)
    assert min_samples_for(0.01) == 100 and min_samples_for(0.05) == 20


def test_bad_scores_and_settings():
    with pytest.raises(InputError, match="NaN or infinite"):
        calibrate_threshold([0.1, float("nan")] * 50, fpr=0.05)
    with pytest.raises(InputError, match="no scores"):
        calibrate_threshold([], fpr=0.05)
    with pytest.raises(ConfigError, match="fpr must lie in"):
        calibrate_threshold([0.1] * 100, fpr=1.5)
    with pytest.raises(ConfigError, match="unknown calibration method"):
        calibrate_threshold([0.1] * 100, method="median")


def test_summary_matches_numpy():
    values = np.random.default_rng(3).exponential(size=501)
    summary = summarize_scores(values, percentiles=(90, 99))
    assert summary.n == 501
    assert summary.min == values.min() and summary.max == values.max()
    assert summary.median == pytest.approx(np.median(values))
    assert summary.q1 == pytest.approx(np.percentile(values, 25))
    assert summary.mean == pytest.approx(values.mean())
    assert summary.percentiles["99"] == pytest.approx(np.percentile(values, 99))
    labels = [label for label, _ in summary.rows()]
    assert labels[0] == "min" and labels[-1] == "max" and "p90" in labels
    assert "median" in str(summary)


def test_calibration_record_round_trip():
    record = calibrate_threshold(np.arange(200.0), fpr=0.1)
    assert Calibration.from_dict(record.to_dict()) == record
    with pytest.raises(ConfigError, match="malformed"):
        Calibration.from_dict({"threshold": 1.0})


def test_tied_scores_that_miss_the_rate_warn():
    scores = np.r_[np.zeros(900), np.ones(100)]  # 10% tie at the top
    with pytest.warns(RuntimeWarning, match="100 of 1000 held-out scores tie"):
        cal = calibrate_threshold(scores, fpr=0.05)
    assert cal.threshold == 1.0 and cal.heldout_fpr == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate_threshold(np.arange(1000.0), fpr=0.05)  # continuous scores: no warning
