"""Every registered attack, with every norm it declares, keeps the attack contract."""

from __future__ import annotations

import pytest

from contract_checks import attack_cases, check_attack, tiny_batch
from hardened.attacks import ATTACKS
from helpers import tiny_cnn


@pytest.mark.parametrize(("name", "norm"), attack_cases())
def test_attack_keeps_the_contract(name: str, norm: str) -> None:
    x, y = tiny_batch()
    check_attack(name, norm, tiny_cnn(), x, y)


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
