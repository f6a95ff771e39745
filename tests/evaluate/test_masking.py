"""Gradient-masking checks and their answers (EOT, BPDA, log-outputs) on toy defences."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from hardened.errors import ConfigError
from hardened.evaluate.cascade import CascadeStep, run_cascade
from hardened.evaluate.masking import (
    BPDA,
    EOT,
    LogOutputs,
    bpda_model,
    find_input_stage,
    gradient_check,
    plan_countermeasures,
    probability_check,
    randomness_check,
    score_attack_check,
    smoothed_gradient_check,
)
from helpers import tiny_cnn
from masking_toys import Quantise, UniformNoise

PGD_CASCADE = [CascadeStep("fgsm", {}), CascadeStep("pgd", {"steps": 20, "loss": "margin"})]


def _fired(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> set[str]:
    plan = plan_countermeasures(model, x, y)
    return {f.name for f in plan.findings if f.fired}


def test_checks_fire_on_masked_models_and_not_on_the_plain_one(defences, toy_test):
    x, y = toy_test.x[:32], toy_test.y[:32]
    assert _fired(defences["plain"], x, y) == set()
    assert _fired(defences["quantised"], x, y) == {"zero-gradients"}
    assert _fired(defences["randomized"], x, y) == {"randomness"}
    assert _fired(defences["noisy-quantised"], x, y) == {"randomness", "zero-gradients"}


def test_each_finding_says_what_it_means(defences, toy_test):
    x, y = toy_test.x[:16], toy_test.y[:16]
    zero = gradient_check(defences["quantised"], x, y)
    assert zero.fired and zero.answer == "bpda" and zero.numbers["share_zero_or_nonfinite"] == 1.0
    assert "shattered" in zero.meaning
    rand = randomness_check(defences["randomized"], x)
    assert rand.fired and rand.answer == "eot" and rand.numbers["relative_spread"] > 1e-3
    assert not randomness_check(defences["plain"], x).fired
    assert set(zero.to_dict()) == {"name", "fired", "meaning", "answer", "numbers"}


def test_probability_outputs_are_detected_and_answered_by_their_log(toy_net, toy_test):
    x, y = toy_test.x[:16], toy_test.y[:16]
    softmax_model = nn.Sequential(toy_net, nn.Softmax(dim=1))
    finding = probability_check(softmax_model, x)
    assert finding.fired and finding.answer == "log-outputs"
    assert not probability_check(toy_net, x).fired
    plan = plan_countermeasures(softmax_model, x, y)
    assert plan.log_outputs
    logits = toy_net(x).double()
    torch.testing.assert_close(LogOutputs(softmax_model)(x).double(), logits.log_softmax(1), atol=1e-4, rtol=1e-4)


def test_score_attack_check_threshold():
    assert not score_attack_check(0, 500, attack="square").fired
    assert not score_attack_check(1, 500, attack="square").fired  # 0.2% is AutoAttack's threshold
    high = score_attack_check(2, 500, attack="square")
    assert high.fired and "upper bound" in high.meaning


@pytest.mark.parametrize(
    ("name", "expected"), [("plain", 0), ("quantised", 1), ("randomized", 0), ("noisy-quantised", 2)]
)
def test_input_stage_is_found_exactly_where_gradients_are_shattered(defences, toy_test, name, expected):
    assert find_input_stage(defences[name], toy_test.x[:16]) == expected


def test_input_stage_of_traced_torchscript_in_memory_and_from_a_file(defences, toy_test):
    x = toy_test.x[:16]
    traced = torch.jit.trace(defences["quantised"], x[:2])
    assert find_input_stage(traced, x) == 1
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    assert find_input_stage(loaded, x) == 1
    torch.testing.assert_close(bpda_model(loaded, 1)(x), loaded(x), atol=0, rtol=0)


def test_a_module_that_is_not_the_chain_of_its_children_is_not_split(toy_net, toy_test):
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = Quantise()
            self.net = toy_net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x + 0.5 * self.q(x)) - 1.0

    assert find_input_stage(Residual(), toy_test.x[:8]) == 0


def test_bpda_forward_is_exact_and_backward_is_straight_through():
    torch.manual_seed(0)
    net = tiny_cnn().double()
    model = nn.Sequential(Quantise(), *net)
    wrapped = bpda_model(model, 1)
    assert isinstance(wrapped, BPDA)
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(wrapped(x), model(x), atol=0, rtol=0)
    (grad,) = torch.autograd.grad(wrapped(x)[:, 1].sum(), x)
    z = Quantise()(x.detach()).requires_grad_(True)
    (reference,) = torch.autograd.grad(net(z)[:, 1].sum(), z)
    torch.testing.assert_close(grad, reference)
    (masked,) = torch.autograd.grad(model(x)[:, 1].sum(), x)
    assert bool((masked == 0).all()) and bool((grad != 0).any())


def test_eot_gradient_is_the_mean_of_the_per_draw_gradients():
    torch.manual_seed(0)
    net = tiny_cnn().double()
    model = nn.Sequential(UniformNoise(0.2), net)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    k = 6
    with torch.random.fork_rng():
        torch.manual_seed(7)
        noise = torch.rand((k * 3, 1, 8, 8), dtype=torch.float64)
    grads = []
    for draw in range(k):
        x_var = x.clone().requires_grad_(True)
        z = (x_var + 0.2 * (2 * noise[draw * 3 : (draw + 1) * 3] - 1)).clamp(0, 1)
        (g,) = torch.autograd.grad(net(z)[:, 0].sum(), x_var)
        grads.append(g)
    x_var = x.clone().requires_grad_(True)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        (eot_grad,) = torch.autograd.grad(EOT(model, k)(x_var)[:, 0].sum(), x_var)
    torch.testing.assert_close(eot_grad, torch.stack(grads).mean(0))
    torch.testing.assert_close(EOT(net, 4)(x), net(x))


def test_bpda_asked_for_on_a_model_without_an_input_stage_is_a_config_error(toy_net, toy_test):
    with pytest.raises(ConfigError, match="no leading input stage"):
        plan_countermeasures(toy_net, toy_test.x[:8], toy_test.y[:8], bpda=True)
    with pytest.raises(ConfigError, match="masking mode"):
        plan_countermeasures(toy_net, toy_test.x[:8], toy_test.y[:8], masking="maybe")
    with pytest.raises(ConfigError, match="eot_samples"):
        plan_countermeasures(toy_net, toy_test.x[:8], toy_test.y[:8], eot_samples=-1)


# Tolerance: 10 points of robust accuracy on 90 images. Uniform noise and quantisation change the
# function a little, so the defended model's true robustness is near, not equal to, the net's.
TOLERANCE = 0.10


@pytest.mark.parametrize("name", ["quantised", "randomized", "noisy-quantised"])
def test_bpda_and_eot_bring_robust_accuracy_down_to_the_undefended_model(defences, toy_test, name):
    x, y = toy_test.x, toy_test.y
    torch.manual_seed(0)
    plain = run_cascade(defences["plain"], x, y, eps=0.3, preset=PGD_CASCADE, masking="off").robust_accuracy
    masked = run_cascade(defences[name], x, y, eps=0.3, preset=PGD_CASCADE, masking="off").robust_accuracy
    answered = run_cascade(defences[name], x, y, eps=0.3, preset=PGD_CASCADE)
    assert masked >= plain + TOLERANCE, "the toy defence should mask the gradient attacks"
    assert answered.robust_accuracy <= plain + TOLERANCE
    assert answered.countermeasures
    fired = {f.name for f in answered.findings if f.fired}
    assert fired & {"randomness", "zero-gradients"}


def test_shattered_gradients_without_a_separable_stage_fall_back_to_the_score_attack(toy_net, toy_test):
    class Fused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = Quantise()
            self.net = toy_net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2.0 * self.net(self.q(x))

    plan = plan_countermeasures(Fused(), toy_test.x[:16], toy_test.y[:16])
    zero = next(f for f in plan.findings if f.name == "zero-gradients")
    assert zero.fired and zero.answer == "score-attack" and plan.bpda_stage == 0
    assert "score-based attack" in zero.meaning


def test_bpda_switched_off_is_said_and_not_applied(defences, toy_test):
    plan = plan_countermeasures(defences["quantised"], toy_test.x[:16], toy_test.y[:16], bpda=False)
    zero = next(f for f in plan.findings if f.name == "zero-gradients")
    assert zero.fired and zero.answer == "score-attack" and "switched off" in zero.meaning
    assert plan.bpda_stage == 0 and not plan.active
    forced = plan_countermeasures(defences["plain"], toy_test.x[:16], toy_test.y[:16], masking="off", eot_samples=3)
    assert forced.findings == () and forced.eot_samples == 3


def test_smoothed_gradient_check_threshold():
    assert not smoothed_gradient_check(0, 200, attack="apgd-ce(smoothing=0.15)").fired
    assert not smoothed_gradient_check(4, 200, attack="apgd-ce(smoothing=0.15)").fired  # 2%: at the threshold
    high = smoothed_gradient_check(5, 200, attack="apgd-ce(smoothing=0.15)")
    assert high.fired and "upper bound" in high.meaning and high.answer == "smoothed-gradient"
