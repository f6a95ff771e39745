"""Randomized smoothing: soundness against a linear classifier with closed-form class
probabilities, known values, function == class, validation before sampling, model untouched."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from scipy import stats
from torch import Tensor, nn

from hardened.certify import SmoothedClassifier, certify, clopper_pearson_upper, predict
from hardened.errors import ConfigError, InputError

SIGMA = 0.25


def linear_model(w: Tensor, bias: float) -> nn.Module:
    """Two-class linear classifier on 1×2×2 images: logits (w·x + bias, 0).

    Under x + e, e ~ N(0, sigma² I): P(class 0) = Phi((w·x + bias) / (sigma ||w||)), and the
    smoothed classifier's exact certified L2 radius is |w·x + bias| / ||w|| (Cohen et al. 2019,
    the linear case)."""
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        layer.weight[0] = w
        layer.bias[0] = bias
    return nn.Sequential(nn.Flatten(), layer).eval()


W = torch.tensor([1.0, -0.5, 0.25, 0.75])
X = torch.full((1, 1, 2, 2), 0.5)


def margin_for(p_class0: float) -> float:
    """The bias giving P(class 0 under noise) = p_class0 at X."""
    return SIGMA * float(W.norm()) * float(stats.norm.ppf(p_class0)) - float(W @ X.flatten())


def true_radius(model: nn.Module, x: Tensor) -> float:
    layer = model[1]
    margin = float(layer.weight[0].detach() @ x.flatten() + layer.bias[0].detach())
    return abs(margin) / float(layer.weight[0].detach().norm())


class CountingModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x)


def test_wrong_certificate_rate_at_most_alpha() -> None:
    """(a) A certificate is wrong when its pA lower bound exceeds the true probability of its
    class (then its radius exceeds the true one, or its class is not g(x)). Over R seeded
    repetitions the wrong count is Binomial(R, q) with q <= alpha; we reject only if the count
    exceeds the 1 - 1e-6 quantile of Binomial(R, alpha) (false alarm rate 1e-6 for a sound
    implementation)."""
    alpha, repetitions = 0.05, 1000
    p_true = 0.8
    model = linear_model(W, margin_for(p_true))
    wrong = 0
    for seed in range(repetitions):
        cert = certify(model, X, SIGMA, n0=10, n=40, alpha=alpha, batch_size=64, seed=seed)
        if cert.abstained:
            continue
        p_class = p_true if cert.prediction == 0 else 1 - p_true
        wrong += cert.pa_lower > p_class
    limit = stats.binom.ppf(1 - 1e-6, repetitions, alpha)
    assert wrong <= limit, f"{wrong} wrong certificates in {repetitions} > {limit}"


@pytest.mark.parametrize("p_true", [0.3, 0.6, 0.9, 0.99, 0.9999])
def test_radius_never_above_closed_form(p_true: float) -> None:
    """(b) certified radius <= exact radius (probability >= 1 - alpha each; seeded), and not
    absurdly below it: the radius from the Clopper-Pearson upper bound reaches the exact one."""
    alpha, n = 0.001, 2000
    model = linear_model(W, margin_for(p_true))
    exact = true_radius(model, X)
    assert exact == pytest.approx(SIGMA * abs(stats.norm.ppf(p_true)), rel=1e-4)
    for seed in range(3):
        cert = certify(model, X, SIGMA, n0=20, n=n, alpha=alpha, batch_size=500, seed=seed)
        assert cert.radius <= exact + 1e-6
        top = 0 if p_true > 0.5 else 1
        if not cert.abstained:
            assert cert.prediction == top
        optimistic = SIGMA * stats.norm.ppf(clopper_pearson_upper(cert.counts[top], n, alpha))
        assert optimistic >= exact - 1e-6


def test_known_value_constant_model() -> None:
    """A model that always answers class 2: nA = n, pA = alpha**(1/n), radius sigma·Phi^-1(pA)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    cert = certify(model, X, 0.5, n0=5, n=100, alpha=0.01, batch_size=33, seed=0)
    assert cert.prediction == 2 and not cert.abstained
    assert cert.counts == (0, 0, 100) and cert.selection_counts == (0, 0, 5)
    assert cert.pa_lower == pytest.approx(0.01 ** (1 / 100))
    assert cert.radius == pytest.approx(0.5 * stats.norm.ppf(0.01 ** (1 / 100)))
    data = cert.to_dict()
    assert data["abstained"] is False and data["counts"] == [0, 0, 100]


def test_abstains_at_a_coin_flip() -> None:
    model = linear_model(W, margin_for(0.5))
    cert = certify(model, X, SIGMA, n0=10, n=500, alpha=0.001, batch_size=128, seed=1)
    assert cert.abstained and cert.prediction is None and cert.radius == 0.0
    assert cert.to_dict()["abstained"] is True
    assert sum(cert.counts) == 500
    pred = predict(model, X, SIGMA, n=500, alpha=0.001, batch_size=128, seed=1)
    assert pred.abstained and pred.p_value > 0.001
    sure = predict(linear_model(W, margin_for(0.95)), X, SIGMA, n=200, alpha=0.001, seed=1)
    assert sure.prediction == 0 and sure.p_value <= 0.001


def test_function_equals_class_and_reproducible() -> None:
    model = linear_model(W, margin_for(0.7))
    a = certify(model, X, SIGMA, n0=10, n=300, alpha=0.01, batch_size=64, seed=7)
    b = SmoothedClassifier(model, SIGMA, batch_size=64, seed=7).certify(X, n0=10, n=300, alpha=0.01)
    c = certify(model, X[0], SIGMA, n0=10, n=300, alpha=0.01, batch_size=64,
                generator=torch.Generator().manual_seed(7))
    for other in (b, c):
        assert {k: v for k, v in a.to_dict().items() if k != "seconds"} == \
            {k: v for k, v in other.to_dict().items() if k != "seconds"}
    p = predict(model, X, SIGMA, n=300, alpha=0.01, batch_size=64, seed=3)
    q = SmoothedClassifier(model, SIGMA, batch_size=64, seed=3).predict(X, n=300, alpha=0.01)
    assert p.counts == q.counts and p.prediction == q.prediction and p.p_value == q.p_value
    # a class instance keeps drawing from its generator: a second call sees new noise
    smoothed = SmoothedClassifier(model, SIGMA, batch_size=64, seed=7)
    first, second = smoothed.certify(X, 10, 300, 0.01), smoothed.certify(X, 10, 300, 0.01)
    assert first.counts != second.counts


def test_model_untouched_and_mode_restored() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = certify(model, X, SIGMA, n0=10, n=200, alpha=0.01, seed=0)
    second = certify(model, X, SIGMA, n0=10, n=200, alpha=0.01, seed=0)
    assert first.counts == second.counts  # dropout was off: eval mode during the call
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": math.nan}, "sigma"),
        ({"n0": 0}, "n0"),
        ({"n": 0}, "n"),
        ({"n": 2.5}, "n"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"n": 9, "alpha": 0.001}, "n >= 10"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings_fail_before_sampling(kwargs: dict[str, float], match: str) -> None:
    model = CountingModel(linear_model(W, 0.0))
    args = {"sigma": SIGMA, "n0": 10, "n": 100, "alpha": 0.01} | kwargs
    with pytest.raises(ConfigError, match=match):
        certify(model, X, **args)
    assert model.calls == 0


def test_predict_n_too_small() -> None:
    with pytest.raises(ConfigError, match="n >= 11"):
        predict(linear_model(W, 0.0), X, SIGMA, n=10, alpha=0.001)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        ([[0.5]], "torch.Tensor"),
        (torch.rand(4), "4 dimensions"),
        (torch.rand(2, 1, 2, 2), "one image"),
        (torch.zeros(0, 1, 2, 2), "empty"),
        (torch.full((1, 1, 2, 2), math.nan), "NaN"),
        (torch.full((1, 1, 2, 2), 3.0), "must lie in"),
        (torch.ones(1, 1, 2, 2, dtype=torch.uint8), "floating point"),
    ],
)
def test_bad_images(x: object, match: str) -> None:
    model = CountingModel(linear_model(W, 0.0))
    with pytest.raises(InputError, match=match):
        certify(model, x, SIGMA, n0=10, n=100, alpha=0.01)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=match):
        SmoothedClassifier(model, SIGMA).predict(x, n=100, alpha=0.01)  # type: ignore[arg-type]
    assert model.calls == 0


def test_seed_and_generator_together_rejected() -> None:
    with pytest.raises(ConfigError, match="not both"):
        certify(linear_model(W, 0.0), X, SIGMA, 10, 100, 0.01, seed=0, generator=torch.Generator())


@pytest.mark.parametrize("p_class0", [0.9, 0.999])
def test_a_torchscript_model_is_certified_like_its_module(p_class0: float) -> None:
    """TorchScript takes no forward hooks: the batch size is estimated without them, and the
    certificate (which does not depend on the batching) equals the module's."""
    from hardened.certify.smoothing import auto_batch_size

    model = linear_model(W, margin_for(p_class0))
    scripted = torch.jit.script(model)
    size = auto_batch_size(scripted, X, limit=500)
    assert 1 <= size <= 500
    expected = dataclasses.replace(certify(model, X, SIGMA, 100, 2_000, 0.001, seed=7), seconds=0.0)
    assert dataclasses.replace(certify(scripted, X, SIGMA, 100, 2_000, 0.001, seed=7), seconds=0.0) == expected
