"""Attacks: ``attack = PGD(eps=0.3); result = attack(model, x, y)``."""

from __future__ import annotations

from typing import Any

from hardened.attacks.base import Attack, AttackResult, Oracle, attack_in_batches
from hardened.attacks.fgsm import FGM, FGSM
from hardened.attacks.guided import LRPFlip, LRPGrad, LRPMean
from hardened.attacks.pgd import BIM, MIFGSM, PGD
from hardened.errors import ConfigError

__all__ = ["Attack", "AttackResult", "Oracle", "attack_in_batches", "FGSM", "FGM", "PGD", "BIM", "MIFGSM",
           "LRPFlip", "LRPMean", "LRPGrad", "ATTACKS", "make_attack"]

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "fgm": FGM,
    "bim": BIM,
    "ifgsm": BIM,
    "pgd": PGD,
    "mifgsm": MIFGSM,
    "lrp-flip": LRPFlip,
    "lrp-mean": LRPMean,
    "lrp-grad": LRPGrad,
}


def make_attack(name: str, **kwargs: Any) -> Attack:
    """Build an attack by name (``fgsm``, ``fgm``, ``bim``/``ifgsm``, ``pgd``, ``mifgsm``...)."""
    key = name.lower().replace("_", "-")
    if key not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}: use one of {', '.join(sorted(ATTACKS))}")
    try:
        return ATTACKS[key](**kwargs)
    except TypeError as error:
        raise ConfigError(f"bad options for the {key} attack: {error}") from error
