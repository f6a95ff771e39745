"""Every registered attack, with every norm it declares, keeps the attack contract."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from contract_checks import EPS, PIXELS, SPATIAL, attack_cases, check_attack, tiny_batch
from hardened.attacks import ATTACKS
from hardened.errors import ConfigError
from helpers import tiny_cnn

#: option -> (a valid value, a value of the wrong type or range) for the one option validator
OPTIONS: dict[str, tuple[Any, Any]] = {
    "eps": (0.1, "0.1"), "steps": (2, 1.5), "restarts": (1, 2.5), "max_pixels": (4, 1.5),
    "pixels_per_step": (2, True), "step_size": (0.01, "0.01"), "momentum": (0.5, "0.5"),
    "seed": (1, -1), "queries": (10, 1.5), "early_stop": (True, "no"), "pixel_fraction": (0.5, 0.0),
}


@pytest.mark.parametrize(("name", "norm"), attack_cases())
def test_attack_keeps_the_contract(name: str, norm: str) -> None:
    x, y = tiny_batch()
    check_attack(name, norm, tiny_cnn(), x, y)


def _base_options(name: str) -> dict[str, Any]:
    norm = ATTACKS.get(name).norms[0]
    if norm == "spatial":
        return dict(SPATIAL)
    return {"max_pixels": PIXELS} if norm == "l0" else {"eps": EPS[norm], "norm": norm}


def _option_cases() -> list[tuple[str, str]]:
    """(attack, option) for each option of ``OPTIONS`` the attack's constructor accepts."""
    cases = []
    for name in ATTACKS.names():
        keywords: set[str] = set()
        for klass in ATTACKS.get(name).__mro__:  # follow **kwargs up to the constructor that ends them
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            parameters = inspect.signature(init).parameters.values()
            keywords |= {p.name for p in parameters if p.kind is p.KEYWORD_ONLY}
            if not any(p.kind is p.VAR_KEYWORD for p in parameters):
                break
        for option in sorted(keywords & OPTIONS.keys()):
            try:  # an option the attack fixes itself (FGSM's steps) is not one it accepts
                ATTACKS.make(name, **(_base_options(name) | {option: OPTIONS[option][0]}))
            except (ConfigError, TypeError):
                continue
            cases.append((name, option))
    return cases


@pytest.mark.parametrize(("name", "option"), _option_cases())
def test_attack_options_are_checked_by_type_and_range(name: str, option: str) -> None:
    """``steps=1.5``, ``eps='0.1'``, ``seed=-1``... are ConfigErrors naming the option."""
    with pytest.raises(ConfigError, match=option):
        ATTACKS.make(name, **(_base_options(name) | {option: OPTIONS[option][1]}))


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_declares_its_capabilities(name: str) -> None:
    cls = ATTACKS.get(name)
    assert cls.norms, f"{name} declares no norms"
    assert not (cls.scores_only and cls.needs_gradients), f"{name}: scores only and gradients"
    assert not (cls.labels_only and cls.needs_gradients), f"{name}: labels only and gradients"


def test_the_old_capability_name_is_refused() -> None:
    from hardened.attacks import Attack

    with pytest.raises(TypeError, match="supports_targeted is now the capability targeted"):
        type("Old", (Attack,), {"supports_targeted": True})
