"""LRP-flip, LRP-mean, LRP-grad and their gradient/random baselines."""

from __future__ import annotations

import pytest
import torch

from hardened.attacks import BIM, LRPFlip, LRPGrad, LRPMean, make_attack
from hardened.errors import ConfigError
from hardened.explain import explain_images
from hardened.train import TrainConfig, train
from helpers import blob_data, tiny_cnn, tiny_mlp


@pytest.fixture(scope="module")
def trained():
    data = blob_data(n=60)
    model = tiny_cnn()
    train(model, data, config=TrainConfig(epochs=6, lr=1e-2, batch_size=30))
    model.eval()
    return model, data.x[:24], data.y[:24]


@pytest.mark.parametrize("name", ["lrp-flip", "lrp-mean", "lrp-grad"])
@pytest.mark.parametrize("selection", ["lrp", "gradient", "random"])
def test_contract_on_random_model(name: str, selection: str) -> None:
    model = tiny_mlp(seed=3)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    before, hooks = x.clone(), [len(m._forward_hooks) for m in model.modules()]
    out_before = model(x).detach()
    options = {"eps": 0.2, "steps": 4} if name == "lrp-grad" else {"max_pixels": 12, "pixels_per_step": 3}
    result = make_attack(name, selection=selection, **options)(model, x, y)
    assert torch.equal(x, before)
    assert result.x_adv.shape == x.shape
    assert bool(((result.x_adv >= 0) & (result.x_adv <= 1)).all())
    assert torch.equal(result.pred_adv, model(result.x_adv).argmax(1))
    assert torch.equal(result.success, result.pred_adv != y)
    if name == "lrp-grad":
        assert bool((result.norms["linf"] <= 0.2 + 1e-6).all())
    else:
        assert bool((result.norms["l0"] <= 12).all())
    # already misclassified samples are left alone (per-sample early stop)
    wrong = result.pred_clean != y
    assert torch.equal(result.x_adv[wrong], x[wrong])
    assert torch.equal(model(x), out_before)
    assert [len(m._forward_hooks) for m in model.modules()] == hooks
    assert result.to_dict()["params"]["selection"] == selection


def test_flip_and_mean_values(trained) -> None:
    model, x, y = trained
    flip = LRPFlip(max_pixels=8, pixels_per_step=4)(model, x, y)
    changed = flip.x_adv != x
    assert torch.allclose(flip.x_adv[changed], 1 - x[changed])
    mean = LRPMean(max_pixels=8, pixels_per_step=4)(model, x, y)
    means = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    changed = mean.x_adv != x
    assert torch.allclose(mean.x_adv[changed], means[changed])
    fixed = LRPMean(max_pixels=8, fill=0.25)(model, x, y)
    changed = fixed.x_adv != x
    assert bool((fixed.x_adv[changed] == 0.25).all())


def test_lrp_selection_flips_the_most_relevant_pixels(trained) -> None:
    model, x, y = trained
    k = 5
    result = LRPFlip(max_pixels=k, pixels_per_step=k)(model, x, y)
    relevance = explain_images(model, x, y).relevance.sum(1).flatten(1)
    top = relevance.topk(k, dim=1).indices
    changed = (result.x_adv != x).sum(1).flatten(1)
    for i in range(len(x)):
        if result.pred_clean[i] == y[i]:
            assert set(changed[i].nonzero().flatten().tolist()) <= set(top[i].tolist())
    assert result.gradient_count == int((result.pred_clean == y).sum())


def test_lrp_grad_with_all_pixels_is_ifgsm(trained) -> None:
    model, x, y = trained
    ours = LRPGrad(eps=0.3, steps=6, step_size=0.05, pixel_fraction=1.0, selection="random")(model, x, y)
    bim = BIM(eps=0.3, steps=6, step_size=0.05)(model, x, y)
    assert torch.equal(ours.x_adv, bim.x_adv)
    assert ours.gradient_count == bim.gradient_count


def test_costs_are_counted(trained) -> None:
    model, x, y = trained
    lrp = LRPGrad(eps=0.3, steps=3, step_size=0.01)(model, x, y)
    grad = LRPGrad(eps=0.3, steps=3, step_size=0.01, selection="gradient")(model, x, y)
    # tiny steps: nothing succeeds, so every step costs one gradient (+ one relevance map)
    assert grad.gradient_count == 3 * len(x)
    assert lrp.gradient_count == 6 * len(x)
    random = LRPFlip(max_pixels=8, selection="random")(model, x, y)
    assert random.gradient_count == 0


def test_random_selection_is_seeded(trained) -> None:
    model, x, y = trained
    a = LRPFlip(max_pixels=10, selection="random", seed=1)(model, x, y).x_adv
    b = LRPFlip(max_pixels=10, selection="random", seed=1)(model, x, y).x_adv
    c = LRPFlip(max_pixels=10, selection="random", seed=2)(model, x, y).x_adv
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_weight_mode_and_l2(trained) -> None:
    model, x, y = trained
    weighted = LRPGrad(eps=0.3, steps=4, mode="weight")(model, x, y)
    assert bool((weighted.norms["linf"] <= 0.3 + 1e-6).all())
    l2 = LRPGrad(eps=2.0, norm="l2", steps=4)(model, x, y)
    assert bool((l2.norms["l2"] <= 2.0 + 1e-4).all())


def test_lrp_beats_random_pixels(trained) -> None:
    model, x, y = trained
    lrp = LRPFlip(max_pixels=16, pixels_per_step=2)(model, x, y)
    random = LRPFlip(max_pixels=16, pixels_per_step=2, selection="random")(model, x, y)
    assert lrp.success_rate >= random.success_rate


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="selection"):
        LRPFlip(selection="best")
    with pytest.raises(ConfigError, match="max_pixels"):
        LRPFlip(max_pixels=0)
    with pytest.raises(ConfigError, match="pixel_fraction"):
        LRPGrad(pixel_fraction=0.0)
    with pytest.raises(ConfigError, match="linf or l2"):
        LRPGrad(norm="l1")
    with pytest.raises(ConfigError, match="fill"):
        LRPMean(fill=2.0)
    with pytest.raises(ConfigError, match="composite"):
        LRPGrad(composite="nope")
    model = tiny_mlp()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ConfigError, match="targeted"):
        LRPFlip()(model, x, torch.tensor([0, 1]), targets=torch.tensor([1, 2]))
