"""Spatial robustness: accuracy under the worst rotation / translation of a grid.

Engstrom, Tran, Tsipras, Schmidt & Madry 2019, "Exploring the landscape of spatial robustness"
(ICML): an exhaustive grid search (``spatial-grid``) over rotations in ``±rotation`` degrees and
shifts in ``±translation`` pixels finds the exact worst case over the grid, so an image counts as
robust only if every grid point keeps it correct. Three grids: rotations alone, translations
alone, and both together (with an odd number of points each contains the other two, so its
accuracy is the lowest of the three).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hardened._util.batching import predict_logits
from hardened.attacks.spatial import SpatialGrid
from hardened.audit.stage import (
    Stage,
    StageContext,
    StageOutput,
    StageSkipped,
    Summary,
    register_stage,
)
from hardened.audit.tables import Table, pct

__all__ = ["SpatialBudget", "SpatialStage", "SpatialSummary"]


@dataclass(frozen=True)
class SpatialBudget:
    n_spatial: int
    spatial_points: int  # grid values per parameter (odd: the identity is on the grid)
    spatial_rotation: float  # degrees
    spatial_translation: float  # pixels


@dataclass(frozen=True)
class SpatialSummary(Summary):
    """Accuracy on the stage's images: clean, and under the worst grid point of each set."""

    n: int
    clean_accuracy: float
    rotation_accuracy: float
    translation_accuracy: float
    worst_accuracy: float
    rotation: float
    translation: float
    points: int

    def sentence(self) -> str:
        return (
            f"Under the worst of a {self.points}-point grid of rotations (±{self.rotation:g}°) and translations "
            f"(±{self.translation:g} px), {100 * self.worst_accuracy:.1f}% of {self.n} images stay correct "
            f"({100 * self.clean_accuracy:.1f}% untransformed; rotations alone {100 * self.rotation_accuracy:.1f}%, "
            f"translations alone {100 * self.translation_accuracy:.1f}%)."
        )


@register_stage
class SpatialStage(Stage[SpatialBudget]):
    """Exhaustive grid search over rotations and translations (scores only, no gradients)."""

    name = "spatial"
    title = "Robustness to rotations and translations"
    position = 25
    budget_type = SpatialBudget
    summary_type = SpatialSummary
    weight = 1.5

    def run(self, ctx: StageContext[SpatialBudget]) -> StageOutput:
        budget = ctx.budget
        x, y = ctx.test.x[: budget.n_spatial], ctx.test.y[: budget.n_spatial]
        if x.dim() != 4 or min(x.shape[-2:]) < 4:
            raise StageSkipped(f"rotations and translations need images of at least 4×4 pixels, got {tuple(x.shape[1:])}")
        sets = {
            "rotations": (budget.spatial_rotation, 0.0),
            "translations": (0.0, budget.spatial_translation),
            "both": (budget.spatial_rotation, budget.spatial_translation),
        }
        clean = float((predict_logits(ctx.model, x).argmax(1).to(y.device) == y).float().mean())
        rows, accuracy, data, worst = [], {}, {}, torch.zeros(0)
        for label, (rotation, translation) in sets.items():
            attack = SpatialGrid(rotation=rotation, translation=translation, points=budget.spatial_points)
            began = time.perf_counter()
            worst = attack.worst_transforms(ctx.model, x, y)
            correct = predict_logits(ctx.model, attack.transforms.apply(x, worst)).argmax(1).to(y.device) == y
            tried = int(attack.transforms.grid(budget.spatial_points, x).shape[0])
            accuracy[label] = float(correct.float().mean())
            rows.append([label, f"±{rotation:g}°", f"±{translation:g} px", tried,
                         pct(clean), pct(accuracy[label]), tried * len(x)])
            data[label] = {"transforms": tried, "robust_accuracy": accuracy[label], "queries": tried * len(x),
                           "seconds": time.perf_counter() - began, "correct": correct.cpu().tolist()}
        broken = ~torch.tensor(data["both"]["correct"], dtype=torch.bool)
        angles = worst[:, 0].abs().cpu()[broken]
        table = Table.of(
            f"Accuracy under the worst transformation of a grid ({len(x)} images; exhaustive search, "
            f"{budget.spatial_points} values per parameter)",
            ["set", "rotation", "translation", "transforms tried", "clean", "worst case", "queries"], rows,
        )
        notes = (
            "A grid search is exact over its grid only: a finer grid or a first-order search between the grid "
            "points can only lower these accuracies.",
            *([f"Among the {int(broken.sum())} images the worst case breaks, the median rotation it uses is "
               f"{float(angles.median()):.1f}°."] if angles.numel() else []),
        )
        summary = SpatialSummary(
            n=len(x), clean_accuracy=clean, rotation_accuracy=accuracy["rotations"],
            translation_accuracy=accuracy["translations"], worst_accuracy=accuracy["both"],
            rotation=budget.spatial_rotation, translation=budget.spatial_translation, points=budget.spatial_points,
        )
        return StageOutput(summary=summary, tables=(table,), notes=notes,
                           data={"sets": data, "worst_transforms": worst.cpu().tolist(), "clean_accuracy": clean})
