"""explain_images() API, gradient baselines, pixel flipping and heatmap files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hardened.explain import Explainer, explain_images
from hardened.explain.gradients import integrated_gradients, target_gradient
from hardened.explain.quality import compare_explanations, deletion_curve, pixel_order
from hardened.report.heatmaps import (
    AnimationFrame,
    plot_deletion_curves,
    plot_heatmap,
    plot_heatmap_grid,
    save_animation,
)
from helpers import blob_data, tiny_cnn


@pytest.fixture
def setup():
    model = tiny_cnn().double()
    data = blob_data(n=6)
    return model, data.x.double(), data.y


def test_gradient_methods_against_autograd(setup) -> None:
    model, x, y = setup
    x_var = x.clone().requires_grad_(True)
    model(x_var).gather(1, y[:, None]).sum().backward()
    grad = x_var.grad
    torch.testing.assert_close(explain_images(model, x, y, "gradient").relevance, grad)
    torch.testing.assert_close(explain_images(model, x, y, "saliency").relevance, grad.abs())
    torch.testing.assert_close(explain_images(model, x, y, "gradient-x-input").relevance, grad * x)


def test_integrated_gradients_completeness_on_linear_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0])
    logits, attribution = integrated_gradients(model, x, target, steps=3)
    baseline_logits = model(torch.zeros_like(x)).gather(1, target[:, None]).squeeze(1)
    expected = logits.gather(1, target[:, None]).squeeze(1) - baseline_logits
    torch.testing.assert_close(attribution.flatten(1).sum(1), expected.detach())


def test_smoothgrad_and_random_are_seeded(setup) -> None:
    model, x, y = setup
    a = explain_images(model, x, y, "smoothgrad", samples=3, seed=4).relevance
    b = explain_images(model, x, y, "smoothgrad", samples=3, seed=4).relevance
    c = explain_images(model, x, y, "smoothgrad", samples=3, seed=5).relevance
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(explain_images(model, x, y, "random", seed=1).relevance,
                       explain_images(model, x, y, "random", seed=1).relevance)


def test_function_and_class_agree(setup) -> None:
    model, x, y = setup
    for method in ("lrp", "integrated-gradients"):
        direct = explain_images(model, x, y, method, steps=4)
        via_class = Explainer(method, steps=4)(model, x, y)
        assert torch.equal(direct.relevance, via_class.relevance)


def test_target_int_and_default_prediction(setup) -> None:
    model, x, _ = setup
    assert explain_images(model, x, 2).target.tolist() == [2] * len(x)
    logits, _ = target_gradient(model, x, torch.zeros(len(x), dtype=torch.long))
    assert torch.equal(explain_images(model, x).target, logits.argmax(1))


def test_deletion_curve_shape_and_order(setup) -> None:
    model, x, y = setup
    relevance = explain_images(model, x, y).relevance
    curve = deletion_curve(model, x, y, relevance, steps=4, max_fraction=0.5, method="lrp")
    assert curve.fractions[0] == 0 and curve.fractions[-1] == pytest.approx(0.5)
    assert len(curve.score) == 5 and 0 <= curve.area <= 1
    order = pixel_order(torch.tensor([[[[0.1, 0.9], [0.5, -1.0]]]]))
    assert order.tolist() == [[1, 2, 0, 3]]
    curves = compare_explanations(model, x, y, ("lrp", "random"), steps=2)
    assert [c.method for c in curves] == ["lrp", "random"]


def test_heatmap_files(setup, tmp_path) -> None:
    model, x, y = setup
    attribution = explain_images(model, x, y)
    single = plot_heatmap(x[0], attribution.relevance[0], tmp_path / "one.png", title="class 0")
    grid = plot_heatmap_grid(x, {"lrp": attribution.relevance, "gradient": explain_images(model, x, y, "gradient").relevance},
                             tmp_path / "grid.png", titles=[str(int(t)) for t in y])
    curves = compare_explanations(model, x, y, ("lrp", "random"), steps=2)
    deletion = plot_deletion_curves(curves, tmp_path / "deletion.png")
    frames = [AnimationFrame(x[0], x[0] * 0.1 * k, attribution.relevance[0], f"step {k}") for k in range(2)]
    gif = save_animation(frames, tmp_path / "attack.gif")
    for path in (single, grid, deletion):
        assert path.read_bytes()[:4] == b"\x89PNG"
    assert gif.read_bytes()[:6] == b"GIF89a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attack.gif", "deletion.png", "grid.png", "one.png"]


@pytest.mark.parametrize("target", [None, "labels", 1])
@pytest.mark.parametrize("batch_size", [2, 256])
def test_lrp_runs_each_image_through_the_model_once(setup, target, batch_size) -> None:
    """Check once, compute once: one probe image for the checks, then one LRP pass per batch."""
    from hardened.explain import lrp

    model, x, y = setup
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    goal = y if target == "labels" else target
    try:
        attribution = explain_images(model, x, goal, batch_size=batch_size)
    finally:
        handle.remove()
    probe = 0 if target is None else 1  # given targets: one probe image for the class count
    assert sum(seen) == len(x) + probe and (target is None or seen[0] == 1)
    expected_target = model(x).argmax(1) if target is None else (y if target == "labels" else torch.full_like(y, 1))
    assert torch.equal(attribution.target, expected_target)
    assert torch.equal(attribution.prediction, model(x).argmax(1))
    torch.testing.assert_close(attribution.relevance, lrp(model, x, expected_target)[1])
    torch.testing.assert_close(attribution.output, model(x).gather(1, expected_target[:, None]).squeeze(1))


@pytest.mark.parametrize("method", ["lrp", "gradient"])
def test_checks_without_a_full_forward_still_name_the_problem(method) -> None:
    from hardened.errors import InputError

    no_logits = nn.Sequential(nn.Conv2d(1, 3, 1)).eval()
    with pytest.raises(InputError, match="logits of shape N×K"):
        explain_images(no_logits, torch.rand(2, 1, 4, 4), method=method)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with pytest.raises(InputError, match=r"cannot take images of shape \(1, 5, 5\)"):
        explain_images(flat, torch.rand(2, 1, 5, 5), method=method)
