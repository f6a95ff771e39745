"""Interval bound propagation (IBP): deterministic certificates for Linf (and L2) balls.

The input set is a box ``[lower, upper]`` (the Linf ball around x intersected with the pixel
bounds). Each layer maps a box to a box that contains its image: affine layers in centre/radius
form, ``mid' = W mid + b, rad' = |W| rad``; monotone layers (ReLU, max/avg pooling, Normalize,
monotone activations) map the two corners. The last Linear layer is folded into the class margin
``z_y - z_j = (w_y - w_j)·h + b_y - b_j`` (elision), and a sample is certified when the lower
bound of every margin is positive (Gowal et al. 2018, "On the Effectiveness of Interval Bound
Propagation for Training Verifiably Robust Models").

For L2 balls of radius eps the first affine layer is bounded exactly, ``w_i·x + b_i ±
eps·||w_i||_2`` (intersected with the box bound of the Linf ball of the same radius), and IBP
continues from there.

Models must be ``nn.Sequential`` stacks (nested allowed) of Linear, Conv2d, ReLU, Flatten,
MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Normalize, BatchNorm (eval), Identity, Dropout and
monotone activations. Bounds are computed in float64 by default, so rounding cannot break them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardened._util.batching import batch_slices, eval_mode
from hardened._util.checks import check_images, check_labels
from hardened.errors import ConfigError
from hardened.models.normalize import Normalize

__all__ = ["IntervalBounds", "IBPResult", "interval_bounds", "margin_lower_bounds", "certify_ibp",
           "SUPPORTED_LAYERS"]

_MONOTONE = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.Softplus, nn.ReLU6, nn.Hardtanh)
_PASS = (nn.Identity, nn.Dropout)
_POOL = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
SUPPORTED_LAYERS = ("Linear", "Conv2d", "ReLU", "Flatten", "MaxPool2d", "AvgPool2d",
                    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Normalize", "BatchNorm1d/2d (eval)",
                    "Identity", "Dropout", "LeakyReLU", "Sigmoid", "Tanh", "ELU", "Softplus",
                    "ReLU6", "Hardtanh")


@dataclass(frozen=True)
class IntervalBounds:
    """Elementwise bounds ``lower <= model(x') <= upper`` for every x' in the input set (N×K)."""

    lower: Tensor
    upper: Tensor


@dataclass(frozen=True)
class IBPResult:
    """IBP certificates for a batch.

    Attributes:
        certified: bool (N,): the class ``target`` provably wins everywhere in the ball.
        margin_lower: (N,) lower bound of ``min_j z_target - z_j`` over the ball (> 0: certified).
        prediction: the model's clean prediction (N,).
        target: the class that was certified (the label when given, else the prediction).
        labels: the labels, or ``None``.
        eps, norm: the ball; seconds: wall-clock time.
    """

    certified: Tensor
    margin_lower: Tensor
    prediction: Tensor
    target: Tensor
    labels: Tensor | None
    eps: float
    norm: str
    seconds: float

    @property
    def certified_rate(self) -> float:
        """Fraction certified (with labels: certified robust accuracy)."""
        return float(self.certified.float().mean()) if self.certified.numel() else 0.0

    @property
    def clean_accuracy(self) -> float | None:
        if self.labels is None or not self.labels.numel():
            return None
        return float((self.prediction == self.labels).float().mean())

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": "ibp",
            "norm": self.norm,
            "eps": self.eps,
            "n": int(self.certified.numel()),
            "certified": int(self.certified.sum()),
            "certified_rate": self.certified_rate,
            "clean_accuracy": self.clean_accuracy,
            "seconds": self.seconds,
        }
        if per_sample:
            out["per_sample"] = {
                "certified": self.certified.tolist(),
                "margin_lower": self.margin_lower.tolist(),
                "prediction": self.prediction.tolist(),
                "label": None if self.labels is None else self.labels.tolist(),
            }
        return out


# ---------------------------------------------------------------- the layer walk


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as a flat list of (name, leaf layer); an error names what cannot be walked."""
    out: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, name: str) -> None:
        if isinstance(module, nn.Sequential):
            for child_name, child in module.named_children():
                walk(child, f"{name}.{child_name}" if name else child_name)
            return
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Flatten, Normalize, nn.BatchNorm1d,
                               nn.BatchNorm2d, *_MONOTONE, *_PASS, *_POOL)):
            out.append((name, module))
            return
        label = name or "the model"
        raise ConfigError(
            f"interval bound propagation cannot bound layer {label!r} ({type(module).__name__}): "
            f"it walks nn.Sequential stacks of {', '.join(SUPPORTED_LAYERS)}; rewrite the model "
            "as such a stack or certify it with randomized smoothing (--method smoothing)"
        )

    walk(model, "")
    return out


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


def _affine(module: nn.Module, t: Tensor, dtype: torch.dtype, *, bias: bool, absolute: bool) -> Tensor:
    """Apply a Linear/Conv2d/BatchNorm(eval) with weights cast to ``dtype``; ``absolute`` uses
    |W| and no bias (the radius map)."""
    if isinstance(module, nn.Linear):
        weight = module.weight.to(dtype)
        return F.linear(t, weight.abs() if absolute else weight,
                        _cast(module.bias, dtype) if bias and not absolute else None)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise ConfigError(f"IBP supports Conv2d with zero padding only, got padding_mode={module.padding_mode!r}")
        weight = module.weight.to(dtype)
        return F.conv2d(t, weight.abs() if absolute else weight,
                        _cast(module.bias, dtype) if bias and not absolute else None,
                        module.stride, module.padding, module.dilation, module.groups)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale, shift = _batchnorm_affine(module, dtype)
        shape = (1, -1) + (1,) * (t.dim() - 2)
        if absolute:
            return t * scale.abs().view(shape)
        return t * scale.view(shape) + shift.view(shape)
    raise ConfigError(f"not an affine layer: {type(module).__name__}")


def _batchnorm_affine(module: nn.BatchNorm1d | nn.BatchNorm2d, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    if module.running_mean is None or module.running_var is None:
        raise ConfigError("IBP needs BatchNorm layers with running statistics (track_running_stats=True)")
    scale = 1.0 / torch.sqrt(module.running_var.to(dtype) + module.eps)
    shift = -module.running_mean.to(dtype) * scale
    if module.weight is not None:
        scale = scale * module.weight.to(dtype)
        shift = shift * module.weight.to(dtype)
    if module.bias is not None:
        shift = shift + module.bias.to(dtype)
    return scale, shift


def _normalize_stats(module: Normalize, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    mean, std = cast(Tensor, module.mean), cast(Tensor, module.std)
    return mean.to(dtype), std.to(dtype)


def _monotone(module: nn.Module, t: Tensor, dtype: torch.dtype) -> Tensor:
    """Layers that are monotone non-decreasing in every input (applied to each corner)."""
    if isinstance(module, Normalize):
        mean, std = _normalize_stats(module, dtype)
        return (t - mean) / std
    return cast(Tensor, module(t))


def _propagate_box(layers: list[tuple[str, nn.Module]], lower: Tensor, upper: Tensor,
                   dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    for _name, layer in layers:
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)):
            mid, rad = (upper + lower) / 2, (upper - lower) / 2
            mid = _affine(layer, mid, dtype, bias=True, absolute=False)
            rad = _affine(layer, rad, dtype, bias=False, absolute=True)
            lower, upper = mid - rad, mid + rad
        elif isinstance(layer, nn.Flatten):
            lower, upper = layer(lower), layer(upper)
        elif isinstance(layer, _PASS):
            continue
        else:
            lower, upper = _monotone(layer, lower, dtype), _monotone(layer, upper, dtype)
    return lower, upper


def _forward(layers: list[tuple[str, nn.Module]], x: Tensor, dtype: torch.dtype) -> Tensor:
    """The walked layers applied to a point (to check the walk reproduces the model)."""
    return _propagate_box(layers, x, x, dtype)[0]


def _l2_first_layer(
    layers: list[tuple[str, nn.Module]], x: Tensor, eps: float, bounds: tuple[float, float],
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, int]:
    """Exact bounds of the first affine layer over the L2 ball of radius ``eps`` around ``x``
    (``w_i·x + b_i ± eps·||w_i||_2`` with Normalize folded into w), intersected with the box
    bounds of the Linf ball of the same radius; returns the bounds and the index of the layer
    after it."""
    scale: Tensor | None = None
    position = -1
    for index, (name, layer) in enumerate(layers):
        if isinstance(layer, Normalize):
            std = _normalize_stats(layer, dtype)[1]
            scale = (1.0 / std) if scale is None else scale / std
        elif isinstance(layer, (nn.Flatten, *_PASS)):
            continue
        elif isinstance(layer, (nn.Linear, nn.Conv2d)):
            position = index
            break
        else:
            raise ConfigError(
                f"L2 interval bounds need a Linear or Conv2d layer first (after Normalize/Flatten), "
                f"but layer {name!r} is {type(layer).__name__}; use norm='linf' or randomized smoothing"
            )
    if position < 0:
        raise ConfigError("L2 interval bounds need a Linear or Conv2d layer; the model has none")
    head = layers[: position + 1]
    layer = layers[position][1]
    centre = _forward(head, x, dtype)
    channels = x.shape[1]
    if scale is None:
        scale = torch.ones(1, channels, 1, 1, dtype=dtype, device=x.device)
    scale = scale.reshape(1, -1, 1, 1).expand(1, channels, 1, 1)
    if isinstance(layer, nn.Linear):
        weight = layer.weight.to(dtype)
        per_input = scale.expand(1, channels, *x.shape[2:]).reshape(-1)
        if per_input.numel() != weight.shape[1]:
            raise ConfigError(
                f"L2 interval bounds: layer {layers[position][0]!r} takes {weight.shape[1]} inputs "
                f"but the image has {per_input.numel()} values"
            )
        norms = (weight * per_input).norm(dim=1)
        rad = eps * norms.unsqueeze(0).expand_as(centre)
    else:
        conv = cast(nn.Conv2d, layer)
        weight = conv.weight.to(dtype)
        ones = scale.expand(1, channels, *x.shape[2:]) ** 2
        sq = F.conv2d(ones, weight**2, None, conv.stride, conv.padding, conv.dilation,  # type: ignore[arg-type]
                      conv.groups)
        rad = eps * sq.sqrt().expand_as(centre)
    lower_box = (x - eps).clamp(*bounds)
    upper_box = (x + eps).clamp(*bounds)
    box_lower, box_upper = _propagate_box(head, lower_box, upper_box, dtype)
    return torch.maximum(centre - rad, box_lower), torch.minimum(centre + rad, box_upper), position + 1


def _input_bounds(
    layers: list[tuple[str, nn.Module]], x: Tensor, eps: float, norm: str,
    bounds: tuple[float, float], dtype: torch.dtype,
) -> tuple[Tensor, Tensor, int]:
    if norm == "linf":
        return (x - eps).clamp(*bounds), (x + eps).clamp(*bounds), 0
    return _l2_first_layer(layers, x, eps, bounds, dtype)


def _check_args(eps: float, norm: str) -> str:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ConfigError(f"eps must be a number >= 0, got {eps!r}")
    key = str(norm).lower()
    if key not in ("linf", "l2"):
        raise ConfigError(f"IBP supports norm 'linf' or 'l2', got {norm!r}")
    return key


def interval_bounds(
    model: nn.Module,
    x: Tensor,
    eps: float,
    norm: str = "linf",
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    dtype: torch.dtype = torch.float64,
) -> IntervalBounds:
    """Bounds on the logits (N×K) of ``model`` over the ``norm`` ball of radius ``eps`` around
    each image of ``x`` (N×C×H×W), intersected with the pixel ``bounds``."""
    norm = _check_args(eps, norm)
    x = check_images(x, bounds, allow_empty=True)
    layers = _layers(model)
    with eval_mode(model), torch.no_grad():
        xd = x.to(dtype)
        lower, upper, start = _input_bounds(layers, xd, float(eps), norm, bounds, dtype)
        lower, upper = _propagate_box(layers[start:], lower, upper, dtype)
    return IntervalBounds(lower=lower, upper=upper)


def margin_lower_bounds(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    eps: float,
    norm: str = "linf",
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Lower bounds (N×K) of ``z_target - z_j`` over the ball; column ``target`` is +inf.

    When the last layer is Linear it is folded into the margin (elision), which is tighter than
    subtracting logit bounds.
    """
    norm = _check_args(eps, norm)
    layers = _layers(model)
    with eval_mode(model), torch.no_grad():
        xd = x.to(dtype)
        lower, upper, start = _input_bounds(layers, xd, float(eps), norm, bounds, dtype)
        last = layers[-1][1] if layers else None
        if isinstance(last, nn.Linear) and start < len(layers):
            lower, upper = _propagate_box(layers[start:-1], lower, upper, dtype)
            weight = last.weight.to(dtype)
            bias = last.bias.to(dtype) if last.bias is not None else torch.zeros(weight.shape[0], dtype=dtype, device=x.device)
            diff_w = weight[target].unsqueeze(1) - weight.unsqueeze(0)  # N×K×D
            diff_b = bias[target].unsqueeze(1) - bias.unsqueeze(0)  # N×K
            mid, rad = (upper + lower) / 2, (upper - lower) / 2
            margins = torch.einsum("nkd,nd->nk", diff_w, mid) - torch.einsum("nkd,nd->nk", diff_w.abs(), rad) + diff_b
        else:
            lower, upper = _propagate_box(layers[start:], lower, upper, dtype)
            margins = lower.gather(1, target[:, None]) - upper
    margins = margins.clone()
    margins.scatter_(1, target[:, None], float("inf"))
    return margins


def certify_ibp(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    eps: float,
    norm: str = "linf",
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 256,
    dtype: torch.dtype = torch.float64,
) -> IBPResult:
    """Certify each image of ``x`` (N×C×H×W): the class (label ``y``, else the prediction) keeps
    the largest logit everywhere in the ``norm`` ball of radius ``eps`` when the lower bound of
    every margin ``z_class - z_j`` is positive. Sound, deterministic, conservative."""
    start = time.perf_counter()
    norm = _check_args(eps, norm)
    x = check_images(x, bounds, allow_empty=True)
    layers = _layers(model)
    with eval_mode(model), torch.no_grad():
        if not x.shape[0]:
            empty = torch.zeros(0, dtype=torch.long, device=x.device)
            return IBPResult(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=dtype), empty, empty,
                             None if y is None else empty, float(eps), norm, time.perf_counter() - start)
        logits = torch.cat([model(x[s]) for s in batch_slices(x.shape[0], batch_size)])
        walked = _forward(layers, x[:batch_size].to(dtype), dtype)
        reference = logits[:batch_size].to(dtype)
        if walked.shape != reference.shape or not torch.allclose(walked, reference, rtol=1e-3, atol=1e-3):
            raise ConfigError(
                "walking the model's layers in order does not reproduce its output; IBP needs a "
                "plain nn.Sequential stack (no custom forward, no skip connections)"
            )
    prediction = logits.argmax(dim=1)
    labels = None
    if y is not None:
        labels = check_labels(y, x.shape[0], logits.shape[1]).to(x.device)
    target = labels if labels is not None else prediction
    margins = torch.cat([
        margin_lower_bounds(model, x[s], target[s], eps, norm, bounds=bounds, dtype=dtype).amin(dim=1)
        for s in batch_slices(x.shape[0], batch_size)
    ])
    certified = margins > 0
    if labels is not None:
        certified = certified & (prediction == labels)
    return IBPResult(
        certified=certified,
        margin_lower=margins,
        prediction=prediction,
        target=target,
        labels=labels,
        eps=float(eps),
        norm=norm,
        seconds=time.perf_counter() - start,
    )
