"""The minimal-perturbation stage (FMN, replacing the bisection) and the spatial stage (grid search).

Minimal: on a linear two-class model the per-image minimal norms are the closed-form distances to
the decision plane (``|w . x + b| / ||w||_dual``), and the accuracy curve is exactly the share of
minimal norms above each eps. Spatial: the worst case over rotations and translations together is
at most either alone (the odd grid contains both), equals a direct ``spatial-grid`` attack, and a
model built to fail at one rotation is broken by the rotation grid exactly where it should be.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor, nn

from hardened.attacks import SpatialGrid
from hardened.audit import run_audit
from hardened.audit.stages.minimal import MinimalStage
from hardened.audit.stages.robustness import RobustnessStage
from hardened.audit.stages.spatial import SpatialStage
from hardened.data import Dataset, Splits
from helpers import TINY_BUDGET, tiny_audit_splits


def _linear_splits(seed: int = 0) -> tuple[nn.Module, Splits, Tensor, float]:
    """A 2-class linear model on 4×4 images near 0.5 (far from the box) and its plane."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, generator=g)
    b = -float(w.sum()) * 0.5
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([-w, w]) / 2)
        model[1].bias.copy_(torch.tensor([-b, b]) / 2)
    x = (0.5 + 0.04 * torch.randn(24, 1, 4, 4, generator=g)).clamp(0, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    data = Dataset(x, y, ("0", "1"), "plane")
    return model.eval(), Splits(train=data, test=data), w, b


def test_minimal_stage_reaches_the_closed_form_and_its_curve_counts_the_minimal_norms(tmp_path):
    model, splits, w, b = _linear_splits()
    budget = dataclasses.replace(TINY_BUDGET, n_minimal=24, fmn_steps=200, eps_linf=(0.0, 0.005, 0.01, 0.02),
                                 eps_l2=(0.0, 0.02, 0.05, 0.1), headline_linf=0.01, headline_l2=0.05)
    result = run_audit(model, splits, out_dir=tmp_path / "report", budget=budget, seed=0, stages=[MinimalStage()])
    stage = result.stage("minimal")
    assert stage.status == "ok", stage.message
    margin = (splits.test.x.flatten(1) @ w + b).abs().double()
    for norm, dual in (("linf", 1.0), ("l2", 2.0)):
        exact = margin / w.norm(p=dual).double()
        found = torch.tensor(stage.data["minimal"][norm]["eps"], dtype=torch.float64)
        assert bool((found >= exact * (1 - 1e-3)).all()), f"{norm}: below the closed-form minimum"
        assert bool((found <= exact * 1.05 + 1e-4).all()), f"{norm}: FMN is far from the minimal norm"
        curve = next(c for c in stage.data["curves"] if c["norm"] == norm)
        for eps, accuracy in zip(curve["eps"], curve["robust_accuracy"], strict=True):
            assert accuracy == float((found > eps).double().mean())
        assert curve["robust_accuracy"] == sorted(curve["robust_accuracy"], reverse=True)
    summary = stage.summary
    assert summary.linf_accuracy == float((torch.tensor(stage.data["minimal"]["linf"]["eps"], dtype=torch.float64) > 0.01).double().mean())
    assert "FMN minimal perturbations" in result.verdict


def test_robustness_stage_no_longer_bisects(tmp_path):
    result = run_audit(*_linear_splits()[:2], out_dir=tmp_path / "report", budget=TINY_BUDGET, seed=0,
                       stages=[RobustnessStage()])
    stage = result.stage("robustness")
    assert stage.status == "ok", stage.message
    assert not [k for k in stage.data if k.startswith("minimal")]
    assert not [t for t in stage.tables if "Minimal" in t.title]


class _FailsAtOneAngle(nn.Module):
    """Class 1 exactly when the image looks like the bar rotated by ``angle`` (templates matched
    by correlation against the upright and the rotated bar)."""

    def __init__(self, upright: Tensor, rotated: Tensor) -> None:
        super().__init__()
        self.templates = nn.Parameter(torch.stack([upright, rotated]).flatten(1), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        return 50 * (flat @ self.templates.T) / (flat.norm(dim=1, keepdim=True) * self.templates.norm(dim=1) + 1e-9)


def test_spatial_stage_finds_the_one_failing_rotation(tmp_path):
    size = 15
    bar = torch.zeros(1, size, size)
    bar[0, 2:13, 6:9] = 1.0
    grid = SpatialGrid(rotation=30.0, translation=0.0, points=5)
    angles = grid.transforms.grid(5, bar[None])[:, 0]
    rotate = grid.transforms.identity(1, bar[None])
    rotate[0, 0] = 30.0
    rotated = grid.transforms.apply(bar[None], rotate)[0]
    model = _FailsAtOneAngle(bar, rotated).eval()
    x = bar[None].repeat(4, 1, 1, 1)
    data = Dataset(x, torch.zeros(4, dtype=torch.long), ("upright", "rotated"), "bars")
    budget = dataclasses.replace(TINY_BUDGET, n_spatial=4, spatial_points=5)
    result = run_audit(model, Splits(train=data, test=data), out_dir=tmp_path / "report", budget=budget, seed=0,
                       stages=[SpatialStage()])
    stage = result.stage("spatial")
    assert stage.status == "ok", stage.message
    assert 30.0 in angles.tolist()
    summary = stage.summary
    assert summary.clean_accuracy == 1.0 and summary.rotation_accuracy == 0.0
    assert {round(float(a)) for a in torch.tensor(stage.data["worst_transforms"])[:, 0]} <= {30, -30}


@pytest.mark.parametrize("points", [3, 5])
def test_spatial_worst_case_is_below_each_set_and_equals_the_grid_attack(tmp_path, points):
    splits = tiny_audit_splits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = nn.functional.cross_entropy(model(splits.train.x), splits.train.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    budget = dataclasses.replace(TINY_BUDGET, n_spatial=20, spatial_points=points)
    result = run_audit(model, splits, out_dir=tmp_path / "report", budget=budget, seed=0, stages=[SpatialStage()])
    stage = result.stage("spatial")
    assert stage.status == "ok", stage.message
    s = stage.summary
    assert s.worst_accuracy <= min(s.rotation_accuracy, s.translation_accuracy) <= s.clean_accuracy
    direct = SpatialGrid(rotation=30.0, translation=3.0, points=points)(model, splits.test.x[:20], splits.test.y[:20])
    assert math.isclose(s.worst_accuracy, direct.robust_accuracy)
    assert stage.data["sets"]["both"]["queries"] == 20 * points**3
    assert "Under the worst of a" in result.verdict


def test_spatial_stage_skips_inputs_that_are_not_images(tmp_path):
    data = Dataset(torch.rand(6, 1, 1, 8), torch.arange(6) % 2, ("a", "b"), "rows")
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 2)).eval()
    result = run_audit(model, Splits(train=data, test=data), out_dir=tmp_path / "report", budget=TINY_BUDGET,
                       seed=0, stages=[SpatialStage()])
    stage = result.stage("spatial")
    assert stage.status == "skipped" and "4×4 pixels" in stage.message
