"""The rule engine: conservation, zero-weight paths, errors, context managers, BatchNorm folding."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hardened.errors import ConfigError, InputError
from hardened.explain import (
    COMPOSITES,
    AlphaBeta,
    BatchNormFolding,
    Composite,
    Epsilon,
    Gamma,
    ZBox,
    ZPlus,
    conservation_error,
    explain_images,
    make_composite,
)
from hardened.models import build_model
from hardened.models.normalize import Normalize


def bias_free_net(seed: int, conv: bool) -> nn.Module:
    torch.manual_seed(seed)
    if conv:
        layers = [
            Normalize([0.3], [0.7]),
            nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(4 * 2 * 2, 5, bias=False),
        ]
    else:
        layers = [nn.Flatten(), nn.Linear(64, 12, bias=False), nn.ReLU(), nn.Dropout(0.5),
                  nn.Linear(12, 5, bias=False)]
    return nn.Sequential(*layers).double().eval()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), conv=st.booleans())
def test_conservation_epsilon_to_zero_without_biases(seed: int, conv: bool) -> None:
    model = bias_free_net(seed, conv)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    attribution = explain_images(model, x, composite=make_composite("epsilon", epsilon=1e-12))
    assert float(conservation_error(attribution).max()) < 1e-4


def test_conservation_error_reports_bias_absorption() -> None:
    model = build_model("lenet", channels=(4, 8), hidden=16).double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    error = conservation_error(explain_images(model, x, composite="epsilon"))
    assert error.shape == (2,) and bool((error >= 0).all())
    for module in model.modules():
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    tiny = make_composite("epsilon", epsilon=1e-12)
    assert float(conservation_error(explain_images(model, x, composite=tiny)).max()) < 1e-4


@pytest.mark.parametrize("rule", [Epsilon(1e-6), Gamma(0.25), AlphaBeta(2, 1), AlphaBeta(1, 0), ZPlus(), ZBox(0.0, 1.0)], ids=repr)
def test_zero_weight_path_gets_zero_relevance(rule) -> None:
    """Input 0 reaches only hidden unit 0, whose weight to every output is zero."""
    l1, l2 = nn.Linear(4, 3), nn.Linear(3, 2)
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[1.5, 0.5, -0.2, 0.1], [0, 0.3, 0.4, -0.2], [0, 0.2, 0.1, 0.6]]))
        l1.bias.fill_(0.1)
        l2.weight.copy_(torch.tensor([[0, 1.0, -1.0], [0, 0.7, 0.5]]))
        l2.bias.fill_(0.05)
    model = nn.Sequential(nn.Flatten(), l1, nn.ReLU(), l2).double().eval()
    x = 0.1 + 0.9 * torch.rand(5, 1, 1, 4, dtype=torch.float64)
    relevance = explain_images(model, x, 1, composite=Composite("t", [(nn.Linear, rule)])).relevance
    assert bool((relevance[..., 0] == 0).all())
    assert bool((relevance[..., 1:] != 0).any())


def test_unsupported_layer_names_layer_and_serving_rules() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    with pytest.raises(ConfigError, match=r"layer '2' \(Tanh\)"):
        explain_images(model, torch.rand(1, 1, 4, 4))
    pooled = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 2)).eval()
    composite = Composite("bad", [(nn.AvgPool2d, Gamma()), (nn.Linear, Epsilon())])
    with pytest.raises(ConfigError, match=r"Gamma cannot handle layer '0' \(AvgPool2d\).*Epsilon"):
        explain_images(pooled, torch.rand(1, 1, 4, 4), composite=composite)


def test_a_batchnorm_with_no_layer_before_it_takes_the_epsilon_rule() -> None:
    """Unfoldable (as a WideResNet's pre-activation BatchNorm): Epsilon, as an element-wise
    affine layer; before the first layer, ZBox's bounds cannot pass it and the message says so."""
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(1)
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 2 * 2, 2)

        def forward(self, x):
            return self.fc(self.conv(self.bn(x)).flatten(1))

    model = Odd().eval()
    rules = make_composite("epsilon").assign(model)
    assert isinstance(rules["bn"], Epsilon)
    attribution = explain_images(model, torch.rand(2, 1, 4, 4), composite="epsilon")
    assert torch.isfinite(attribution.relevance).all()
    with pytest.raises(ConfigError, match=r"ZBox: cannot map the pixel bounds through layer 'bn' \(BatchNorm2d\)"):
        explain_images(model, torch.rand(1, 1, 4, 4))


def test_targets_out_of_range_and_unknown_names() -> None:
    model = bias_free_net(0, conv=False)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(InputError, match="targets"):
        explain_images(model, x, torch.tensor([0, 5]))
    with pytest.raises(ConfigError, match="unknown composite"):
        explain_images(model, x, composite="nope")
    with pytest.raises(ConfigError, match="unknown explanation method"):
        explain_images(model, x, method="nope")
    with pytest.raises(ConfigError, match="alpha - beta = 1"):
        AlphaBeta(3.0, 1.0)


def test_non_finite_relevance_is_reported() -> None:
    model = bias_free_net(0, conv=False)
    x = torch.zeros(2, 1, 8, 8, dtype=torch.float64)  # z = 0 everywhere: 0 / 0 with eps = 0
    composite = Composite("eps0", [(nn.Linear, Epsilon(0.0))])
    with pytest.raises(ConfigError, match="not finite"):
        explain_images(model, x, 0, composite=composite)
    raw = explain_images(model, x, 0, composite=composite, allow_nonfinite=True)
    assert not bool(torch.isfinite(raw.relevance).all())


def bn_net() -> nn.Module:
    torch.manual_seed(5)
    model = nn.Sequential(
        Normalize([0.5], [0.25]),
        nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Flatten(), nn.Linear(3 * 6 * 6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3),
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model.double().eval()


def test_batchnorm_folding_is_equivalent_and_undone() -> None:
    model = bn_net()
    x = torch.rand(4, 1, 6, 6, dtype=torch.float64)
    before = model(x).detach()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with BatchNormFolding().apply(model) as identities:
        assert len(identities) == 2
        torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-10)
        assert model[1].bias is not None
    assert model[1].bias is None
    assert torch.equal(model(x), before)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("name", COMPOSITES.names())
def test_model_output_identical_after_every_composite(name: str) -> None:
    for model in (bn_net(), build_model("lenet", channels=(4, 8), hidden=16).double().eval()):
        shape = (4, 1, 6, 6) if isinstance(model[2], nn.BatchNorm2d) else (4, 1, 28, 28)
        x = torch.rand(*shape, dtype=torch.float64)
        before = model(x).detach()
        hooks = [len(m._forward_hooks) for m in model.modules()]
        model.train()
        attribution = explain_images(model, x, composite=name)
        assert model.training  # mode restored
        model.eval()
        assert torch.equal(model(x), before)
        assert [len(m._forward_hooks) for m in model.modules()] == hooks
        assert attribution.relevance.shape == x.shape


def test_context_undone_when_an_error_is_raised() -> None:
    model = bn_net()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    before = model(x).detach()
    composite = make_composite("epsilon-gamma-box")
    with pytest.raises(RuntimeError, match="boom"):
        with composite.context(model):
            raise RuntimeError("boom")
    assert torch.equal(model(x), before)
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_zbox_bounds_mapped_through_normalize() -> None:
    """The first-layer rule of epsilon-gamma-box gets the pixel box mapped through Normalize."""
    model = build_model("lenet", channels=(4, 8), hidden=16, mean=[0.2], std=[0.5]).double().eval()
    rules = make_composite("epsilon-gamma-box").assign(model)
    first = rules["1"]
    assert isinstance(first, ZBox)
    assert first.low == pytest.approx((0 - 0.2) / 0.5) and first.high == pytest.approx((1 - 0.2) / 0.5)
    mlp = build_model("mlp", hidden=(8,), mean=[0.1], std=[0.3])
    assert isinstance(make_composite("epsilon-gamma-box").assign(mlp)["2"], ZBox)
    x = torch.rand(2, 1, 28, 28)
    assert explain_images(mlp, x).relevance.shape == x.shape


def test_lrp_on_reference_models_and_empty_batch() -> None:
    model = build_model("lenet", channels=(4, 8), hidden=16).eval()
    x = torch.rand(3, 1, 28, 28)
    attribution = explain_images(model, x)
    assert attribution.relevance.dtype == torch.float32
    assert torch.equal(attribution.target, attribution.prediction)
    summary = attribution.to_dict()
    assert summary["method"] == "lrp" and summary["n"] == 3
    empty = explain_images(model, x[:0])
    assert empty.relevance.shape == (0, 1, 28, 28)


def test_epsilon_composite_agrees_with_captum_lrp() -> None:
    """Captum's LRP (epsilon rules everywhere) and ours on the same lenet-like model."""
    captum_attr = pytest.importorskip("captum.attr")
    from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule

    class FlatLinear(nn.Linear):  # Captum cannot propagate through nn.Flatten
        def forward(self, x):
            return super().forward(x.flatten(1))

    torch.manual_seed(7)
    model = build_model("lenet", channels=(3, 4), hidden=8, mean=[0.3], std=[0.6]).eval()
    layers = list(model)
    flat = FlatLinear(layers[8].in_features, layers[8].out_features)
    flat.load_state_dict(layers[8].state_dict())
    flat.rule = EpsilonRule()
    norm = Normalize([0.3], [0.6])
    norm.rule = IdentityRule()
    twin = nn.Sequential(norm, *layers[1:7], flat, *layers[9:]).eval()
    x = torch.rand(3, 1, 28, 28)
    target = model(x).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns that it set requires_grad itself
        theirs = captum_attr.LRP(twin).attribute(x.clone(), target=target).detach()
    ours = explain_images(model, x, target, composite=make_composite("epsilon", epsilon=1e-9)).relevance
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * float(ours.abs().max()))
