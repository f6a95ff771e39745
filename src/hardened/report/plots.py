"""Figures from result objects (no computation here), written atomically as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from hardened._util.atomic import atomic_path  # noqa: E402
from hardened.evaluate.sweeps import SuccessCurve, SweepResult  # noqa: E402

__all__ = ["save_figure", "plot_tradeoff", "plot_sweeps", "plot_success_curves", "plot_adversarial_grid", "image_for_display",
           "plot_score_histograms"]


def save_figure(figure: Figure, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Save ``figure`` as PNG atomically and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(figure)
    return Path(path)


def plot_sweeps(sweeps: Sequence[SweepResult], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Robust accuracy against eps, one line per sweep."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for sweep in sweeps:
        axis.plot(sweep.eps, [100 * a for a in sweep.robust_accuracy], marker="o",
                  label=f"{sweep.attack} ({sweep.norm})")
    axis.set_xlabel("eps")
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(title or "Robust accuracy against perturbation size")
    return save_figure(figure, path)


def plot_success_curves(
    curves: Sequence[SuccessCurve], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Attack success rate against perturbation norm, one line per curve (same norm)."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for curve in curves:
        axis.plot(curve.thresholds, [100 * r for r in curve.success_rate], label=curve.attack or curve.norm)
    norm = curves[0].norm if curves else ""
    axis.set_xlabel(f"{norm} norm of the perturbation")
    axis.set_ylabel("attack success rate (%)")
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(title or f"Success rate against {norm} norm")
    return save_figure(figure, path)


def image_for_display(image: Tensor):  # type: ignore[no-untyped-def]
    """C×H×W tensor -> array for ``imshow`` (H×W for one channel, H×W×3 for RGB)."""
    array = image.detach().cpu().float()
    if array.shape[0] == 1:
        return array[0].numpy()
    return array.permute(1, 2, 0).clamp(0, 1).numpy()


def plot_adversarial_grid(
    x: Tensor,
    x_adv: Tensor,
    pred_clean: Tensor,
    pred_adv: Tensor,
    conf_clean: Tensor,
    conf_adv: Tensor,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    max_images: int = 8,
) -> Path:
    """Originals (top row), adversarials (middle) and amplified perturbations (bottom)."""
    count = min(int(x.shape[0]), max_images)
    figure, axes = plt.subplots(3, max(count, 1), figsize=(1.6 * max(count, 1), 5.2), squeeze=False)
    for i in range(count):
        delta = (x_adv[i] - x[i]).detach().cpu()
        scale = float(delta.abs().max()) or 1.0
        cells = [
            (image_for_display(x[i]), f"{classes[int(pred_clean[i])]} {100 * float(conf_clean[i]):.0f}%", "gray"),
            (image_for_display(x_adv[i]), f"{classes[int(pred_adv[i])]} {100 * float(conf_adv[i]):.0f}%", "gray"),
            (image_for_display(delta / (2 * scale) + 0.5), f"±{scale:.2f}", "seismic"),
        ]
        for row, (image, label, cmap) in enumerate(cells):
            axes[row][i].imshow(image, cmap=cmap if image.ndim == 2 else None, vmin=0, vmax=1)
            axes[row][i].set_title(label, fontsize=8)
            axes[row][i].axis("off")
    axes[0][0].set_ylabel("original")
    figure.suptitle("original / adversarial / perturbation (amplified)", fontsize=9)
    return save_figure(figure, path)


def plot_score_histograms(evaluation: Any, path: str | os.PathLike[str], bins: int = 60) -> Path:
    """Reliability-score histograms, ID against each OOD set, with the threshold as a line.

    ``evaluation`` is a ``hardened.guard.GuardEvaluation`` (``id_scores``, ``ood[i].name``,
    ``ood[i].scores``, ``threshold``, ``score``); non-finite scores are left out.
    """
    import numpy as np

    sets = [(f"ID ({evaluation.id_name})", evaluation.id_scores)]
    sets += [(result.name, result.scores) for result in evaluation.ood]
    arrays = [(label, np.asarray(values.detach().cpu(), dtype=float)) for label, values in sets]
    arrays = [(label, a[np.isfinite(a)]) for label, a in arrays]
    pooled = np.concatenate([a for _, a in arrays if a.size] or [np.zeros(1)])
    lo, hi = np.percentile(pooled, [0.5, 99.5])
    lo, hi = min(lo, evaluation.threshold), max(hi, evaluation.threshold)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    figure, axis = plt.subplots(figsize=(6.0, 3.8))
    for label, values in arrays:
        axis.hist(np.clip(values, edges[0], edges[-1]), bins=edges, density=True, histtype="stepfilled",
                  alpha=0.35, label=label)
    axis.axvline(evaluation.threshold, color="black", linestyle="--", label="threshold")
    axis.set_xlabel(f"{evaluation.score} score (higher = less reliable)")
    axis.set_ylabel("density")
    axis.legend(fontsize=8)
    axis.set_title(f"Guard scores: in-distribution against OOD ({evaluation.score})")
    return save_figure(figure, path)


def plot_tradeoff(report: Any, path: str | os.PathLike[str]) -> Path:
    """Trade-off of training methods (a ``TradeoffReport``): clean against robust accuracy
    (white-box PGD filled, transfer hollow) and training time per method."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(report.rows):
        color = colors[i % len(colors)]
        left.scatter(100 * row.clean_accuracy, 100 * row.robust_accuracy, color=color, label=row.method)
        left.scatter(100 * row.clean_accuracy, 100 * row.transfer_accuracy, facecolors="none",
                     edgecolors=color)
        right.barh(row.method, row.train_seconds, color=color)
    left.set_xlabel("clean accuracy (%)")
    left.set_ylabel("robust accuracy (%): PGD filled, transfer hollow")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    left.set_title(f"{report.data} {report.norm} eps={report.eps:g}")
    right.set_xlabel("training time (s)")
    right.invert_yaxis()
    right.grid(alpha=0.3, axis="x")
    right.set_title(f"{report.epochs} epochs, {report.n_labelled} labelled images")
    return save_figure(figure, path)
