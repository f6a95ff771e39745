"""NES and HopSkipJump: inside the ball and the box, per-sample budgets, HopSkipJump's kept
points all adversarial, its distance against the closed-form distance to a hyperplane, the NES
estimate against the true gradient, and both breaking a trained digits model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from hardened.attacks import NES, PGD, HopSkipJump, make_attack
from hardened.attacks.hsja import hopskipjump
from hardened.data import load_splits
from hardened.errors import ConfigError
from hardened.models.blackbox import TorchTarget
from hardened.train import TrainConfig, train


@pytest.fixture(scope="module")
def digits():
    splits = load_splits("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    train(model, splits.train, config=TrainConfig(epochs=15, batch_size=32, lr=3e-3, seed=0), progress=False)
    model.eval()
    x, y = splits.test.x[:60], splits.test.y[:60]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return model, x[keep], y[keep]


@pytest.mark.filterwarnings("ignore::hardened.errors.BudgetWarning")
@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(["nes", "hsja"]),
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.0, 2.0),
    queries=st.integers(1, 150),
    seed=st.integers(0, 1000),
)
def test_nes_and_hsja_stay_in_the_ball_and_the_box_and_keep_the_budget(name, norm, eps, queries, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4)).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 6, 6, generator=g)
    y = torch.randint(0, 4, (3,), generator=g)
    options = {"samples": 10} if name == "nes" else {"init_evals": 10}
    result = make_attack(name, eps=eps, norm=norm, queries=queries, seed=seed, **options)(model, x, y)
    assert bool((result.norms[norm] <= eps * (1 + 1e-5) + 1e-6).all())
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert result.gradient_count == 0
    with torch.no_grad():
        assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)
    if result.queries is not None:
        assert bool((result.queries <= queries).all())


def _half_space(w: Tensor, b: float):
    """A two-class linear model: class 1 where ``w . x + b > 0``; its decision for a batch."""
    model = nn.Linear(w.numel(), 2, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros_like(w), w]))
        model.bias.copy_(torch.tensor([0.0, b], dtype=torch.float64))
    return nn.Sequential(nn.Flatten(), model)


@pytest.mark.parametrize("norm, dual", [("l2", 2.0), ("linf", 1.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hsja_kept_points_are_adversarial_and_reach_the_closed_form_distance(norm, dual, seed):
    """Distance from ``x`` to the plane ``w . x + b = 0`` is ``|w . x + b| / ||w||_dual``
    (dual of L2 is L2, of Linf is L1); the box is far enough not to matter."""
    g = torch.Generator().manual_seed(seed)
    d = 16
    w = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.full((1, 4, 4), 0.5, dtype=torch.float64)
    exact = 0.05 if norm == "linf" else 0.15
    b = -float(w @ x.flatten()) - exact * float(w.norm(p=dual))  # x on class 0, at distance `exact`
    model = _half_space(w, b)

    def decide(batch: Tensor) -> Tensor:
        with torch.no_grad():
            return model(batch).argmax(1) == 1

    trace: list[Tensor] = []
    found = hopskipjump(decide, x, norm=norm, queries=3000, bounds=(0.0, 1.0),
                        generator=torch.Generator().manual_seed(seed), trace=trace, iterations=40)
    assert found is not None and len(trace) > 5
    assert bool(decide(torch.stack(trace)).all()), "a kept point was not adversarial"
    distance = float((found - x).flatten().norm(p=2 if norm == "l2" else math.inf))
    assert exact <= distance + 1e-9, "closer than the closed-form minimum: the oracle is wrong"
    assert distance <= exact * (1.05 if norm == "l2" else 1.25)
    steps = [float((t - x).flatten().norm(p=2 if norm == "l2" else math.inf)) for t in trace]
    assert distance == min(steps), "the result is not the closest kept point"


def test_nes_estimate_points_along_the_true_gradient():
    """On a linear model the margin's gradient is ``w_y' - w_y``; with m antithetic pairs in d
    dimensions the estimate's cosine to it is about sqrt(m / (m + d)) = 0.98 (m = 200, d = 16)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x = torch.full((1, 1, 4, 4), 0.5)
    with torch.no_grad():
        y = model(x).argmax(1)
        w = model[1].weight
        direction = (w[1 - int(y)] - w[int(y)]).flatten()
    step = 0.01
    result = NES(eps=step, norm="l2", queries=402, samples=400, step_size=step, seed=0)(model, x, y)
    moved = (result.x_adv - x).flatten().double()
    cosine = float(moved @ direction.double() / (moved.norm() * direction.double().norm()))
    assert cosine >= 0.9, f"cosine {cosine:.3f}"


@pytest.mark.parametrize(
    "attack, floor",
    [
        (lambda: NES(eps=0.15, queries=1000, seed=0), 0.3),
        (lambda: NES(eps=1.2, norm="l2", queries=1000, seed=0), 0.3),
        (lambda: HopSkipJump(eps=1.5, queries=1000, seed=0), 0.3),
        (lambda: HopSkipJump(eps=0.15, norm="linf", queries=1000, seed=0), 0.5),
    ],
)
def test_black_box_attacks_break_a_trained_digits_model(digits, attack, floor):
    model, x, y = digits
    instance = attack()
    target = TorchTarget(model)
    result = instance(target, x, y)
    assert result.clean_accuracy == 1.0
    assert result.robust_accuracy <= floor, f"{instance.name}: robust accuracy {result.robust_accuracy}"
    assert result.forward_count == target.queries
    norm = instance.threat.norm
    assert float(result.norms[norm].max()) <= instance.threat.eps * (1 + 1e-5)
    pgd = PGD(eps=instance.threat.eps, norm=norm, steps=20)(model, x, y)
    assert result.robust_accuracy >= pgd.robust_accuracy - 0.05, "a black-box attack beat white-box PGD by a lot"


def test_a_sample_already_misclassified_costs_one_query():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    x = torch.rand(2, 1, 4, 4)
    with torch.no_grad():
        wrong = 1 - model(x).argmax(1)
    for attack in (NES(eps=0.1, queries=50, samples=10), HopSkipJump(eps=0.5, queries=50)):
        result = attack(model, x, wrong)
        assert result.queries is not None and result.queries.tolist() == [1, 1]
        assert torch.equal(result.x_adv, x)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: NES(eps=0.1, samples=3), "even"),
        (lambda: NES(eps=0.1, norm="l1"), "supports norm"),
        (lambda: NES(eps=0.1, sigma=0.0), "sigma"),
        (lambda: HopSkipJump(eps=0.1, norm="l1"), "supports norm"),
        (lambda: HopSkipJump(eps=0.1, gamma=-1.0), "gamma"),
        (lambda: HopSkipJump(eps=0.1, init_evals=0), "init_evals"),
    ],
)
def test_bad_configuration_raises_config_error(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def _target_half_space(w: Tensor, b: float):
    """A three-class linear model with logits ``(0, s, 2 s)``, ``s = w . x + b``: class 2 (the
    target) exactly where ``s > 0``, class 0 where ``s < 0``; class 1 never wins."""
    model = nn.Linear(w.numel(), 3, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros_like(w), w, 2 * w]))
        model.bias.copy_(torch.tensor([0.0, b, 2 * b], dtype=torch.float64))
    return nn.Sequential(nn.Flatten(), model)


@pytest.mark.parametrize("norm, dual", [("l2", 2.0), ("linf", 1.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targeted_hsja_iterates_stay_in_the_target_class_and_reach_the_closed_form(norm, dual, seed):
    """Targeted: every kept point is classified as the target (not merely misclassified), the
    start is the given target-class image, and the result reaches the plane's distance."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, generator=g, dtype=torch.float64)
    x = torch.full((1, 4, 4), 0.5, dtype=torch.float64)
    exact = 0.05 if norm == "linf" else 0.15
    b = -float(w @ x.flatten()) - exact * float(w.norm(p=dual))
    model = _target_half_space(w, b)
    start = (x + 0.3 * w.sign().view(1, 4, 4)).clamp(0, 1)
    with torch.no_grad():
        assert int(model(x[None]).argmax()) == 0 and int(model(start[None]).argmax()) == 2

    def decide(batch: Tensor) -> Tensor:
        with torch.no_grad():
            return model(batch).argmax(1) == 2

    trace: list[Tensor] = []
    found = hopskipjump(decide, x, norm=norm, queries=3000, bounds=(0.0, 1.0), init_tries=1,
                        generator=torch.Generator().manual_seed(seed), starts=start[None], trace=trace,
                        iterations=40)
    assert found is not None and len(trace) > 5
    assert torch.equal(trace[0], start), "the target-class start was not the first kept point"
    with torch.no_grad():
        assert bool((model(torch.stack(trace)).argmax(1) == 2).all()), "a kept point left the target class"
    distance = float((found - x).flatten().norm(p=2 if norm == "l2" else math.inf))
    assert exact <= distance + 1e-9
    assert distance <= exact * (1.05 if norm == "l2" else 1.25)


@pytest.mark.parametrize("norm, eps", [("l2", 4.0), ("linf", 0.5)])
def test_targeted_hsja_reaches_the_targets_on_a_trained_model(digits, norm, eps):
    """Started from a batch image of the target class, the attack ends in that class, inside the
    ball, within its per-sample budget; a sample already in its target class costs one query."""
    model, x, y = digits
    x, y = x[:12], y[:12]
    targets = (y + 1) % 10
    targets[0] = y[0]  # already "in" its target: success at no cost
    budget = 600
    result = HopSkipJump(eps=eps, norm=norm, queries=budget, seed=0)(TorchTarget(model), x, y, targets=targets)
    assert result.queries is not None and bool((result.queries <= budget).all())
    assert int(result.queries[0]) == 1 and bool(result.success[0])
    with torch.no_grad():
        predicted = model(result.x_adv).argmax(1)
    assert torch.equal(result.success, predicted == targets)
    has_start = torch.tensor([bool((y == t).any()) for t in targets])
    assert float(result.success[has_start].float().mean()) >= 0.75
    assert float(result.norms[norm].max()) <= eps * (1 + 1e-5)


def test_a_large_query_is_split_into_model_calls_of_at_most_query_batch():
    from hardened.attacks.base import QUERY_BATCH, Oracle

    sizes: list[int] = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    hook = model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    x = torch.rand(2 * QUERY_BATCH + 7, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    oracle = Oracle(model, 3, n=len(x))
    logits = oracle.query(x, torch.arange(len(x)))
    hook.remove()
    assert sizes == [QUERY_BATCH, QUERY_BATCH, 7]
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-6)
    assert oracle.forward_count == len(x) and int(oracle.queries.sum()) == len(x)
