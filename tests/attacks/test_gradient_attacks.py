"""FGSM / FGM / BIM / PGD / MI-FGSM: invariants over random models, closed-form linear cases,
strength ordering on a trained network, targeted mode, determinism and bad input."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hardened.attacks import ATTACKS, BIM, FGM, FGSM, MIFGSM, PGD, attack_in_batches, make_attack
from hardened.errors import ConfigError, InputError
from hardened.train import TrainConfig, train
from helpers import blob_data, tiny_cnn, tiny_mlp

#: the registered attacks of the PGD family (they share the eps/norm/loss/steps options)
ATTACK_NAMES = [name for name in ATTACKS.names() if issubclass(ATTACKS.get(name), PGD)]


@pytest.mark.filterwarnings("ignore::hardened.errors.BudgetWarning")  # eps up to 1.5 on purpose
@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(ATTACK_NAMES),
    norm=st.sampled_from(["linf", "l2", "l1"]),
    eps=st.floats(0.0, 1.5),
    seed=st.integers(0, 1000),
    conv=st.booleans(),
    loss=st.sampled_from(["ce", "margin"]),
)
def test_attack_invariants_on_random_models(name, norm, eps, seed, conv, loss):
    model = (tiny_cnn if conv else tiny_mlp)(seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    x_before = x.clone()
    kwargs = {"steps": 3} if "steps" in inspect.signature(ATTACKS.get(name)).parameters else {}
    attack = make_attack(name, eps=eps, norm=norm, loss=loss, **kwargs)
    result = attack(model, x, y)
    assert torch.equal(x, x_before), "the input was mutated"
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert result.x_adv.device == x.device
    assert bool((result.norms[norm] <= eps + 1e-6).all())
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred != y)
    assert torch.equal(result.pred_adv, pred)
    assert all(p.grad is None for p in model.parameters())


def _linear_two_class(w: torch.Tensor, b: float) -> nn.Module:
    """logits = [s, -s] with s = w·x + b: the margin of class 0 is 2s."""
    layer = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([w, -w]))
        layer.bias.copy_(torch.tensor([b, -b]))
    return nn.Sequential(nn.Flatten(), layer).double()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_reaches_the_closed_form_optimum_of_a_linear_model(norm):
    # Inside the box the worst-case score of a linear model is s - eps * ||w||_dual (dual of
    # linf is l1, of l2 is l2), reached by delta = -eps * sign(w) or -eps * w / ||w||_2.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    model = _linear_two_class(w, b=0.0)
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    eps = 0.05
    dual = w.abs().sum() if norm == "linf" else w.norm()
    score = float(w @ x.flatten())
    y = torch.tensor([0 if score > 0 else 1])
    sign = 1.0 if score > 0 else -1.0
    result = PGD(eps=eps, norm=norm, steps=50, random_start=False, early_stop=False, loss="margin")(
        model, x, y
    )
    attacked = float(w @ result.x_adv.flatten())
    assert sign * attacked == pytest.approx(abs(score) - eps * float(dual), abs=1e-6)
    # FGSM/FGM hit the same optimum in one step for a linear model
    one_step = FGSM(eps=eps, norm=norm)(model, x, y)
    assert sign * float(w @ one_step.x_adv.flatten()) == pytest.approx(abs(score) - eps * float(dual), abs=1e-9)


def test_fgm_step_has_l2_norm_exactly_eps_before_clipping():
    model = tiny_cnn()
    x = torch.full((4, 1, 8, 8), 0.5)
    result = FGM(eps=0.3)(model, x, torch.tensor([0, 1, 2, 0]))
    assert torch.allclose(result.norms["l2"], torch.full((4,), 0.3, dtype=torch.float64), atol=1e-5)


class _FGSMWithoutReuse(FGSM):
    def _first_gradient_at_clean(self) -> bool:
        return False


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_one_step_attacks_reuse_the_clean_forward_pass(cnn, blobs, norm):
    x, y = blobs.x[:16], blobs.y[:16]
    reused = FGSM(eps=0.2, norm=norm)(cnn, x, y)
    fresh = _FGSMWithoutReuse(eps=0.2, norm=norm)(cnn, x, y)
    assert torch.equal(reused.x_adv, fresh.x_adv)
    # the check's forward serves the gradient: one forward + one backward + the final forward
    assert (reused.forward_count, reused.gradient_count) == (2 * 16, 16)
    assert (fresh.forward_count, fresh.gradient_count) == (3 * 16, 16)
    bim = BIM(eps=0.2, steps=4)(cnn, x, y)
    assert bim.forward_count == bim.gradient_count + 16  # check (reused once) + steps + final
    assert all(p.grad is None for p in cnn.parameters())


def test_attack_in_batches_merges_into_the_single_batch_result(cnn, blobs):
    x, y = blobs.x[:16], blobs.y[:16]
    targets = (y + 1) % 3
    attack = BIM(eps=0.2, steps=3, early_stop=False)
    whole = attack(cnn, x, y, targets=targets)
    merged = attack_in_batches(attack, cnn, x, y, batch_size=5, targets=targets)
    for field in ("x_adv", "success", "labels", "targets", "pred_clean", "pred_adv"):
        assert torch.equal(getattr(merged, field), getattr(whole, field)), field
    torch.testing.assert_close(merged.confidence_adv, whole.confidence_adv)
    assert all(torch.allclose(merged.norms[k], whole.norms[k]) for k in whole.norms)
    assert (merged.forward_count, merged.gradient_count) == (whole.forward_count, whole.gradient_count)
    assert merged.params == whole.params and merged.attack == "bim"


@pytest.fixture(scope="module")
def trained():
    data = blob_data(n=240, size=8, classes=3, seed=1)
    torch.manual_seed(0)
    model = tiny_cnn(seed=3)
    train(model, data, config=TrainConfig(epochs=8, batch_size=32, lr=3e-3, seed=0))
    model.eval()
    test = blob_data(n=60, size=8, classes=3, seed=2)
    return model, test


def test_trained_model_is_accurate(trained):
    model, test = trained
    assert float((model(test.x).argmax(1) == test.y).float().mean()) > 0.9


@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 1.8)])
def test_pgd_is_at_least_as_strong_as_fgsm(trained, norm, eps):
    model, test = trained
    fgsm = FGSM(eps=eps, norm=norm)(model, test.x, test.y)
    pgd = PGD(eps=eps, norm=norm, steps=20)(model, test.x, test.y)
    assert pgd.robust_accuracy <= fgsm.robust_accuracy
    assert pgd.success_rate > 0.2


def test_targeted_attack_reaches_its_target(trained):
    model, test = trained
    targets = (test.y + 1) % 3
    result = PGD(eps=0.6, steps=30)(model, test.x, test.y, targets=targets)
    assert result.success_rate >= 0.95
    assert torch.equal(result.success, result.pred_adv == targets)


def test_restarts_keep_each_samples_best(trained):
    model, test = trained
    one = PGD(eps=0.3, steps=5, restarts=1, seed=7)(model, test.x, test.y)
    three = PGD(eps=0.3, steps=5, restarts=3, seed=7)(model, test.x, test.y)
    assert bool((three.success | ~one.success).all()), "a restart lost a success"
    assert three.success_rate >= one.success_rate


def test_early_stop_spends_fewer_gradients_and_keeps_strength(trained):
    model, test = trained
    early = PGD(eps=0.35, steps=20, early_stop=True)(model, test.x, test.y)
    full = PGD(eps=0.35, steps=20, early_stop=False)(model, test.x, test.y)
    assert early.gradient_count < full.gradient_count
    assert full.gradient_count == 20 * len(test.x)
    assert early.success_rate >= full.success_rate - 0.05


def test_same_seed_same_result_and_seeds_matter(cnn, blobs):
    x, y = blobs.x[:12], blobs.y[:12]
    a = PGD(eps=0.1, steps=3, seed=1)(cnn, x, y)
    b = PGD(eps=0.1, steps=3, seed=1)(cnn, x, y)
    c = PGD(eps=0.1, steps=3, seed=2, early_stop=False)(cnn, x, y)
    d = PGD(eps=0.1, steps=3, seed=1, early_stop=False)(cnn, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(c.x_adv, d.x_adv)


def test_model_mode_is_restored_and_no_parameter_gradients():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 3))
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    x, y = torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    MIFGSM(eps=0.1, steps=3)(model, x, y)
    assert model.training and not model[2].training and model[1].training
    assert all(p.grad is None for p in model.parameters())


def test_bim_and_mifgsm_start_from_the_clean_image(cnn, blobs):
    x, y = blobs.x[:8], blobs.y[:8]
    assert not BIM(eps=0.1).random_start and not MIFGSM(eps=0.1).random_start
    assert MIFGSM(eps=0.1, steps=10).step_size == pytest.approx(0.01)
    assert bool((BIM(eps=0.1)(cnn, x, y).norms["linf"] <= 0.1 + 1e-6).all())


def test_radial_start_is_accepted_seeded_and_validated(cnn, blobs):
    x, y = blobs.x[:8], blobs.y[:8]
    a = PGD(eps=0.5, norm="l2", steps=3, random_start="radial", early_stop=False)(cnn, x, y)
    b = PGD(eps=0.5, norm="l2", steps=3, random_start="radial", early_stop=False)(cnn, x, y)
    c = PGD(eps=0.5, norm="l2", steps=3, random_start="uniform", early_stop=False)(cnn, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)
    assert a.params["random_start"] == "radial"
    with pytest.raises(ConfigError, match="random_start"):
        PGD(eps=0.5, random_start="gaussian")


def test_zero_eps_returns_the_input(cnn, blobs):
    result = PGD(eps=0.0)(cnn, blobs.x[:5], blobs.y[:5])
    assert torch.equal(result.x_adv, blobs.x[:5])
    assert result.gradient_count == 0


def test_result_to_dict_is_json_ready(cnn, blobs):
    import json

    result = PGD(eps=0.1, steps=2)(cnn, blobs.x[:4], blobs.y[:4])
    data = json.loads(json.dumps(result.to_dict(per_sample=True)))
    assert data["n"] == 4 and data["params"]["eps"] == 0.1 and len(data["per_sample"]["success"]) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attack_on_cuda_keeps_the_device():
    model = tiny_cnn().cuda()
    x, y = torch.rand(4, 1, 8, 8, device="cuda"), torch.tensor([0, 1, 2, 0], device="cuda")
    result = PGD(eps=0.1, steps=3)(model, x, y)
    assert result.x_adv.device.type == "cuda" and result.success.device.type == "cuda"


@pytest.mark.parametrize(
    "x, y, message",
    [
        (torch.full((2, 1, 8, 8), math.nan), torch.tensor([0, 1]), "NaN or Inf"),
        (torch.full((2, 1, 8, 8), 1.5), torch.tensor([0, 1]), "must lie in"),
        (torch.rand(1, 8, 8), torch.tensor([0]), "N×C×H×W"),
        (torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), "cannot take images"),
        (torch.rand(2, 1, 8, 8), torch.tensor([0, 7]), "3 classes"),
        (torch.rand(2, 1, 8, 8), torch.tensor([0, 1, 2]), "shape \\(2,\\)"),
        (torch.rand(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), "empty"),
        (torch.rand(2, 1, 8, 8), torch.tensor([0.0, 1.0]), "integer"),
        ((torch.rand(2, 1, 8, 8) * 255).to(torch.uint8), torch.tensor([0, 1]), "floating point"),
    ],
)
def test_bad_input_raises_input_error(cnn, x, y, message):
    with pytest.raises(InputError, match=message):
        PGD(eps=0.1, steps=2)(cnn, x, y)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: PGD(eps=-0.1), "eps must be"),
        (lambda: PGD(eps=0.1, norm="l7"), "unknown norm"),
        (lambda: make_attack("deepfool", eps=0.1), "unknown attack"),
        (lambda: PGD(eps=0.1, steps=0), "steps must be"),
        (lambda: PGD(eps=0.1, loss="hinge"), "unknown loss"),
        (lambda: PGD(eps=0.1, schedule="warp"), "unknown schedule"),
        (lambda: make_attack("pgd", eps=0.1, bogus=1), "bad options"),
    ],
)
def test_bad_configuration_raises_config_error(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_targets_out_of_range_are_rejected(cnn, blobs):
    with pytest.raises(InputError, match="targets"):
        PGD(eps=0.1)(cnn, blobs.x[:2], blobs.y[:2], targets=torch.tensor([0, 9]))


def test_restarts_work_on_a_float64_model():
    model = tiny_mlp().double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    result = PGD(eps=0.2, steps=3, restarts=2)(model, x, torch.tensor([0, 1, 2, 0]))
    assert result.x_adv.dtype == torch.float64 and bool((result.norms["linf"] <= 0.2 + 1e-9).all())


def test_targeted_restarts_check_each_samples_own_target(trained):
    model, test = trained
    targets = (test.y + 2) % 3
    result = PGD(eps=0.6, steps=10, restarts=3)(model, test.x, test.y, targets=targets)
    assert torch.equal(result.success, result.pred_adv == targets)
    assert result.success_rate >= 0.9
