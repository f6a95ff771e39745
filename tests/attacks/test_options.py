"""Attack options are checked once: wrong types and ranges are ConfigErrors naming the option, and a
budget whose ball contains the pixel box gives a BudgetWarning (closed-form box diameters)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hardened._util.validate import SEED_MAX, check_flag, check_int, check_real, check_seed
from hardened.attacks import BIM, FGM, FGSM, MIFGSM, PGD, LRPFlip, LRPGrad, LRPMean, make_attack
from hardened.attacks.options import warn_if_vacuous
from hardened.errors import BudgetWarning, ConfigError, HardenedWarning
from hardened.threat import ThreatModel
from hardened.train.methods import make_method
from helpers import tiny_cnn

EPS_ATTACKS = [PGD, BIM, MIFGSM, FGSM, FGM, LRPGrad]
STEP_ATTACKS = [PGD, BIM, MIFGSM, LRPGrad]


@pytest.mark.parametrize("cls", EPS_ATTACKS)
@pytest.mark.parametrize(
    "eps, match",
    [("0.1", "eps must be a real number"), (True, "eps must be a real number"), (None, "eps must be"),
     (-0.1, "eps must be a finite number >= 0"), (math.nan, "eps must be a finite"),
     (math.inf, "eps must be a finite"), (torch.tensor(0.1), "eps must be a real number")],
)
def test_eps_must_be_a_real_number(cls, eps, match):
    with pytest.raises(ConfigError, match=match):
        cls(eps=eps)


@pytest.mark.parametrize("cls", STEP_ATTACKS)
@pytest.mark.parametrize("steps", [1.5, 2.0, True, "3", 0, -2, None])
def test_steps_must_be_a_positive_integer(cls, steps):
    with pytest.raises(ConfigError, match="steps must be an integer"):
        cls(eps=0.1, steps=steps)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: PGD(eps=0.1, step_size="0.01"), "step_size must be a real number"),
        (lambda: PGD(eps=0.1, step_size=-0.01), "step_size must be a finite number >= 0"),
        (lambda: PGD(eps=0.1, restarts=2.5), "restarts must be an integer"),
        (lambda: PGD(eps=0.1, restarts=0), "restarts must be an integer >= 1"),
        (lambda: PGD(eps=0.1, momentum=-1), "momentum must be a finite number >= 0"),
        (lambda: PGD(eps=0.1, momentum="1"), "momentum must be a real number"),
        (lambda: PGD(eps=0.1, early_stop="no"), "early_stop must be True or False"),
        (lambda: PGD(eps=0.1, random_start=1), "random_start must be"),
        (lambda: PGD(eps=0.1, seed=-1), "seed must be an integer in"),
        (lambda: PGD(eps=0.1, seed=1.5), "seed must be an integer"),
        (lambda: PGD(eps=0.1, seed=2**64), "seed must be an integer in"),
        (lambda: PGD(eps=0.1, bounds=("0", "1")), "bounds must be"),
        (lambda: PGD(eps=0.1, bounds=(1.0, 0.0)), "bounds must be"),
        (lambda: PGD(eps=0.1, bounds=(0.0,)), "bounds must be"),
        (lambda: PGD(eps=0.1, schedule="warp"), "unknown schedule"),
        (lambda: LRPGrad(eps=0.1, pixel_fraction=0), "pixel_fraction must be a finite number in \\(0, 1\\]"),
        (lambda: LRPGrad(eps=0.1, pixel_fraction=1.5), "pixel_fraction"),
        (lambda: LRPGrad(eps=0.1, norm="l1"), "LRP-grad supports norm linf or l2"),
        (lambda: LRPFlip(max_pixels=1.5), "max_pixels must be an integer"),
        (lambda: LRPFlip(max_pixels=True), "max_pixels must be an integer"),
        (lambda: LRPMean(pixels_per_step=0), "pixels_per_step must be an integer >= 1"),
        (lambda: LRPFlip(seed="7"), "seed must be an integer"),
        (lambda: LRPMean(fill=True), "fill must be a real number"),
        (lambda: LRPMean(fill=("0.5",)), "fill must be a real number"),
        (lambda: LRPMean(fill=[0.5, 1.5]), "fill must be a finite number in \\[0, 1\\]"),
        (lambda: LRPMean(fill=[]), "empty"),
        (lambda: make_attack("pgd", eps="0.1"), "eps must be a real number"),
        (lambda: make_attack("mifgsm", eps="0.1"), "eps must be a real number"),
        (lambda: make_attack("fgsm", eps=0.1, norm="l7"), "unknown norm"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_numpy_scalars_are_accepted_and_stored_as_plain_python():
    attack = PGD(eps=np.float32(0.25), steps=np.int64(3), restarts=np.int32(2), momentum=np.float64(0.5),
                 seed=np.uint16(4))
    assert (attack.steps, attack.restarts, attack.seed) == (3, 2, 4)
    assert type(attack.steps) is int and type(attack.step_size) is float and type(attack.momentum) is float
    json.dumps(attack.params())


@pytest.mark.parametrize(
    "options, match",
    [({"eps": "0.1"}, "eps must be > 0"), ({"eps": True}, "eps must be > 0"),
     ({"eps": 0.1, "steps": 1.5}, "steps must be an integer"),
     ({"eps": 0.1, "step_size": "0.1"}, "step size must be a real number")],
)
def test_training_methods_share_the_checks(options, match):
    with pytest.raises(ConfigError, match=match):
        make_method("pgd", **options)


@given(value=st.integers(-10, 10), low=st.integers(-5, 5))
def test_check_int_accepts_exactly_the_integers_in_range(value, low):
    if value >= low:
        assert check_int(value, "n", minimum=low) == value
    else:
        with pytest.raises(ConfigError, match=f"n must be an integer >= {low}, got {value}"):
            check_int(value, "n", minimum=low)
    with pytest.raises(ConfigError, match="n must be an integer"):
        check_int(value + 0.5, "n")


@given(value=st.floats(allow_nan=True, allow_infinity=True), low=st.floats(-2, 2), open_below=st.booleans())
def test_check_real_bounds_are_closed_or_open(value, low, open_below):
    inside = math.isfinite(value) and (value > low if open_below else value >= low)
    if inside:
        assert check_real(value, "x", minimum=low, open_below=open_below) == value
    else:
        with pytest.raises(ConfigError, match="x must be a finite number"):
            check_real(value, "x", minimum=low, open_below=open_below)


def test_typed_checks_refuse_bools_strings_and_tensors():
    for check in (lambda v: check_int(v, "n"), lambda v: check_real(v, "x")):
        for bad in (True, "1", torch.tensor(1), [1], None):
            with pytest.raises(ConfigError):
                check(bad)
    assert check_flag(False, "f") is False
    with pytest.raises(ConfigError, match="f must be True or False"):
        check_flag(0, "f")
    assert check_seed(None) is None and check_seed(SEED_MAX) == SEED_MAX
    with pytest.raises(ConfigError, match="seed"):
        check_seed(SEED_MAX + 1)


def test_budget_warning_is_the_librarys_user_warning():
    assert issubclass(BudgetWarning, HardenedWarning) and issubclass(HardenedWarning, UserWarning)


def _diameter(norm: str, width: float, dim: int) -> float:
    return width * {"linf": 1.0, "l2": math.sqrt(dim), "l1": float(dim)}[norm]


@settings(max_examples=60, deadline=None)
@given(norm=st.sampled_from(["linf", "l2", "l1"]), ratio=st.floats(0.0, 3.0), dim=st.integers(1, 5000),
       lo=st.floats(-2, 1), width=st.floats(0.1, 300))
def test_warning_iff_the_ball_contains_the_box(norm, ratio, dim, lo, width):
    diameter = _diameter(norm, width, dim)
    threat = ThreatModel(norm, ratio * diameter, (lo, lo + width))
    expected = threat.eps >= threat.diameter(dim)
    assert math.isclose(threat.diameter(dim), diameter, rel_tol=1e-12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_if_vacuous(threat, dim) == expected
    assert [w.category for w in caught] == ([BudgetWarning] if expected else [])


@pytest.mark.parametrize(
    "norm, eps, warns",
    [("linf", 5.0, True), ("linf", 1.0, True), ("linf", 0.999, False), ("linf", 0.3, False),
     ("l2", 1e30, True), ("l2", 8.0, True), ("l2", 7.99, False), ("l1", 64.0, True), ("l1", 63.9, False)],
)
def test_attacks_warn_at_call_time_for_8x8_images(norm, eps, warns):
    model = tiny_cnn()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])  # 64 values: L2 diameter 8, L1 diameter 64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = FGSM(eps=eps, norm=norm)(model, x, y)
    budget = [w for w in caught if issubclass(w.category, BudgetWarning)]
    assert len(budget) == int(warns)
    if warns:
        assert f"{norm} eps {eps:g}" in str(budget[0].message) and "8/255" in str(budget[0].message)
        assert budget[0].filename == __file__  # points at the caller's line
    assert result.x_adv.shape == x.shape


def test_linf_training_budget_warns_at_construction():
    with pytest.warns(BudgetWarning, match="linf eps 5"):
        make_method("pgd", eps=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetWarning)
        make_method("pgd", eps=0.3)
