"""How much work the audit may do: ``AuditBudget`` (every knob, flat) and each stage's slice of it.

A stage declares the knobs it reads as a small frozen dataclass (its *budget slice*); the pipeline
hands the stage only that slice, and the stage cache is keyed by it, so changing a knob re-runs
exactly the stages that read it. A slice field missing from ``AuditBudget`` keeps the slice's own
default, so a new stage with new knobs is still one new file.

The named budgets are set for images of up to ``REFERENCE_PIXELS`` values (CIFAR's 3×32×32;
MNIST's 28×28 is smaller). For larger images ``scale_budget`` shrinks them so that an audit
costs about the same: the work is images × steps × cost per image, and the cost per image grows
with the pixel count, so the image counts and the per-image steps (PGD steps, noise samples) are
each scaled by ``sqrt(REFERENCE_PIXELS / pixels)`` (1/7 at 3×224×224), with floors that keep
every section meaningful. The scaled budget's name says so, and with it the report.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from hardened.errors import ConfigError

__all__ = ["BUDGETS", "REFERENCE_PIXELS", "AuditBudget", "budget_slice", "check_budget", "scale_budget"]

B = TypeVar("B")


@dataclass(frozen=True)
class AuditBudget:
    """How much work each stage may do. ``quick`` fits in a few minutes on 2 CPU cores."""

    name: str
    n_eval: int  # test images for sweeps and sanity checks
    pgd_steps: int
    eps_linf: tuple[float, ...]
    eps_l2: tuple[float, ...]
    headline_linf: float
    headline_l2: float
    n_minimal: int  # images of the minimal-perturbation stage (FMN, Linf and L2)
    fmn_steps: int
    n_spatial: int  # images of the spatial stage's grid search
    spatial_points: int  # grid values per transformation parameter (odd keeps the identity)
    spatial_rotation: float  # degrees, either way
    spatial_translation: float  # pixels, either way
    n_gallery: int
    n_guided: int
    n_certify: int
    smoothing_n: int
    smoothing_sigma: float
    ibp_eps: float
    n_guard_fit: int
    guard_epochs: int
    n_guard_eval: int
    strong_steps_factor: int
    strong_restarts: int
    cascade_preset: str  # hardened.evaluate.cascade.PRESETS: the robustness stage's attacks
    # images per cascade batch: the unit a torchrun audit splits over its ranks (fixed, not
    # derived from the number of ranks, so the figures do not depend on it)
    cascade_batch: int = 64


BUDGETS: dict[str, AuditBudget] = {
    "quick": AuditBudget(
        name="quick", n_eval=200, pgd_steps=20,
        eps_linf=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3), eps_l2=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
        headline_linf=0.1, headline_l2=1.0, n_minimal=64, fmn_steps=100, n_spatial=100, spatial_points=5,
        spatial_rotation=30.0, spatial_translation=3.0, n_gallery=6,
        n_guided=64, n_certify=40, smoothing_n=1_000, smoothing_sigma=0.25, ibp_eps=0.01,
        n_guard_fit=3_000, guard_epochs=3, n_guard_eval=300, strong_steps_factor=3, strong_restarts=2,
        cascade_preset="quick",
    ),
    "standard": AuditBudget(
        name="standard", n_eval=1_000, pgd_steps=40,
        eps_linf=(0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3), eps_l2=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
        headline_linf=0.1, headline_l2=1.0, n_minimal=200, fmn_steps=200, n_spatial=500, spatial_points=7,
        spatial_rotation=30.0, spatial_translation=3.0, n_gallery=8,
        n_guided=200, n_certify=100, smoothing_n=10_000, smoothing_sigma=0.25, ibp_eps=0.01,
        n_guard_fit=4_000, guard_epochs=8, n_guard_eval=1_000, strong_steps_factor=5, strong_restarts=3,
        cascade_preset="standard",
    ),
    "thorough": AuditBudget(
        name="thorough", n_eval=10_000, pgd_steps=100,
        eps_linf=(0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3), eps_l2=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0),
        headline_linf=0.1, headline_l2=1.0, n_minimal=1_000, fmn_steps=500, n_spatial=2_000, spatial_points=9,
        spatial_rotation=30.0, spatial_translation=3.0, n_gallery=10,
        n_guided=1_000, n_certify=500, smoothing_n=100_000, smoothing_sigma=0.25, ibp_eps=0.01,
        n_guard_fit=20_000, guard_epochs=20, n_guard_eval=5_000, strong_steps_factor=10, strong_restarts=5,
        cascade_preset="thorough",
    ),
}


def check_budget(budget: str | AuditBudget) -> AuditBudget:
    """The named budget (or a custom ``AuditBudget`` as is); an unknown name is a ConfigError."""
    if isinstance(budget, AuditBudget):
        return budget
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}: use one of {', '.join(BUDGETS)}")
    return BUDGETS[budget]


REFERENCE_PIXELS = 3 * 32 * 32
#: the knobs ``scale_budget`` shrinks for large images, each with the least it keeps
SCALED_FLOORS: dict[str, int] = {
    "n_eval": 16, "n_minimal": 8, "n_guided": 8, "n_certify": 4, "smoothing_n": 100,
    "n_guard_fit": 64, "n_guard_eval": 32, "pgd_steps": 10, "n_spatial": 16, "fmn_steps": 20,
}


def scale_budget(budget: AuditBudget, input_shape: Sequence[int]) -> AuditBudget:
    """``budget`` for images of ``input_shape`` (C×H×W): unchanged up to ``REFERENCE_PIXELS``
    values, else every knob of ``SCALED_FLOORS`` times ``sqrt(REFERENCE_PIXELS / pixels)``
    (rounded up, at least its floor and at most its value), named to say so."""
    pixels = math.prod(int(d) for d in input_shape)
    if pixels <= REFERENCE_PIXELS:
        return budget
    factor = math.sqrt(REFERENCE_PIXELS / pixels)
    changes = {
        name: min(getattr(budget, name), max(floor, math.ceil(getattr(budget, name) * factor)))
        for name, floor in SCALED_FLOORS.items()
    }
    shape = "×".join(str(int(d)) for d in input_shape)
    name = (f"{budget.name}, scaled by {factor:.2g} for {shape} inputs ({pixels / REFERENCE_PIXELS:.0f}× "
            f"the pixels of 3×32×32): {changes['n_eval']} images, {changes['pgd_steps']} PGD steps, "
            f"{changes['smoothing_n']} noise samples")
    return replace(budget, name=name, **changes)


def budget_slice(budget: AuditBudget, slice_type: type[B]) -> B:
    """The ``slice_type`` dataclass filled from ``budget``'s fields of the same names.

    A field that ``AuditBudget`` lacks keeps the slice's default; one without a default is a
    ConfigError (the stage asks for a knob nobody sets).
    """
    if not dataclasses.is_dataclass(slice_type):
        raise ConfigError(f"a stage's budget slice must be a dataclass, got {slice_type!r}")
    values: dict[str, Any] = {}
    for item in dataclasses.fields(slice_type):
        if hasattr(budget, item.name):
            values[item.name] = getattr(budget, item.name)
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise ConfigError(
                f"budget slice {slice_type.__name__} needs {item.name!r}, which AuditBudget does not "
                "have: give the field a default in the slice or add it to AuditBudget"
            )
    return slice_type(**values)
