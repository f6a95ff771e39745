"""One-pixel attack: at most k pixels change, it finds the one pixel a toy model is built to
fail on, one model call per generation for the whole batch, errors propagate, bad options."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from hardened.attacks import OnePixel
from hardened.attacks.onepixel import paint_pixels
from hardened.errors import ConfigError
from helpers import blob_data, tiny_cnn


def _changed_pixels(x_adv: Tensor, x: Tensor) -> Tensor:
    return ((x_adv - x).abs().amax(dim=1) > 0).flatten(1).sum(dim=1)


@pytest.mark.parametrize(("k", "seed"), [(1, 0), (3, 1), (5, 2)])
def test_at_most_k_pixels_change_and_success_agrees_with_the_model(k: int, seed: int) -> None:
    model, data = tiny_cnn(channels=3, seed=seed), blob_data(n=6, seed=seed)
    x = data.x.expand(-1, 3, -1, -1).contiguous()
    result = OnePixel(max_pixels=k, maxiter=10, seed=seed)(model, x, data.y)
    assert int(_changed_pixels(result.x_adv, x).max()) <= k
    assert float(result.norms["l0"].max()) <= 3 * k
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) != data.y)


class _OnePixelWeakness(nn.Module):
    """Predicts class 1 exactly when pixel (row, col) is brighter than 0.9, else class 0."""

    def __init__(self, row: int, col: int) -> None:
        super().__init__()
        self.row, self.col = row, col

    def forward(self, x: Tensor) -> Tensor:
        value = x[:, 0, self.row, self.col]
        return torch.stack([torch.full_like(value, 0.9), value], dim=1)


def test_it_finds_the_pixel_the_model_fails_on() -> None:
    model = _OnePixelWeakness(5, 2)
    x = torch.full((4, 1, 8, 8), 0.2)
    result = OnePixel(max_pixels=1, seed=3)(model, x, torch.zeros(4, dtype=torch.long))
    assert bool(result.success.all())
    changed = (result.x_adv != x)[:, 0].nonzero()[:, 1:]
    assert torch.equal(changed, torch.tensor([[5, 2]] * 4))
    targeted = OnePixel(max_pixels=1, seed=3)(model, x, torch.zeros(4, dtype=torch.long), targets=torch.ones(4, dtype=torch.long))
    assert bool(targeted.success.all())


def test_one_model_call_per_generation_for_the_whole_batch() -> None:
    calls: list[int] = []
    net = tiny_cnn()

    def model(x: Tensor) -> Tensor:
        calls.append(x.shape[0])
        return net(x)

    data, maxiter = blob_data(n=5, seed=4), 6
    result = OnePixel(max_pixels=2, popsize=4, maxiter=maxiter, seed=0)(model, data.x, data.y)
    # the input check, the initial population, <= maxiter generations, the final measurement
    assert len(calls) <= maxiter + 3
    assert result.total_queries == sum(calls[1:-1]) and result.forward_count == sum(calls)
    population = 4 * 2 * 3
    assert max(calls[1:-1]) == population * 5, "the first generation evaluates every image's population"


def test_a_failing_model_raises_and_leaves_no_thread_waiting() -> None:
    import threading

    net, calls = tiny_cnn(), []

    def model(x: Tensor) -> Tensor:
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("endpoint down")
        return net(x)

    data, before = blob_data(n=4, seed=5), threading.active_count()
    with pytest.raises(RuntimeError, match="endpoint down"):
        OnePixel(max_pixels=1, popsize=3, maxiter=20)(model, data.x, data.y)
    assert threading.active_count() == before


def test_paint_pixels_sets_exactly_the_genes() -> None:
    x = torch.zeros(2, 3, 4, 5)
    genes = torch.tensor([[[1.7, 4.2, 0.1, 0.2, 0.3]], [[0.0, 0.0, 2.0, -1.0, 0.5]]])
    out = paint_pixels(x, genes, (0.0, 1.0))
    assert torch.equal(out[0, :, 1, 4], torch.tensor([0.1, 0.2, 0.3]))
    assert torch.equal(out[1, :, 0, 0], torch.tensor([1.0, 0.0, 0.5]))
    assert int(_changed_pixels(out, x).sum()) == 2 and torch.equal(x, torch.zeros_like(x))


@pytest.mark.parametrize(("option", "value"), [("max_pixels", 0), ("popsize", 1.5), ("mutation", 3.0), ("seed", -1)])
def test_bad_options_are_config_errors(option: str, value: object) -> None:
    with pytest.raises(ConfigError, match=option):
        OnePixel(**{option: value})
