"""APGD-CE / APGD-DLR / APGD-T: the DLR losses against literal formulas, the checkpoint schedule,
the closed-form optimum of a linear model, strength against PGD at equal budget, targeted
runs, restarts, determinism, bad options, and agreement with the reference implementation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hardened.attacks import APGD, APGDDLR, APGDT, PGD, make_attack
from hardened.attacks.apgd import checkpoints
from hardened.attacks.losses import attack_loss, dlr, targeted_dlr
from hardened.errors import ConfigError, InputError
from hardened.train import TrainConfig, train
from helpers import blob_data, tiny_cnn, tiny_mlp

APGD_NAMES = ["apgd", "apgd-ce", "apgd-dlr", "apgd-t"]


def _literal_dlr(z: list[float], y: int) -> float:
    ranked = sorted(z, reverse=True)
    other = max(v for j, v in enumerate(z) if j != y)
    return -(z[y] - other) / (ranked[0] - ranked[2] + 1e-12)


def _literal_targeted_dlr(z: list[float], y: int, t: int) -> float:
    ranked = sorted(z, reverse=True)
    fourth = ranked[min(3, len(z) - 1)]
    return -(z[y] - z[t]) / (ranked[0] - 0.5 * (ranked[2] + fourth) + 1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(3, 12), scale=st.floats(0.01, 100.0), shift=st.floats(-50, 50))
def test_dlr_losses_match_the_formula_and_ignore_shift_and_scale(seed, k, scale, shift):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(5, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, k, (5,), generator=g)
    t = (y + 1 + torch.randint(0, k - 1, (5,), generator=g)) % k
    got, got_t = dlr(z, y), targeted_dlr(z, y, t)
    for i in range(5):
        assert float(got[i]) == pytest.approx(_literal_dlr(z[i].tolist(), int(y[i])), rel=1e-9)
        assert float(got_t[i]) == pytest.approx(_literal_targeted_dlr(z[i].tolist(), int(y[i]), int(t[i])), rel=1e-9)
    torch.testing.assert_close(dlr(scale * z + shift, y), got, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(targeted_dlr(scale * z + shift, y, t), got_t, rtol=1e-6, atol=1e-9)
    # positive exactly when the label no longer wins
    assert torch.equal(got > 0, z.argmax(1) != y)
    torch.testing.assert_close(attack_loss("dlr", z, t, True, true_labels=y), got_t)


def test_dlr_needs_three_classes_and_the_targeted_one_the_true_labels():
    z, y = torch.randn(2, 2), torch.tensor([0, 1])
    with pytest.raises(InputError, match="at least 3 classes"):
        dlr(z, y)
    with pytest.raises(ConfigError, match="true labels"):
        attack_loss("dlr", torch.randn(2, 4), y, True)


def test_checkpoints_follow_the_papers_recursion():
    # p_j: 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (then 1.05 > 1); w_j = ceil(p_j * steps)
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(50) == [11, 21, 29, 35, 40, 44, 47, 50]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]


def test_checkpoints_exist_for_tiny_budgets():
    assert checkpoints(1) == [1]
    assert checkpoints(5) == [2, 3, 4, 5]


def _linear_two_class(w: torch.Tensor, b: float) -> nn.Module:
    """logits = [s, -s] with s = w·x + b."""
    layer = nn.Linear(w.numel(), 2)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([w, -w]))
        layer.bias.copy_(torch.tensor([b, -b]))
    return nn.Sequential(nn.Flatten(), layer).double()


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_apgd_reaches_the_closed_form_optimum_of_a_linear_model(norm, seed, smoothing):
    # The worst case of s = w·x + b over the ball (inside the box) is s - eps * ||w||_dual: the
    # attack cannot succeed (b is large), so APGD returns its highest-loss point, which must be it.
    # The CE gradient of this model points along -w wherever it is taken, so the smoothed
    # gradient (taken under noise) must reach the same optimum.
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    model = _linear_two_class(w, b=10.0)
    x = 0.4 + 0.2 * torch.rand((1, 1, 4, 4), generator=g, dtype=torch.float64)
    eps = 0.05
    dual = w.abs().sum() if norm == "linf" else w.norm()
    result = APGD(eps=eps, norm=norm, steps=50, smoothing=smoothing, seed=seed)(model, x, torch.tensor([0]))
    assert not bool(result.success.any())
    attacked = float(w @ result.x_adv.flatten()) + 10.0
    optimum = float(w @ x.flatten()) + 10.0 - eps * float(dual)
    assert attacked == pytest.approx(optimum, abs=1e-6)


@pytest.mark.filterwarnings("ignore::hardened.errors.BudgetWarning")  # eps > box width is a case too
@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(APGD_NAMES),
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.0, 1.5),
    seed=st.integers(0, 1000),
    conv=st.booleans(),
    early_stop=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.2]),
)
def test_apgd_invariants_on_random_models(name, norm, eps, seed, conv, early_stop, smoothing):
    model = (tiny_cnn if conv else tiny_mlp)(seed=seed, classes=4)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    x_before = x.clone()
    options = {"n_target_classes": 2} if name == "apgd-t" else {}
    result = make_attack(
        name, eps=eps, norm=norm, steps=4, early_stop=early_stop, smoothing=smoothing, seed=seed, **options
    )(model, x, y)
    assert torch.equal(x, x_before), "the input was mutated"
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert bool((result.norms[norm] <= eps + 1e-6).all())
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred != y)
    assert all(p.grad is None for p in model.parameters())
    if not early_stop and eps > 0:
        runs = 2 if name == "apgd-t" else 1
        assert result.gradient_count == runs * 6 * (4 + 1)


@pytest.fixture(scope="module")
def trained():
    data = blob_data(n=320, size=8, classes=4, seed=1)
    torch.manual_seed(0)
    model = tiny_cnn(seed=3, classes=4)
    train(model, data, config=TrainConfig(epochs=10, batch_size=32, lr=3e-3, seed=0), progress=False)
    model.eval()
    return model, blob_data(n=80, size=8, classes=4, seed=2)


def test_trained_model_is_accurate(trained):
    model, test = trained
    assert float((model(test.x).argmax(1) == test.y).float().mean()) > 0.95


@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 1.4), ("l2", 1.8)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_apgd_is_at_least_as_strong_as_pgd_at_equal_budget(trained, norm, eps, seed):
    model, test = trained
    # PGD-21 and APGD-20 both take 21 gradients per sample (APGD: one at its start point)
    pgd = PGD(eps=eps, norm=norm, steps=21, seed=seed, early_stop=False)(model, test.x, test.y)
    apgd = APGD(eps=eps, norm=norm, steps=20, seed=seed, early_stop=False)(model, test.x, test.y)
    assert apgd.gradient_count == pgd.gradient_count
    assert apgd.robust_accuracy <= pgd.robust_accuracy
    assert apgd.success_rate > 0.05


@pytest.mark.parametrize("norm, eps", [("linf", 0.45), ("l2", 2.5)])
def test_targeted_dlr_reaches_its_targets(trained, norm, eps):
    model, test = trained
    targets = (test.y + 1 + torch.arange(len(test.y)) % 3) % 4
    for attack in (APGDDLR(eps=eps, norm=norm, steps=50), APGDT(eps=eps, norm=norm, steps=50)):
        result = attack(model, test.x, test.y, targets=targets)
        assert torch.equal(result.success, result.pred_adv == targets)
        assert result.success_rate >= 0.95, attack


def test_apgd_t_tries_the_top_classes_on_the_points_still_robust(trained):
    model, test = trained
    x, y = test.x[:24], test.y[:24]
    one = APGDT(eps=0.3, steps=10, n_target_classes=1)(model, x, y)
    three = APGDT(eps=0.3, steps=10, n_target_classes=3)(model, x, y)
    assert bool((three.success | ~one.success).all()), "another target lost a success"
    assert three.success_rate > one.success_rate
    # 9 targets on 4 classes: only the 3 other classes are tried
    full = APGDT(eps=0.3, steps=10, n_target_classes=9, early_stop=False)(model, x, y)
    assert full.gradient_count == 3 * 24 * 11


def test_restarts_keep_each_samples_best(trained):
    model, test = trained
    one = APGD(eps=0.28, steps=10, restarts=1, seed=7)(model, test.x, test.y)
    three = APGD(eps=0.28, steps=10, restarts=3, seed=7)(model, test.x, test.y)
    assert bool((three.success | ~one.success).all()), "a restart lost a success"
    assert three.success_rate > one.success_rate


def test_early_stop_spends_fewer_gradients_and_keeps_strength(trained):
    model, test = trained
    early = APGD(eps=0.3, steps=20)(model, test.x, test.y)
    full = APGD(eps=0.3, steps=20, early_stop=False)(model, test.x, test.y)
    assert early.gradient_count < full.gradient_count == 21 * len(test.x)
    assert early.success_rate >= full.success_rate - 0.05


def test_same_seed_same_result_and_seeds_matter(cnn, blobs):
    x, y = blobs.x[:12], blobs.y[:12]
    a = APGD(eps=0.1, steps=3, seed=1)(cnn, x, y)
    b = APGD(eps=0.1, steps=3, seed=1)(cnn, x, y)
    c = APGD(eps=0.1, steps=3, seed=2, early_stop=False)(cnn, x, y)
    d = APGD(eps=0.1, steps=3, seed=1, early_stop=False)(cnn, x, y)
    assert torch.equal(a.x_adv, b.x_adv)
    assert not torch.equal(c.x_adv, d.x_adv)
    state = torch.random.get_rng_state()
    APGD(eps=0.1, steps=3, seed=None)(cnn, x, y)
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG was used"


class _Thresholded(nn.Module):
    """Two classes read from the first 8 pixels: z_0 = 0.5, z_1 = 4 sum_{i<8} relu(x_i - 0.6).
    Where those pixels are at 0.3 the gradient is exactly zero in a ball around the image (it is
    masked), yet moving them by an L2 distance under 1 flips the class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lifted = 4 * torch.relu(x.flatten(1)[:, :8] - 0.6).sum(1)
        return torch.stack([torch.full_like(lifted, 0.5), lifted], dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_smoothed_gradient_passes_a_threshold_the_plain_gradient_cannot(seed):
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(20, 1, 16, 16, generator=g)
    x.view(20, -1)[:, :8] = 0.3
    y = torch.zeros(20, dtype=torch.int64)
    model = _Thresholded()
    plain = APGD(eps=1.0, norm="l2", steps=30, seed=seed)(model, x, y)
    smoothed = APGD(eps=1.0, norm="l2", steps=30, smoothing=0.3, seed=seed)(model, x, y)
    assert not bool(plain.success.any()), "a zero gradient should leave APGD where it started"
    assert float(smoothed.success.float().mean()) >= 0.9
    # success is that of the un-noised point, inside the ball and the box
    with torch.no_grad():
        assert torch.equal(smoothed.success, model(smoothed.x_adv).argmax(1) != y)
    assert bool((smoothed.norms["l2"] <= 1.0 + 1e-5).all())
    assert float(smoothed.x_adv.min()) >= 0.0 and float(smoothed.x_adv.max()) <= 1.0
    # one gradient per step as without noise, one forward more for the un-noised loss
    assert smoothed.gradient_count <= plain.gradient_count
    assert smoothed.forward_count > smoothed.gradient_count


def test_registered_names():
    assert type(make_attack("apgd", eps=0.1)) is APGD
    assert type(make_attack("apgd-ce", eps=0.1)) is APGD
    assert make_attack("apgd-ce", eps=0.1).loss == "ce"
    assert make_attack("apgd-dlr", eps=0.1).loss == "dlr"
    assert isinstance(make_attack("apgd-t", eps=0.1, n_target_classes=3), APGDT)
    assert make_attack("apgd-t", eps=0.1).n_target_classes == 9


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: APGD(eps=0.1, norm="l1"), "supports norm linf or l2"),
        (lambda: APGD(eps=0.1, steps=0), "steps must be an integer >= 1"),
        (lambda: APGD(eps=0.1, steps=1.5), "steps must be an integer"),
        (lambda: APGD(eps="0.1"), "eps must be a real number"),
        (lambda: APGD(eps=0.1, loss="margin"), "unknown loss"),
        (lambda: APGD(eps=0.1, rho=1.5), "rho must be a finite number in \\[0, 1\\]"),
        (lambda: APGD(eps=0.1, smoothing=-0.1), "smoothing must be"),
        (lambda: APGDT(eps=0.1, loss="ce"), "targeted DLR loss only"),
        (lambda: APGDT(eps=0.1, n_target_classes=0), "n_target_classes must be an integer >= 1"),
        (lambda: make_attack("apgd-t", eps=0.1, queries=3), "bad options"),
    ],
)
def test_bad_configuration_raises_config_error(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_dlr_on_a_two_class_model_says_what_to_do():
    model = tiny_mlp(classes=2)
    with pytest.raises(InputError, match="use loss='ce'"):
        APGDDLR(eps=0.1, steps=2)(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))


def test_apgd_ce_agrees_with_the_reference_implementation(trained):
    reference = pytest.importorskip("pyautoattack.autopgd_base")
    model, test = trained
    ours = APGD(eps=0.3, steps=50, seed=0)(model, test.x, test.y)
    with torch.random.fork_rng():
        theirs = reference.APGDAttack(model, n_iter=50, norm="Linf", eps=0.3, seed=0, loss="ce").perturb(test.x, test.y)
    with torch.no_grad():
        reference_robust = float((model(theirs).argmax(1) == test.y).float().mean())
    # same algorithm, different random starts: within 5 of 80 points of each other
    assert abs(ours.robust_accuracy - reference_robust) <= 5 / 80 + 1e-9


def test_apgd_t_agrees_with_the_reference_implementation(trained):
    reference = pytest.importorskip("pyautoattack.autopgd_base")
    model, test = trained
    ours = APGDT(eps=0.27, steps=30, n_target_classes=3, seed=0)(model, test.x, test.y)
    with torch.random.fork_rng():
        attack = reference.APGDAttack_targeted(model, n_iter=30, norm="Linf", eps=0.27, seed=0, n_target_classes=3)
        theirs = attack.perturb(test.x, test.y)
    with torch.no_grad():
        reference_robust = float((model(theirs).argmax(1) == test.y).float().mean())
    assert abs(ours.robust_accuracy - reference_robust) <= 5 / 80 + 1e-9, (ours.robust_accuracy, reference_robust)


def test_a_start_at_the_image_reuses_the_clean_forward_pass(cnn, blobs):
    x, y = blobs.x[:16], blobs.y[:16]
    result = APGD(eps=0.2, steps=4, random_start=False, early_stop=False)(cnn, x, y)
    # the input check's pass serves the first gradient: steps + 1 gradients, one final forward
    assert result.gradient_count == 5 * 16
    assert result.forward_count == result.gradient_count + 16
    random = APGD(eps=0.2, steps=4, early_stop=False)(cnn, x, y)
    assert random.forward_count == random.gradient_count + 2 * 16
