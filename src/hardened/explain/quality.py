"""Explanation quality by pixel flipping (deletion): remove the most relevant pixels first and
watch the explained class's score fall (Samek et al. 2017, "Evaluating the visualization of what
a deep neural network has learned"). A faster fall (smaller area under the curve) means the map
found the evidence the model uses; a random map gives the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hardened._util.batching import eval_mode
from hardened._util.checks import check_images, check_labels
from hardened.errors import ConfigError, InputError

__all__ = ["DeletionCurve", "QUALITY_METHODS", "deletion_curve", "compare_explanations", "pixel_order"]

SCORES = ("probability", "logit")


@dataclass(frozen=True)
class DeletionCurve:
    """Mean score of the explained class after deleting the top ``fraction`` of pixels.

    Attributes:
        method: the explanation method the pixel order came from.
        fractions: fraction of pixels (H×W positions) deleted, ascending from 0.
        score: mean score over the images at each fraction.
        area: trapezoidal area under ``score`` over ``fractions`` divided by the fraction
            range (lower = better explanation).
        n: number of images; score_kind: ``probability`` or ``logit``; fill: the value written.
    """

    method: str
    fractions: list[float]
    score: list[float]
    area: float
    n: int
    score_kind: str = "probability"
    fill: str = "0.0"
    kind: str = "deletion_curve"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pixel_order(relevance: Tensor) -> Tensor:
    """Pixel positions (flattened H×W) by relevance summed over channels, most relevant first.

    Ties are broken by position so the order is deterministic.
    """
    flat = relevance.sum(dim=1).flatten(1)
    return torch.sort(flat, dim=1, descending=True, stable=True).indices


def _fill_values(x: Tensor, fill: float | str) -> Tensor:
    if fill == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if isinstance(fill, str):
        raise ConfigError(f"fill must be a number or 'mean', got {fill!r}")
    return torch.full_like(x, float(fill))


def deletion_curve(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    relevance: Tensor,
    *,
    steps: int = 20,
    max_fraction: float = 0.5,
    fill: float | str = 0.0,
    score: str = "probability",
    method: str = "",
    bounds: tuple[float, float] = (0.0, 1.0),
) -> DeletionCurve:
    """Deletion curve of one relevance map per image.

    At point ``i`` of ``steps + 1`` the ``round(i / steps * max_fraction * H * W)`` most
    relevant pixel positions (all channels) are set to ``fill`` (a value or ``"mean"``: the
    image's per-channel mean), and the mean ``score`` of ``target`` is recorded.
    """
    x = check_images(x, bounds)
    target = check_labels(target, x.shape[0]).to(x.device)
    if relevance.shape != x.shape:
        raise InputError(f"relevance has shape {tuple(relevance.shape)}, images {tuple(x.shape)}: they must match")
    if int(steps) < 1 or not 0 < float(max_fraction) <= 1:
        raise ConfigError(f"need steps >= 1 and 0 < max_fraction <= 1, got {steps}, {max_fraction}")
    if score not in SCORES:
        raise ConfigError(f"unknown score {score!r}: use one of {', '.join(SCORES)}")
    n, c, h, w = x.shape
    order = pixel_order(relevance)
    fill_values = _fill_values(x, fill)
    fractions, values = [], []
    with eval_mode(model), torch.no_grad():
        for i in range(int(steps) + 1):
            count = round(i / steps * max_fraction * h * w)
            mask = torch.zeros(n, h * w, dtype=torch.bool, device=x.device)
            if count:
                mask.scatter_(1, order[:, :count], True)
            mask4 = mask.reshape(n, 1, h, w).expand_as(x)
            logits = model(torch.where(mask4, fill_values, x))
            chosen = logits.softmax(dim=1) if score == "probability" else logits
            values.append(float(chosen.gather(1, target[:, None]).mean()))
            fractions.append(count / (h * w))
    span = fractions[-1] - fractions[0]
    area = float(torch.trapezoid(torch.tensor(values), torch.tensor(fractions))) / span if span else values[0]
    return DeletionCurve(
        method=method, fractions=fractions, score=values, area=area, n=n, score_kind=score,
        fill=str(fill),
    )


#: the methods ``compare_explanations`` ranks by default
QUALITY_METHODS = ("lrp", "gradient", "saliency", "gradient-x-input", "integrated-gradients", "smoothgrad", "random")


def compare_explanations(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    methods: Sequence[str] = QUALITY_METHODS,
    *,
    steps: int = 20,
    max_fraction: float = 0.5,
    fill: float | str = 0.0,
    score: str = "probability",
    **explain_options: Any,
) -> list[DeletionCurve]:
    """Deletion curves of several explanation methods for the true classes ``y``."""
    from hardened.explain.attribute import explain_images

    curves = []
    for method in methods:
        attribution = explain_images(model, x, y, method, **explain_options)
        curves.append(
            deletion_curve(
                model, x, y, attribution.relevance, steps=steps, max_fraction=max_fraction,
                fill=fill, score=score, method=attribution.method,
            )
        )
    return curves
