"""Explanations: LRP with the library's own rules, composites and canonizers, gradient
baselines, and pixel-flipping quality curves.

``explain_images(model, x, target=None, method="lrp", composite="epsilon-gamma-box") -> Attribution``
"""

from hardened.explain.attribute import (
    METHODS,
    Attribution,
    Explainer,
    check_finite,
    conservation_error,
    explain_images,
    lrp,
)
from hardened.explain.canonizers import BatchNormFolding, Canonizer
from hardened.explain.composites import COMPOSITES, Composite, make_composite
from hardened.explain.rules import AlphaBeta, Epsilon, Gamma, Pass, Rule, ZBox, ZPlus

__all__ = [
    "AlphaBeta",
    "Attribution",
    "BatchNormFolding",
    "COMPOSITES",
    "Canonizer",
    "Composite",
    "Epsilon",
    "Explainer",
    "Gamma",
    "METHODS",
    "Pass",
    "Rule",
    "ZBox",
    "ZPlus",
    "check_finite",
    "conservation_error",
    "explain_images",
    "lrp",
    "make_composite",
]
