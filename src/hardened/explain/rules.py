"""LRP rules: how the relevance at a layer's output is redistributed onto its input.

A rule is a small frozen object with ``backward(module, a, z, relevance) -> relevance_in``:
``a`` is the layer's input (N×...), ``z`` its output, ``relevance`` the relevance of the output
(same shape as ``z``); the result has the shape of ``a``. Notation (Montavon et al. 2019,
"Layer-wise relevance propagation: an overview"): ``z_k = sum_j a_j w_jk + b_k``,
``R_j = sum_k (contribution_jk / z_k) R_k`` with a rule-specific contribution.

Rules are stateless, so one instance can serve many layers; ``composites`` assigns them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import grad as nn_grad

from hardened.errors import ConfigError
from hardened.models.normalize import Normalize

__all__ = [
    "Rule",
    "Epsilon",
    "Gamma",
    "AlphaBeta",
    "ZPlus",
    "ZBox",
    "Pass",
    "SumEpsilon",
    "BATCHNORM_LAYERS",
    "LINEAR_LAYERS",
    "POOL_LAYERS",
    "batchnorm_affine",
    "TRANSPARENT_LAYERS",
    "stabilize",
]

#: layers with weights that the weight-based rules handle
LINEAR_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: linear layers without weights (relevance is shared in proportion to the inputs)
POOL_LAYERS: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)
#: BatchNorm in eval mode: an element-wise affine map ``scale * a + shift`` (a diagonal linear
#: layer). Folded into the layer before it where there is one (``BatchNormFolding``); the
#: pre-activation BatchNorms of a WideResNet follow a sum and take the Epsilon rule instead.
BATCHNORM_LAYERS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: layers whose plain gradient already propagates relevance correctly (no rule needed):
#: ReLU (relevance is zero where the activation is zero), max pooling (winner takes all),
#: reshapes and dropout in eval mode.
TRANSPARENT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity,
)


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1``, so the result is never zero for eps > 0.

    Written as ``copysign(epsilon, z + 0.0) + z``: ``z + 0.0`` turns ``-0.0`` into ``+0.0``, and
    one copysign costs a quarter of a comparison plus ``where`` (which this ran in the first
    version: 7% of an LRP pass on lenet).
    """
    return torch.full_like(z, epsilon).copysign_(z + 0.0).add_(z)


def batchnorm_affine(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` per channel of an eval-mode BatchNorm: ``gamma / sqrt(var + eps)`` and
    ``beta - mean * scale`` (no statistics: mean 0, var 1; no affine part: gamma 1, beta 0)."""
    weight = getattr(bn, "weight", None)
    var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)  # type: ignore[union-attr]
    mean = bn.running_mean if bn.running_mean is not None else torch.zeros_like(var)  # type: ignore[union-attr]
    scale = torch.rsqrt(var + bn.eps)  # type: ignore[operator]
    if isinstance(weight, Tensor):
        scale = scale * weight
    shift = -mean * scale
    bias = getattr(bn, "bias", None)
    if isinstance(bias, Tensor):
        shift = shift + bias
    return scale.detach(), shift.detach()


def _forward(module: nn.Module, a: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """The layer's forward with replaced parameters (pools: the module itself)."""
    if isinstance(module, nn.Linear):
        return F.linear(a, weight, bias)  # type: ignore[arg-type]
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module._conv_forward(a, weight, bias)  # type: ignore[arg-type,operator]
    return module.forward(a)  # type: ignore[no-any-return]  # .forward: skip the LRP hooks


_CONV_INPUT: dict[type[nn.Module], Callable[..., Tensor]] = {
    nn.Conv1d: nn_grad.conv1d_input,
    nn.Conv2d: nn_grad.conv2d_input,
    nn.Conv3d: nn_grad.conv3d_input,
}


def _vjp(module: nn.Module, a: Tensor, weight: Tensor | None, s: Tensor) -> Tensor:
    """``W^T s``: the backward of the layer's linear map (bias-free) applied to ``s``."""
    if isinstance(module, nn.Linear) and weight is not None:
        return s @ weight
    if isinstance(module, BATCHNORM_LAYERS):
        scale = batchnorm_affine(module)[0].to(s)
        return s * scale.reshape((1, -1) + (1,) * (s.dim() - 2))
    conv_input = _CONV_INPUT.get(type(module))
    if (
        conv_input is not None
        and weight is not None
        and not isinstance(module.padding, str)  # type: ignore[attr-defined]
        and module.padding_mode == "zeros"  # type: ignore[attr-defined]
    ):
        return conv_input(
            a.shape, weight, s, module.stride, module.padding, module.dilation, module.groups  # type: ignore[attr-defined]
        )
    with torch.enable_grad():
        leaf = a.detach().requires_grad_(True)
        z = _forward(module, leaf, weight, None)
        (grad,) = torch.autograd.grad(z, leaf, s)
    return grad


def _params(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        raise ConfigError(f"{type(module).__name__} has no weight; use Epsilon for pooling layers")
    bias = getattr(module, "bias", None)
    return weight.detach(), (bias.detach() if isinstance(bias, Tensor) else None)


def _pos(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(max=0)


class Rule(ABC):
    """Base class of LRP rules; ``supports`` lists the layer types the rule can handle."""

    supports: ClassVar[tuple[type[nn.Module], ...]] = LINEAR_LAYERS

    @abstractmethod
    def backward(self, module: nn.Module, a: Tensor, z: Tensor, relevance: Tensor) -> Tensor:
        """Relevance of the input ``a`` (shape of ``a``) from the relevance of the output ``z``."""

    def handles(self, module: nn.Module) -> bool:
        return isinstance(module, self.supports)


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-epsilon (Bach et al. 2015): ``R_j = sum_k a_j w_jk / (z_k + eps sign z_k) R_k``.

    With ``eps -> 0`` and no biases, relevance is conserved exactly. Also serves average
    pooling (a linear layer with fixed weights) and eval-mode BatchNorm (a diagonal one:
    ``R_j = a_j scale_j / (z_j + eps sign z_j) R_j``, the shift absorbing its share).
    """

    epsilon: float = 1e-6
    supports: ClassVar[tuple[type[nn.Module], ...]] = LINEAR_LAYERS + POOL_LAYERS + BATCHNORM_LAYERS

    def __post_init__(self) -> None:
        if not float(self.epsilon) >= 0:
            raise ConfigError(f"Epsilon: epsilon must be >= 0, got {self.epsilon}")

    def backward(self, module: nn.Module, a: Tensor, z: Tensor, relevance: Tensor) -> Tensor:
        weight = _params(module)[0] if isinstance(module, LINEAR_LAYERS) else None
        s = relevance / stabilize(z, self.epsilon)
        return a * _vjp(module, a, weight, s)


@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-gamma (Montavon et al. 2019): positive weights boosted by ``gamma``.

    ``R_j = sum_k a_j (w_jk + gamma w_jk^+) / sum_j' (a_j' (w_j'k + gamma w_j'k^+)
    + b_k + gamma b_k^+) R_k``; meant for non-negative inputs (after a ReLU).
    """

    gamma: float = 0.25
    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if not float(self.gamma) >= 0:
            raise ConfigError(f"Gamma: gamma must be >= 0, got {self.gamma}")

    def backward(self, module: nn.Module, a: Tensor, z: Tensor, relevance: Tensor) -> Tensor:
        weight, bias = _params(module)
        w = weight + self.gamma * weight.clamp(min=0)
        b = None if bias is None else bias + self.gamma * bias.clamp(min=0)
        s = relevance / stabilize(_forward(module, a, w, b), self.epsilon)
        return a * _vjp(module, a, w, s)


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-alpha-beta (Bach et al. 2015) with ``alpha - beta = 1``.

    ``R_j = sum_k (alpha (a_j w_jk)^+ / z_k^+ - beta (a_j w_jk)^- / z_k^-) R_k`` where
    ``z_k^+ = sum_j (a_j w_jk)^+ + b_k^+`` and ``z_k^- = sum_j (a_j w_jk)^- + b_k^-``
    (biases left out with ``bias=False``). ``AlphaBeta(1, 0)`` keeps positive evidence only.
    """

    alpha: float = 2.0
    beta: float = 1.0
    bias: bool = True
    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-9:
            raise ConfigError(
                f"AlphaBeta needs alpha >= 0, beta >= 0 and alpha - beta = 1 (conservation), "
                f"got alpha={self.alpha}, beta={self.beta}; e.g. AlphaBeta(2, 1) or AlphaBeta(1, 0)"
            )

    def _part(
        self, module: nn.Module, a: Tensor, relevance: Tensor, positive: bool
    ) -> Tensor:
        """Relevance through the positive (or negative) contributions ``(a w)^+`` (``^-``)."""
        weight, bias = _params(module)
        a_pos = a.clamp(min=0)
        a_neg = a.clamp(max=0)
        has_neg = bool((a < 0).any())
        w1, w2 = (weight.clamp(min=0), weight.clamp(max=0))
        if not positive:
            w1, w2 = w2, w1
        b = None if not self.bias else (_pos(bias) if positive else _neg(bias))
        z = _forward(module, a_pos, w1, b)
        if has_neg:
            z = z + _forward(module, a_neg, w2, None)
        s = relevance / stabilize(z, self.epsilon)
        out = a_pos * _vjp(module, a, w1, s)
        if has_neg:
            out = out + a_neg * _vjp(module, a, w2, s)
        return out

    def backward(self, module: nn.Module, a: Tensor, z: Tensor, relevance: Tensor) -> Tensor:
        out = self.alpha * self._part(module, a, relevance, positive=True)
        if self.beta:
            out = out - self.beta * self._part(module, a, relevance, positive=False)
        return out


@dataclass(frozen=True)
class ZPlus(Rule):
    """LRP-z+ (Montavon et al. 2017): ``R_j = sum_k (a_j w_jk)^+ / sum_j' (a_j' w_j'k)^+ R_k``.

    Positive contributions only, biases ignored: equal to ``AlphaBeta(1, 0, bias=False)``.
    """

    epsilon: float = 1e-6

    def backward(self, module: nn.Module, a: Tensor, z: Tensor, relevance: Tensor) -> Tensor:
        return AlphaBeta(1.0, 0.0, bias=False, epsilon=self.epsilon).backward(
            module, a, z, relevance
        )


Bound = float | tuple[float, ...]


def _expand(bound: Bound, a: Tensor) -> Tensor:
    """A scalar or per-channel bound as a tensor shaped like ``a`` (N×C×... or N×(C·H·W))."""
    values = torch.as_tensor(bound, dtype=a.dtype, device=a.device).reshape(-1)
    if values.numel() == 1:
        return values.reshape(()).expand_as(a)
    channels = values.numel()
    if a.dim() >= 3 and a.shape[1] == channels:
        return values.reshape((1, channels) + (1,) * (a.dim() - 2)).expand_as(a)
    if a.dim() == 2 and a.shape[1] % channels == 0:
        return values.repeat_interleave(a.shape[1] // channels).reshape(1, -1).expand_as(a)
    raise ConfigError(
        f"ZBox: {channels} per-channel bounds do not fit a layer input of shape {tuple(a.shape)}"
    )


@dataclass(frozen=True)
class ZBox(Rule):
    """LRP-z^B for the first layer, whose inputs lie in a box ``[low, high]``.

    ``R_j = sum_k (x_j w_jk - l_j w_jk^+ - h_j w_jk^-) / sum_j' (x_j' w_j'k - l_j' w_j'k^+
    - h_j' w_j'k^-) R_k`` (Montavon et al. 2017). ``low``/``high`` are in the layer's input
    space: scalars or one value per channel. Composites fill them in from the pixel bounds
    mapped through a leading ``Normalize`` when left as ``None``.
    """

    low: Bound | None = None
    high: Bound | None = None
    epsilon: float = 1e-6

    def backward(self, module: nn.Module, a: Tensor, z: Tensor, relevance: Tensor) -> Tensor:
        if self.low is None or self.high is None:
            raise ConfigError(
                "ZBox needs the input bounds: give ZBox(low=..., high=...) in the layer's input "
                "space, or use it as a composite's first-layer rule so the pixel bounds are mapped"
            )
        weight, bias = _params(module)
        low, high = _expand(self.low, a), _expand(self.high, a)
        w_pos, w_neg = weight.clamp(min=0), weight.clamp(max=0)
        if getattr(module, "groups", 1) == 1:
            # The denominator reuses the layer's own output, z - b = x W, and the bounds' terms
            # l W^+ and h W^- are the same for every sample: one image's worth, broadcast.
            # The backward is one call with three stacked input blocks: [x, l, h] through
            # [W, -W^+, -W^-] (concatenated along the input dimension).
            z_x = z if bias is None else z - bias.reshape((1, -1) + (1,) * (z.dim() - 2))
            z_box = (z_x - _forward(module, low[:1], w_pos, None)
                     - _forward(module, high[:1], w_neg, None))
            stacked = torch.cat([a, low, high], dim=1)
            w_cat = torch.cat([weight, -w_pos, -w_neg], dim=1)
            s = relevance / stabilize(z_box, self.epsilon)
            return (stacked * _vjp(module, stacked, w_cat, s)).reshape(
                (a.shape[0], 3) + tuple(a.shape[1:])
            ).sum(dim=1)
        z_box = (
            _forward(module, a, weight, None)
            - _forward(module, low, w_pos, None)
            - _forward(module, high, w_neg, None)
        )
        s = relevance / stabilize(z_box, self.epsilon)
        return (
            a * _vjp(module, a, weight, s)
            - low * _vjp(module, a, w_pos, s)
            - high * _vjp(module, a, w_neg, s)
        )


@dataclass(frozen=True)
class Pass(Rule):
    """Relevance passes unchanged (element-wise bijections such as ``Normalize``)."""

    supports: ClassVar[tuple[type[nn.Module], ...]] = (Normalize, nn.Identity)

    def backward(self, module: nn.Module, a: Tensor, z: Tensor, relevance: Tensor) -> Tensor:
        return relevance.reshape(a.shape)


@dataclass(frozen=True)
class SumEpsilon:
    """The epsilon rule for a sum ``z = a_1 + ... + a_m`` (a residual addition, the ``Add``
    module): ``R_i = a_i / (z + eps sign z) * R``, element-wise, so the summands share the
    relevance in proportion to their contributions and ``sum_i R_i = z / (z + eps sign z) R``
    (conserved as eps -> 0). Without it the gradient would copy ``R`` to every summand.
    """

    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if not float(self.epsilon) >= 0:
            raise ConfigError(f"SumEpsilon: epsilon must be >= 0, got {self.epsilon}")

    def backward(self, inputs: tuple[Tensor, ...], z: Tensor, relevance: Tensor) -> tuple[Tensor, ...]:
        """The relevance of each summand (each of its own shape) from that of the sum ``z``."""
        s = relevance / stabilize(z, self.epsilon)
        return tuple(_unbroadcast(a * s, a.shape) for a in inputs)


def _unbroadcast(r: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``r`` over the dimensions a summand of ``shape`` was broadcast along."""
    while r.dim() > len(shape):
        r = r.sum(dim=0)
    for dim, size in enumerate(shape):
        if size == 1 and r.shape[dim] != 1:
            r = r.sum(dim=dim, keepdim=True)
    return r
