"""Figures of the audit report: reliability diagram, minimal-perturbation histogram, gallery."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from hardened.evaluate.calibration import CalibrationResult
from hardened.report.plots import image_for_display, save_figure

__all__ = ["plot_reliability", "plot_minimal_eps", "plot_gallery"]


def plot_reliability(result: CalibrationResult, path: str | os.PathLike[str]) -> Path:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration."""
    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    edges = np.array(result.bin_edges)
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    accuracy = [a if a is not None else 0.0 for a in result.bin_accuracy]
    axis.bar(centers, accuracy, width=width * 0.95, color="#4c72b0", edgecolor="white", label="accuracy")
    axis.plot([0, 1], [0, 1], "--", color="#c44e52", label="perfect calibration")
    axis.set_xlabel("confidence")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(f"Reliability diagram (ECE {100 * result.ece:.1f}%)")
    axis.legend(loc="upper left", fontsize=8)
    return save_figure(figure, path)


def plot_minimal_eps(
    values: Sequence[float], norm: str, path: str | os.PathLike[str], eps_max: float, median: float
) -> Path:
    """Histogram of per-sample minimal successful eps; the title counts samples never fooled."""
    finite = [v for v in values if np.isfinite(v)]
    never = len(values) - len(finite)
    figure, axis = plt.subplots(figsize=(5.0, 3.4))
    axis.hist(finite, bins=20, range=(0, eps_max), color="#55a868", edgecolor="white")
    axis.set_xlabel(f"minimal {norm} perturbation that changes the prediction")
    axis.set_ylabel("images")
    axis.set_title(f"Minimal perturbations (median {median:.3g}; {never} not fooled ≤ {eps_max:g})", fontsize=9)
    return save_figure(figure, path)


def plot_gallery(
    rows: dict[str, Tensor],
    titles: dict[str, list[str]],
    path: str | os.PathLike[str],
    diverging: Sequence[str] = (),
) -> Path:
    """A grid: one row per entry of ``rows`` (N×C×H×W each), one column per example.

    Rows named in ``diverging`` are drawn with a symmetric red-blue map around zero (relevance,
    perturbations); the others as images.
    """
    names = list(rows)
    count = int(next(iter(rows.values())).shape[0]) if rows else 0
    figure, axes = plt.subplots(len(names), max(count, 1), figsize=(1.5 * max(count, 1), 1.65 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        for c in range(count):
            axis = axes[r][c]
            tensor = rows[name][c].detach().cpu().float()
            if name in diverging:
                array = tensor.sum(0).numpy()
                scale = float(np.abs(array).max()) or 1.0
                axis.imshow(array, cmap="bwr", vmin=-scale, vmax=scale)
            else:
                image = image_for_display(tensor)
                axis.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            label = titles.get(name, [""] * count)[c]
            if label:
                axis.set_title(label, fontsize=7)
        axes[r][0].set_ylabel(name, fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)
