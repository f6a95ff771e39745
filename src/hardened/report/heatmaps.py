"""Relevance heatmaps (PNG, single and grids), deletion curves and attack animations (GIF).

Relevance is summed over channels and drawn with a diverging colormap centred at zero
(red: evidence for the class, blue: against), symmetric limits per image, over the image in
grey. Files are written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from torch import Tensor  # noqa: E402

from hardened._util.atomic import atomic_path  # noqa: E402
from hardened.errors import InputError  # noqa: E402
from hardened.explain.quality import DeletionCurve  # noqa: E402
from hardened.report.plots import image_for_display, save_figure  # noqa: E402

__all__ = [
    "HEATMAP_CMAP",
    "AnimationFrame",
    "draw_heatmap",
    "plot_heatmap",
    "plot_heatmap_grid",
    "plot_deletion_curves",
    "save_animation",
]

HEATMAP_CMAP = "bwr"


def _relevance_2d(relevance: Tensor) -> np.ndarray:
    """C×H×W relevance -> H×W (summed over channels), float64 numpy."""
    if relevance.dim() != 3:
        raise InputError(f"a relevance map must be C×H×W, got shape {tuple(relevance.shape)}")
    return relevance.detach().cpu().double().sum(dim=0).numpy()


def draw_heatmap(axis: Axes, image: Tensor | None, relevance: Tensor, alpha: float = 0.8) -> None:
    """Draw ``relevance`` (C×H×W) over ``image`` (C×H×W, optional) on ``axis``."""
    heat = _relevance_2d(relevance)
    limit = float(np.abs(heat).max()) or 1.0
    if image is not None:
        axis.imshow(image_for_display(image.detach().cpu().float().mean(dim=0, keepdim=True)),
                    cmap="gray", vmin=0, vmax=1)
    axis.imshow(heat, cmap=HEATMAP_CMAP, vmin=-limit, vmax=limit, alpha=alpha if image is not None else 1.0)
    axis.axis("off")


def plot_heatmap(
    image: Tensor, relevance: Tensor, path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """One image beside its relevance heatmap (both C×H×W)."""
    figure, axes = plt.subplots(1, 2, figsize=(4.4, 2.4))
    axes[0].imshow(image_for_display(image), cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
    axes[0].axis("off")
    draw_heatmap(axes[1], image, relevance)
    if title:
        figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)


def plot_heatmap_grid(
    images: Tensor,
    maps: Mapping[str, Tensor],
    path: str | os.PathLike[str],
    titles: Sequence[str] | None = None,
    max_images: int = 8,
) -> Path:
    """A grid: the images in the top row, then one row of heatmaps per method in ``maps``
    (each N×C×H×W, same N as ``images``)."""
    count = min(int(images.shape[0]), max_images)
    rows = 1 + len(maps)
    figure, axes = plt.subplots(rows, max(count, 1), figsize=(1.5 * max(count, 1), 1.6 * rows), squeeze=False)
    for i in range(count):
        axes[0][i].imshow(image_for_display(images[i]), cmap="gray" if images.shape[1] == 1 else None, vmin=0, vmax=1)
        axes[0][i].axis("off")
        if titles is not None and i < len(titles):
            axes[0][i].set_title(titles[i], fontsize=7)
        for row, (name, relevance) in enumerate(maps.items(), start=1):
            if relevance.shape[0] != images.shape[0]:
                raise InputError(f"map {name!r} has {relevance.shape[0]} images, expected {images.shape[0]}")
            draw_heatmap(axes[row][i], images[i], relevance[i])
    for row, name in enumerate(maps, start=1):
        axes[row][0].text(-0.08, 0.5, name, transform=axes[row][0].transAxes, rotation=90,
                          va="center", ha="right", fontsize=7)
    return save_figure(figure, path)


def plot_deletion_curves(
    curves: Sequence[DeletionCurve], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Pixel-flipping curves, one line per method, with the area in the legend."""
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for curve in curves:
        axis.plot([100 * f for f in curve.fractions], curve.score, label=f"{curve.method} (area {curve.area:.3f})")
    kind = curves[0].score_kind if curves else "probability"
    axis.set_xlabel("pixels deleted, most relevant first (%)")
    axis.set_ylabel(f"mean {kind} of the explained class")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title(title or "Pixel flipping (lower is better)")
    return save_figure(figure, path)


@dataclass(frozen=True)
class AnimationFrame:
    """One step of an iterative attack: the current image, its perturbation and relevance
    (all C×H×W) and a caption."""

    image: Tensor
    perturbation: Tensor
    relevance: Tensor
    caption: str


def _render_frame(frame: AnimationFrame, dpi: int) -> np.ndarray:
    figure, axes = plt.subplots(1, 3, figsize=(5.4, 2.2))
    axes[0].imshow(image_for_display(frame.image), cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("image", fontsize=8)
    limit = float(frame.perturbation.abs().max()) or 1.0
    axes[1].imshow(frame.perturbation.detach().cpu().float().sum(dim=0).numpy(), cmap="PuOr",
                   vmin=-limit, vmax=limit)
    axes[1].set_title(f"perturbation ±{limit:.2f}", fontsize=8)
    draw_heatmap(axes[2], frame.image, frame.relevance)
    axes[2].set_title("LRP relevance", fontsize=8)
    for axis in axes:
        axis.axis("off")
    figure.suptitle(frame.caption, fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    buffer.seek(0)
    from PIL import Image

    return np.asarray(Image.open(buffer).convert("RGB"))


def save_animation(
    frames: Sequence[AnimationFrame], path: str | os.PathLike[str], *, seconds_per_frame: float = 0.4, dpi: int = 80
) -> Path:
    """Write the frames as a looping animated GIF (atomically)."""
    from PIL import Image

    if not frames:
        raise InputError("an animation needs at least one frame")
    pictures = [Image.fromarray(_render_frame(f, dpi)).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    with atomic_path(path, suffix=".gif") as tmp:
        pictures[0].save(
            tmp, format="GIF", save_all=True, append_images=pictures[1:],
            duration=int(1000 * seconds_per_frame), loop=0,
        )
    return Path(path)
