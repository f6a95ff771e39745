"""The attack kernel: PGD pinned bit for bit against a literal re-implementation, the hooks'
contracts (rows, retirement, per-sample independence), BestIterate against brute force, the
schedules in closed form, and the training methods using the public kernel."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hardened.attacks import MIFGSM, PGD, Oracle
from hardened.attacks.kernel import (
    BestIterate,
    Momentum,
    StepView,
    attack_objective,
    iterate,
    rows,
    start_point,
    steepest,
    step_schedule,
    step_size_at,
    success_stop,
)
from hardened.errors import ConfigError
from hardened.threat import ThreatModel
from hardened.train.methods import TRADES, craft
from helpers import tiny_cnn, tiny_mlp


def _literal_pgd(model, x, y, *, eps, norm, steps, step_size, random_start, early_stop, seed,
                 momentum=0.0, targets=None, loss="ce"):
    """PGD written out plainly: start, then per step gradient, retire, momentum, step, project."""
    threat = ThreatModel(norm, eps)
    generator = torch.Generator().manual_seed(seed)
    x_adv = threat.random_start(x, generator) if random_start else x.clone()
    goal = y if targets is None else targets
    sign = -1.0 if targets is not None else 1.0
    accumulated = torch.zeros_like(x)
    active = torch.arange(len(x))
    for _ in range(steps):
        x_var = x_adv[active].detach().requires_grad_(True)
        logits = model(x_var)
        if loss == "ce":
            values = sign * F.cross_entropy(logits, goal[active], reduction="none")
        else:
            own = logits.gather(1, goal[active, None]).squeeze(1)
            other = logits.scatter(1, goal[active, None], float("-inf")).amax(1)
            values = (own - other) if targets is not None else (other - own)
        (grad,) = torch.autograd.grad(values.sum(), x_var)
        if early_stop:
            pred = logits.argmax(1)
            done = pred == targets[active] if targets is not None else pred != y[active]
            active, grad = active[~done], grad[~done]
            if active.numel() == 0:
                break
        if momentum > 0:
            l1 = grad.abs().flatten(1).sum(1).clamp(min=1e-12).view(-1, 1, 1, 1)
            grad = momentum * accumulated[active] + grad / l1
            accumulated[active] = grad
        if norm == "linf":
            step = step_size * grad.sign()
            moved = x_adv[active] + step
            delta = (moved - x[active]).clamp(-eps, eps)  # the Linf ball, then the box
            x_adv[active] = (x[active] + delta).clamp(0.0, 1.0)
        else:
            length = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            x_adv[active] = threat.project(x_adv[active] + step_size * (grad / (length + 1e-12)), x[active])
    return threat.project(x_adv, x)


@pytest.mark.parametrize("norm, eps", [("linf", 0.15), ("l2", 0.8)])
@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("early_stop", [True, False])
@pytest.mark.parametrize("momentum, targeted, loss", [(0.0, False, "ce"), (0.8, False, "margin"), (0.0, True, "ce")])
def test_pgd_is_bit_identical_to_a_literal_implementation(norm, eps, random_start, early_stop, momentum, targeted, loss):
    model = tiny_cnn(seed=4)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(10, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (10,), generator=g)
    targets = (y + 1) % 3 if targeted else None
    step_size = eps / 3
    expected = _literal_pgd(model, x, y, eps=eps, norm=norm, steps=6, step_size=step_size,
                            random_start=random_start, early_stop=early_stop, seed=9,
                            momentum=momentum, targets=targets, loss=loss)
    attack = PGD(eps=eps, norm=norm, steps=6, step_size=step_size, random_start=random_start,
                 early_stop=early_stop, seed=9, momentum=momentum, loss=loss)
    result = attack(model, x, y, targets=targets)
    assert torch.equal(result.x_adv, expected)


def _oracle(model) -> Oracle:
    return Oracle(model, 3)


def test_retired_samples_are_frozen_and_cost_no_gradients():
    model = tiny_mlp(seed=2).double()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    threat = ThreatModel("linf", 0.5)
    attacked_rows: list[int] = []
    last_active: list[torch.Tensor] = []

    def stop(logits, index):
        attacked_rows.append(logits.shape[0])
        return success_stop(y)(logits, index)

    def direction(view: StepView):
        last_active.append(torch.arange(len(x)) if view.index is None else view.index.clone())
        return view.grad.sign()

    oracle = _oracle(model)
    out = iterate(oracle, x, x.clone(), threat=threat, steps=12, step_size=0.05,
                  objective=attack_objective("ce", y), direction=direction, stop=stop)
    assert oracle.gradient_count == sum(attacked_rows) < 12 * len(x)  # retired rows cost nothing
    retired = torch.ones(len(x), dtype=torch.bool)
    retired[last_active[-1]] = False
    assert bool(retired.any())
    with torch.no_grad():
        pred = model(out).argmax(1)
    assert bool((pred[retired] != y[retired]).all()), "a retired sample moved after it succeeded"
    # replaying one sample alone gives the same final iterate (per-sample independence)
    for i in range(len(x)):
        alone = iterate(_oracle(model), x[i:i + 1], x[i:i + 1].clone(), threat=threat, steps=12,
                        step_size=0.05, objective=attack_objective("ce", y[i:i + 1]),
                        direction=steepest("linf"), stop=success_stop(y[i:i + 1]))
        torch.testing.assert_close(alone, out[i:i + 1], rtol=0, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["linf", "l2", "l1"]),
       momentum=st.sampled_from([0.0, 0.9]), early=st.booleans())
def test_batch_equals_one_sample_at_a_time(seed, norm, momentum, early):
    """Every hook sees the right rows: running the batch equals running each sample alone."""
    model = tiny_mlp(seed=seed % 7).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (5,), generator=g)
    p = torch.rand(5, 3, generator=g, dtype=torch.float64).softmax(1)
    threat = ThreatModel(norm, {"linf": 0.2, "l2": 1.0, "l1": 4.0}[norm])

    def run(xs, ys, ps):
        def objective(logits, index):  # per-sample data gathered by index, as TRADES does
            return -(logits.log_softmax(1) * rows(ps, index)).sum(1) + attack_objective("margin", ys)(logits, index)

        direction = Momentum(xs, momentum, norm) if momentum else steepest(norm)
        return iterate(_oracle(model), xs, xs.clone(), threat=threat, steps=5,
                       step_size=step_schedule(threat.eps / 3, 5, "cosine"), objective=objective,
                       direction=direction, stop=success_stop(ys) if early else None)

    batch = run(x, y, p)
    for i in range(len(x)):
        torch.testing.assert_close(run(x[i:i + 1], y[i:i + 1], p[i:i + 1]), batch[i:i + 1], rtol=0, atol=1e-10)


def test_kernel_reuses_a_primed_graph_for_the_first_step():
    model = tiny_cnn()
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0])
    oracle = _oracle(model)
    x_var = x.clone().requires_grad_(True)
    oracle.prime(x_var, model(x_var))
    out = iterate(oracle, x, x.clone(), threat=ThreatModel("linf", 0.1), steps=3, step_size=0.05,
                  objective=attack_objective("ce", y), direction=steepest("linf"))
    assert (oracle.forward_count, oracle.gradient_count) == (2 * 4, 3 * 4)
    fresh = iterate(_oracle(model), x, x.clone(), threat=ThreatModel("linf", 0.1), steps=3,
                    step_size=0.05, objective=attack_objective("ce", y), direction=steepest("linf"))
    assert torch.equal(out, fresh)


def test_custom_projection_hook_is_used():
    model = tiny_cnn()
    x = torch.full((2, 1, 8, 8), 0.5)
    y = torch.tensor([0, 1])
    calls = []

    def project(x_adv, clean):
        calls.append(x_adv.shape[0])
        return clean  # a projection onto the clean image: nothing may move

    out = iterate(_oracle(model), x, x.clone(), threat=ThreatModel("linf", 0.3), steps=4, step_size=0.1,
                  objective=attack_objective("ce", y), direction=steepest("linf"), project=project)
    assert calls == [2, 2, 2, 2] and torch.equal(out, x)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(1, 6), rounds=st.integers(1, 5))
def test_best_iterate_keeps_the_lexicographic_maximum(data, n, rounds):
    x = torch.zeros(n, 1, 2, 2)
    best = BestIterate(x)
    history: list[list[tuple[float, float, float]]] = [[] for _ in range(n)]
    for r in range(1, rounds + 1):
        subset = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
        index = torch.tensor(sorted(subset))
        rank = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0]), min_size=len(index), max_size=len(index))))
        value = torch.tensor(data.draw(st.lists(st.integers(-3, 3), min_size=len(index), max_size=len(index))), dtype=torch.float32)
        candidate = torch.full((len(index), 1, 2, 2), float(r))
        best.update(candidate, rank, value, index)
        for k, i in enumerate(index.tolist()):
            history[i].append((float(rank[k]), float(value[k]), float(r)))
    for i in range(n):
        if not history[i]:
            assert float(best.x[i].max()) == 0.0 and float(best.rank[i]) == 0.0
            continue
        # the first candidate with the largest (rank, value) wins (ties keep the earlier one)
        top = max(history[i], key=lambda h: (h[0], h[1], -h[2]))
        assert float(best.x[i, 0, 0, 0]) == top[2]
        assert (float(best.rank[i]), float(best.value[i])) == (top[0], top[1])


@given(steps=st.integers(1, 50), base=st.floats(0.0, 2.0))
def test_schedules_in_closed_form(steps, base):
    assert step_schedule(base, steps, "constant") == base
    cosine, halving = step_schedule(base, steps, "cosine"), step_schedule(base, steps, "step")
    for t in range(steps):
        assert cosine(t) == pytest.approx(base * (1 + math.cos(math.pi * t / steps)) / 2)
        expected = base * (1.0 if t < steps // 2 else 0.5 if t < (3 * steps) // 4 else 0.25)
        assert halving(t) == pytest.approx(expected) == step_size_at(base, t, steps, "step")
    with pytest.raises(ConfigError, match="unknown schedule"):
        step_schedule(base, steps, "warp")


def test_start_points():
    threat = ThreatModel("l2", 0.5)
    x = torch.rand(3, 1, 4, 4)
    assert torch.equal(start_point(threat, x, False, None), x)
    uniform = start_point(threat, x, True, torch.Generator().manual_seed(0))
    radial = start_point(threat, x, "radial", torch.Generator().manual_seed(0))
    assert bool(threat.contains(uniform, x).all()) and bool(threat.contains(radial, x).all())
    assert not torch.equal(uniform, radial)


@pytest.mark.parametrize("norm, eps", [("linf", 0.2), ("l2", 1.0)])
@pytest.mark.parametrize("random_start", [True, False])
def test_training_craft_is_pgd_without_early_stopping(norm, eps, random_start):
    model = tiny_cnn(seed=5)
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)
    crafted, gradients = craft(model, x, y, ThreatModel(norm, eps), steps=4, step_size=eps / 3,
                               random_start=random_start, generator=torch.Generator().manual_seed(11))
    attacked = PGD(eps=eps, norm=norm, steps=4, step_size=eps / 3, random_start=random_start,
                   early_stop=False, seed=11)(model, x, y)
    torch.testing.assert_close(crafted, attacked.x_adv, rtol=0, atol=1e-6)
    assert gradients == attacked.gradient_count == 4 * 6


def test_trades_inner_maximisation_runs_through_the_kernel_and_raises_the_kl():
    model = tiny_cnn(seed=1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
    none = TRADES(eps=1e-6, steps=1, step_size=1e-9, beta=1.0).batch_loss(model, x, y, torch.Generator().manual_seed(1)).detach()
    strong = TRADES(eps=0.3, steps=5, beta=1.0).batch_loss(model, x, y, torch.Generator().manual_seed(1)).detach()
    clean = F.cross_entropy(model(x), y).detach()
    assert float(none) == pytest.approx(float(clean), abs=1e-4)  # x' ~ x: the KL term vanishes
    assert float(strong) > float(clean) + 1e-4


def test_mifgsm_default_step_is_eps_over_steps():
    assert MIFGSM(eps=0.3, steps=10).step_size == 0.3 / 10
    assert PGD(eps=0.3, steps=10).step_size == 2.5 * 0.3 / 10
