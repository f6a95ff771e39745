"""Evaluation: sweeps, minimal eps by bisection (closed form on a linear model), ASR curves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hardened.errors import ConfigError
from hardened.evaluate import (
    load_result,
    minimal_eps,
    robust_accuracy_sweep,
    save_result,
    success_curve,
)
from hardened.report.plots import plot_success_curves, plot_sweeps
from helpers import tiny_cnn


def _linear(w: torch.Tensor) -> nn.Module:
    layer = nn.Linear(w.numel(), 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([w, -w]))
    return nn.Sequential(nn.Flatten(), layer).double()


def test_minimal_eps_matches_the_closed_form_of_a_linear_model():
    # score s = w·x; the class flips when eps * ||w||_dual exceeds |s| (box not binding here)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(9, generator=g, dtype=torch.float64)
    model = _linear(w)
    x = 0.5 + 0.02 * torch.randn(6, 1, 3, 3, generator=g, dtype=torch.float64)
    scores = x.flatten(1) @ w
    y = (scores < 0).long()
    for norm, dual, eps_max in (("linf", w.abs().sum(), 0.2), ("l2", w.norm(), 0.5)):
        result = minimal_eps(model, x, y, eps_max=eps_max, norm=norm, steps=12, attack="bim", loss="margin")
        expected = scores.abs() / dual
        assert bool((expected < eps_max).all())
        found = torch.tensor(result.eps, dtype=torch.float64)
        assert bool((found >= expected - 1e-6).all()), "bisection below the true threshold"
        assert bool((found <= expected + eps_max / 2**12 + 1e-6).all())


def test_minimal_eps_marks_unreachable_samples_as_inf():
    model = _linear(torch.ones(4, dtype=torch.float64))
    x = torch.full((2, 1, 2, 2), 0.9, dtype=torch.float64)
    result = minimal_eps(model, x, torch.tensor([0, 0]), eps_max=0.01, steps=3, attack="bim")
    assert result.eps == [float("inf")] * 2
    restored = type(result).from_dict(result.to_dict())
    assert restored.eps == result.eps


def test_sweep_starts_at_clean_accuracy_and_round_trips(tmp_path, blobs):
    model = tiny_cnn()
    sweep = robust_accuracy_sweep(model, blobs.x, blobs.y, eps_values=[0.2, 0.0, 0.05], steps=3)
    assert sweep.eps == [0.0, 0.05, 0.2]
    clean = float((model(blobs.x).argmax(1) == blobs.y).float().mean())
    assert sweep.robust_accuracy[0] == pytest.approx(clean)
    assert sweep.robust_accuracy[2] <= sweep.robust_accuracy[0]
    save_result(sweep, tmp_path / "s.json")
    assert load_result(tmp_path / "s.json") == sweep
    png = plot_sweeps([sweep], tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_success_curve_known_values(tmp_path):
    curve = success_curve([0.1, 0.3, float("inf"), 0.2], [True, True, False, False], [0.0, 0.15, 0.3, 1.0], attack="a")
    assert curve.success_rate == [0.0, 0.25, 0.5, 0.5]
    save_result(curve, tmp_path / "c.json")
    assert load_result(tmp_path / "c.json") == curve
    assert plot_success_curves([curve], tmp_path / "c.png").exists()


def test_bad_sweep_settings():
    model = tiny_cnn()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="eps values"):
        robust_accuracy_sweep(model, x, y, eps_values=[-0.1])
    with pytest.raises(ConfigError, match="at least one"):
        robust_accuracy_sweep(model, x, y, eps_values=[])
    with pytest.raises(ConfigError, match="eps_max"):
        minimal_eps(model, x, y, eps_max=0.0)
