"""Figures from result objects (no computation here), written atomically as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from hardened._util.atomic import atomic_path  # noqa: E402
from hardened.evaluate.sweeps import SuccessCurve, SweepResult  # noqa: E402

__all__ = ["save_figure", "plot_sweeps", "plot_success_curves", "plot_adversarial_grid", "image_for_display"]


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
