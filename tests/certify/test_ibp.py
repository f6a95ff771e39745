"""Interval bound propagation: bounds contain the outputs of points in the ball (property test),
exact on one linear layer, certified samples survive PGD, clear errors for unsupported layers."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hardened.attacks import PGD
from hardened.certify import certify_ibp, interval_bounds, margin_lower_bounds
from hardened.errors import ConfigError
from hardened.models import Normalize
from helpers import blob_data, tiny_mlp


def random_net(seed: int, kind: int) -> nn.Sequential:
    torch.manual_seed(seed)
    if kind == 0:
        return nn.Sequential(
            Normalize([0.3, 0.5], [0.2, 0.4]), nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3),
        ).eval()
    if kind == 1:
        return nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2),
            nn.Sequential(nn.Flatten(), nn.Linear(27, 5), nn.ReLU()), nn.Dropout(), nn.Linear(5, 3),
        ).eval()
    return nn.Sequential(
        Normalize([0.5, 0.5], [0.5, 0.25]), nn.Flatten(), nn.Linear(72, 6), nn.LeakyReLU(0.1),
        nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3), nn.Sigmoid(),
    ).eval()


def points_in_ball(x: torch.Tensor, eps: float, norm: str, count: int, g: torch.Generator) -> torch.Tensor:
    """Random points of the ball ∩ [0, 1]: uniform, box corners (linf), sphere points (l2)."""
    if norm == "linf":
        delta = (torch.rand((count, *x.shape[1:]), generator=g, dtype=torch.float64) * 2 - 1) * eps
        delta[: count // 2] = delta[: count // 2].sign() * eps
    else:
        direction = torch.randn((count, *x.shape[1:]), generator=g, dtype=torch.float64)
        direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        scale = torch.rand(count, generator=g, dtype=torch.float64).view(-1, 1, 1, 1)
        scale[: count // 2] = 1.0
        delta = direction * eps * scale
    return (x + delta).clamp(0, 1)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    kind=st.integers(0, 2),
    eps=st.floats(0.0, 0.3),
    norm=st.sampled_from(["linf", "l2"]),
)
def test_bounds_contain_outputs_of_points_in_the_ball(seed: int, kind: int, eps: float, norm: str) -> None:
    model = random_net(seed, kind)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 2, 6, 6, generator=g, dtype=torch.float64)
    bounds = interval_bounds(model, x.float(), eps, norm)
    exact = copy.deepcopy(model).double()
    points = points_in_ball(x.float().double(), eps, norm, 64, g)
    with torch.no_grad():
        outputs = exact(points)
    assert bool((outputs >= bounds.lower - 1e-9).all()) and bool((outputs <= bounds.upper + 1e-9).all())
    target = torch.tensor([seed % 3])
    margins = margin_lower_bounds(model, x.float(), target, eps, norm)
    actual = outputs[:, target] - outputs
    others = torch.arange(3) != target
    assert bool((actual[:, others] >= margins[:, others] - 1e-9).all())


def test_one_linear_layer_is_exact() -> None:
    layer = nn.Linear(4, 2)
    model = nn.Sequential(nn.Flatten(), layer).eval()
    x = torch.full((1, 1, 2, 2), 0.5)
    eps = 0.1
    bounds = interval_bounds(model, x, eps, "linf")
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    centre = w @ x.double().flatten() + b
    assert torch.allclose(bounds.lower[0], centre - eps * w.abs().sum(1))
    assert torch.allclose(bounds.upper[0], centre + eps * w.abs().sum(1))
    l2 = interval_bounds(model, x, eps, "l2")
    assert torch.allclose(l2.upper[0], centre + eps * w.norm(dim=1))
    # elision: the margin bound of a linear model is exact, (w0 - w1)·x + b0 - b1 - eps ||w0 - w1||_1
    margin = margin_lower_bounds(model, x, torch.tensor([0]), eps, "linf")[0, 1]
    diff = w[0] - w[1]
    assert float(margin) == pytest.approx(float(diff @ x.double().flatten() + b[0] - b[1] - eps * diff.abs().sum()))
    # the pixel box clips the input set: at x = 0 only upward moves are possible
    low = interval_bounds(model, torch.zeros(1, 1, 2, 2), eps, "linf")
    assert torch.allclose(low.upper[0] - low.lower[0], eps * w.abs().sum(1))


def test_certified_samples_survive_pgd() -> None:
    data = blob_data(n=30, size=8, classes=3)
    model = tiny_mlp(size=8, classes=3)
    for _ in range(60):  # plain gradient descent (torch.optim would import far more than it runs)
        loss = nn.functional.cross_entropy(model(data.x), data.y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for parameter, grad in zip(model.parameters(), grads, strict=True):
                parameter -= 0.5 * grad
    model.eval()
    eps = 0.01
    result = certify_ibp(model, data.x, data.y, eps=eps)
    assert 0 < int(result.certified.sum()), "the trained toy model should certify some samples"
    assert result.clean_accuracy == 1.0
    x, y = data.x[result.certified], data.y[result.certified]
    attack = PGD(eps=eps, steps=20, loss="margin", early_stop=False, seed=0)
    assert attack(model, x, y).robust_accuracy == 1.0
    assert result.to_dict()["certified"] == int(result.certified.sum())
    # larger balls certify no more than smaller ones
    assert int(certify_ibp(model, data.x, data.y, eps=0.1).certified.sum()) <= int(result.certified.sum())


def test_unsupported_layers_named() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.GELU(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"'2' \(GELU\)"):
        certify_ibp(model, torch.rand(1, 1, 4, 4), eps=0.1)

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc(x)

    with pytest.raises(ConfigError, match=r"'1' \(Residual\)"):
        interval_bounds(nn.Sequential(nn.Flatten(), Residual(), nn.Linear(16, 2)), torch.rand(1, 1, 4, 4), 0.1)

    class Reversed(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -super().forward(x)

    with pytest.raises(ConfigError, match="does not reproduce"):
        certify_ibp(Reversed(nn.Flatten(), nn.Linear(16, 2)), torch.rand(2, 1, 4, 4), eps=0.1)
    with pytest.raises(ConfigError, match="L2 interval bounds"):
        interval_bounds(nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(16, 2)), torch.rand(1, 1, 4, 4), 0.1, "l2")
    with pytest.raises(ConfigError, match="norm"):
        interval_bounds(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), torch.rand(1, 1, 4, 4), 0.1, "l1")
    with pytest.raises(ConfigError, match="eps"):
        certify_ibp(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), torch.rand(1, 1, 4, 4), eps=-0.1)


def test_model_untouched() -> None:
    model = random_net(0, 1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    certify_ibp(model, torch.rand(3, 2, 6, 6), eps=0.05)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    empty = certify_ibp(model, torch.zeros(0, 2, 6, 6), eps=0.05)
    assert empty.certified.numel() == 0
