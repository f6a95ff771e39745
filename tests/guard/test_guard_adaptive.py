"""The adaptive attack keeps adversarial examples under the guard's threshold more often than PGD."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hardened.errors import ConfigError
from hardened.guard import GuardedClassifier, make_score
from hardened.guard.adaptive import GuardAwarePGD, attack_guard


@pytest.fixture(scope="module")
def maha_guard(digits_model, digits):
    score = make_score("mahalanobis", digits_model).fit(digits.train)
    guard = GuardedClassifier(digits_model, score)
    guard.calibrate(digits.test.x[:150], fpr=0.05)
    return guard


def test_adaptive_attack_evades_more_than_pgd(maha_guard, digits):
    x, y = digits.test.x[150:190], digits.test.y[150:190]
    report = attack_guard(maha_guard, x, y, eps=0.3, steps=15, seed=0)
    plain, adaptive = report.attacks
    assert plain.attack == "pgd" and adaptive.attack == "guard-pgd"
    assert adaptive.evasion_rate >= plain.evasion_rate
    assert adaptive.mean_score < plain.mean_score
    json.dumps(report.to_dict())


def test_adaptive_attack_respects_the_threat_model(maha_guard, digits):
    x, y = digits.test.x[150:160], digits.test.y[150:160]
    result = GuardAwarePGD(guard=maha_guard, eps=0.1, steps=5)(maha_guard.model, x, y)
    assert float((result.x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert 0.0 <= float(result.x_adv.min()) and float(result.x_adv.max()) <= 1.0
    assert result.attack == "guard-pgd" and result.params["score"] == "mahalanobis"
    json.dumps(result.to_dict())


def test_adaptive_attack_needs_a_calibrated_guard(digits_model, digits):
    score = make_score("softmax", digits_model).fit(digits.train)
    with pytest.raises(Exception, match="no threshold"):
        GuardAwarePGD(guard=GuardedClassifier(digits_model, score), eps=0.1)
    with pytest.raises(ConfigError, match="GuardedClassifier"):
        GuardAwarePGD(guard=score, eps=0.1)  # type: ignore[arg-type]
    assert torch.is_tensor(digits.test.x)


def test_guard_aware_attack_validates_like_the_others(digits_model, digits):
    guard = GuardedClassifier(digits_model, make_score("softmax", digits_model).fit(digits.train))
    guard.calibrate(digits.test.x[:60], fpr=0.1)
    for options, match in [({"steps": 1.5}, "steps must be an integer"), ({"eps": "0.1"}, "eps must be a real"),
                           ({"score_weight": -1.0}, "score_weight"), ({"random_start": "yes"}, "random_start"),
                           ({"margin": math.nan}, "margin")]:
        with pytest.raises(ConfigError, match=match):
            GuardAwarePGD(guard=guard, **({"eps": 0.1} | options))
