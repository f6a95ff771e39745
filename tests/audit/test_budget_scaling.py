"""The audit's budget scales with the input size: unchanged up to 3×32×32, about the same cost
(images × steps × pixels) above it, never under the floors, and named to say so."""

from __future__ import annotations

import math

import pytest

from hardened.audit.budget import BUDGETS, REFERENCE_PIXELS, SCALED_FLOORS, scale_budget


@pytest.mark.parametrize("name", sorted(BUDGETS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_small_images_keep_the_named_budget(name, shape):
    assert scale_budget(BUDGETS[name], shape) is BUDGETS[name]


@pytest.mark.parametrize("name", sorted(BUDGETS))
@pytest.mark.parametrize("shape", [(3, 64, 64), (3, 224, 224), (1, 100, 100), (3, 512, 512)])
def test_large_images_get_fewer_images_and_steps_within_the_floors(name, shape):
    plan, scaled = BUDGETS[name], scale_budget(BUDGETS[name], shape)
    factor = math.sqrt(REFERENCE_PIXELS / math.prod(shape))
    for knob, floor in SCALED_FLOORS.items():
        before, after = getattr(plan, knob), getattr(scaled, knob)
        assert after == min(before, max(floor, math.ceil(before * factor))), knob
        assert after <= before
    unscaled = {f for f in plan.__dataclass_fields__ if f not in SCALED_FLOORS and f != "name"}
    assert all(getattr(plan, f) == getattr(scaled, f) for f in unscaled)
    assert scaled.name.startswith(f"{name}, scaled by") and "×".join(map(str, shape)) in scaled.name


def test_at_224_the_quick_audits_work_stays_near_the_reference_cost():
    plan, scaled = BUDGETS["quick"], scale_budget(BUDGETS["quick"], (3, 224, 224))
    pixels = 3 * 224 * 224
    # images × PGD steps × pixels per image: within the floors' reach of the 3×32×32 cost
    reference = plan.n_eval * plan.pgd_steps * REFERENCE_PIXELS
    cost = scaled.n_eval * scaled.pgd_steps * pixels
    assert cost <= 4 * reference
    assert (scaled.n_eval, scaled.pgd_steps, scaled.smoothing_n) == (29, 10, 143)
