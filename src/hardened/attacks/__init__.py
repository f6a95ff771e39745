"""Attacks: ``attack = PGD(eps=0.3); result = attack(model, x, y)``.

Every attack registers itself in ``ATTACKS`` (a ``hardened.registry.Registry``) with a decorator
in its own module; importing this package imports those modules. Other packages add attacks
through the ``hardened.attacks`` entry-point group.
"""

from __future__ import annotations

from typing import Any

from hardened.attacks.apgd import APGD, APGDDLR, APGDT
from hardened.attacks.base import ATTACKS, Attack, AttackResult, Oracle, attack_in_batches
from hardened.attacks.fgsm import FGM, FGSM
from hardened.attacks.guided import LRPFlip, LRPGrad, LRPMean
from hardened.attacks.hsja import HopSkipJump
from hardened.attacks.minimal import CW, FMN
from hardened.attacks.nes import NES
from hardened.attacks.onepixel import OnePixel
from hardened.attacks.pgd import BIM, MIFGSM, PGD
from hardened.attacks.spatial import SpatialGrid, SpatialPGD, SpatialRandom
from hardened.attacks.square import Square
from hardened.attacks.transferable import DiverseInputs, LogitEnsemble, TransferMIFGSM

__all__ = ["Attack", "AttackResult", "Oracle", "attack_in_batches", "FGSM", "FGM", "PGD", "BIM", "MIFGSM",
           "LRPFlip", "LRPMean", "LRPGrad", "APGD", "APGDDLR", "APGDT", "Square", "NES", "HopSkipJump",
           "CW", "FMN", "OnePixel", "SpatialGrid", "SpatialRandom", "SpatialPGD",
           "TransferMIFGSM", "LogitEnsemble", "DiverseInputs", "ATTACKS", "make_attack"]


def make_attack(name: str, **kwargs: Any) -> Attack:
    """Build an attack by name (one of ``ATTACKS.names()`` or an alias such as ``ifgsm``)."""
    return ATTACKS.make(name, **kwargs)
