"""Transformation sets and spatial attacks: known transforms (identity, integer shifts, 90°),
float64 gradcheck, grid search equals brute force, the known worst angle, parameters stay in
the set, worst-of-k and first-order attacks never do worse than their start, bad options."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hardened.attacks import SpatialGrid, SpatialPGD, SpatialRandom, make_attack
from hardened.attacks.base import Oracle
from hardened.attacks.losses import attack_loss
from hardened.errors import ConfigError
from hardened.threat import TransformSet
from helpers import blob_data, tiny_cnn


def _params(n: int, angle: float = 0.0, dx: float = 0.0, dy: float = 0.0, scale: float = 1.0, light: float = 0.0) -> Tensor:
    return torch.tensor([[angle, dx, dy, scale, light]] * n, dtype=torch.float64)


def test_identity_shifts_and_quarter_turns_are_exact() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 7, 7, generator=g, dtype=torch.float64)
    tset = TransformSet(rotation=90.0, translation=3.0, brightness=0.5)
    torch.testing.assert_close(tset.apply(x, _params(2)), x)
    shifted = torch.zeros_like(x)
    shifted[..., 1:, 2:] = x[..., :-1, :-2]  # right by 2, down by 1, zeros coming in
    torch.testing.assert_close(tset.apply(x, _params(2, dx=2.0, dy=1.0)), shifted)
    torch.testing.assert_close(tset.apply(x, _params(2, angle=90.0)), torch.rot90(x, 1, dims=(2, 3)), atol=1e-12, rtol=0)
    torch.testing.assert_close(tset.apply(x, _params(2, light=0.25)), (x + 0.25).clamp(0, 1))


def test_apply_is_differentiable_in_the_parameters_float64() -> None:
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tset = TransformSet(bounds=(-10.0, 10.0))  # no clipping in the box
    params = _params(2, angle=7.0, dx=0.3, dy=-0.45, scale=1.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: tset.apply(x, p), (params,))


def _brute_force(model: nn.Module, x: Tensor, y: Tensor, grid: Tensor, tset: TransformSet) -> Tensor:
    """The highest margin loss of each image over the grid, one grid point at a time."""
    losses = []
    with torch.no_grad():
        for point in grid:
            logits = model(tset.apply(x, point.expand(x.shape[0], 5)))
            losses.append(attack_loss("margin", logits, y, False))
    return torch.stack(losses, dim=1).amax(dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grid_search_is_the_brute_force_worst_case(seed: int) -> None:
    model, data = tiny_cnn(seed=seed), blob_data(n=10, seed=seed)
    attack = SpatialGrid(rotation=30.0, translation=2.0, scale=(0.9, 1.1), points=5)
    params = attack.worst_transforms(model, data.x, data.y)
    with torch.no_grad():
        chosen = attack_loss("margin", model(attack.transforms.apply(data.x, params)), data.y, False)
    expected = _brute_force(model, data.x, data.y, attack.transforms.grid(5, data.x), attack.transforms)
    torch.testing.assert_close(chosen, expected)
    result = attack(model, data.x, data.y)
    assert torch.equal(result.success, expected > 0), "adversarial exactly when some grid point is"


class _FailsAtOneAngle(nn.Module):
    """A single bright pixel two to the right of the centre of a 9×9 image; the model says
    class 1 exactly when that pixel has been rotated to two above the centre (+90°)."""

    def forward(self, x: Tensor) -> Tensor:
        value = x[:, 0, 2, 4]
        return torch.stack([torch.full_like(value, 0.5), value], dim=1)


def test_grid_search_finds_the_known_worst_angle() -> None:
    x = torch.zeros(3, 1, 9, 9)
    x[:, 0, 4, 6] = 1.0
    attack = SpatialGrid(rotation=180.0, translation=0.0, points=9)  # every 45°
    params = attack.worst_transforms(_FailsAtOneAngle(), x, torch.zeros(3, dtype=torch.long))
    assert torch.equal(params[:, 0], torch.full((3,), 90.0))
    assert bool(attack(_FailsAtOneAngle(), x, torch.zeros(3, dtype=torch.long)).success.all())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", ["spatial-grid", "spatial-random", "spatial-pgd"])
def test_spatial_attacks_stay_in_the_set(name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rotation, translation = float(torch.rand(1, generator=g)) * 40, float(torch.rand(1, generator=g)) * 3
    options = {"rotation": rotation, "translation": translation, "scale": (0.8, 1.2), "brightness": 0.1}
    attack = make_attack(name, **options, **({"seed": seed} if name != "spatial-grid" else {}))
    model, data = tiny_cnn(seed=seed), blob_data(n=6, seed=seed)
    params = attack.worst_transforms(model, data.x, data.y)
    assert bool(attack.transforms.contains(params).all())
    assert float(params[:, 0].abs().max()) <= rotation + 1e-6 and float(params[:, 1:3].abs().max()) <= translation + 1e-6


def _loss_at(model: nn.Module, x: Tensor, y: Tensor, tset: TransformSet, params: Tensor) -> Tensor:
    with torch.no_grad():
        return attack_loss("margin", model(tset.apply(x, params)), y, False)


def test_worst_of_k_is_the_worst_of_its_draws() -> None:
    model, data = tiny_cnn(), blob_data(n=6, seed=3)
    one = SpatialRandom(k=1, seed=7)
    many = SpatialRandom(k=20, seed=7)
    first = _loss_at(model, data.x, data.y, one.transforms, one.worst_transforms(model, data.x, data.y))
    worst = _loss_at(model, data.x, data.y, many.transforms, many.worst_transforms(model, data.x, data.y))
    assert bool((worst >= first - 1e-6).all()), "the first of 20 draws equals the k=1 draw"


def test_first_order_attack_is_never_better_for_the_model_than_its_start() -> None:
    model, data = tiny_cnn(), blob_data(n=8, seed=4)
    attack = SpatialPGD(steps=10, random_start=False)
    params = attack.worst_transforms(model, data.x, data.y)
    clean = _loss_at(model, data.x, data.y, attack.transforms, attack.transforms.identity(8, data.x))
    assert bool((_loss_at(model, data.x, data.y, attack.transforms, params) >= clean - 1e-6).all())
    oracle = Oracle(model, 3, 8)
    attack._search(oracle, data.x, data.y, None)
    assert oracle.gradient_count == 8 * 11


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: TransformSet(rotation=200.0), "rotation"),
        (lambda: TransformSet(scale_range=(1.1, 1.5)), "scale_range"),
        (lambda: TransformSet(translation=-1.0), "translation"),
        (lambda: SpatialGrid(points=0), "points"),
        (lambda: SpatialRandom(k=1.5), "k"),
        (lambda: SpatialPGD(loss="dlr"), "loss"),
    ],
)
def test_bad_options_are_config_errors(build, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()
