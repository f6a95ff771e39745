"""Canonizers: temporary, function-preserving rewrites of a model so LRP rules apply.

``BatchNormFolding`` folds each BatchNorm into the Linear/Conv layer right before it
(Yeh et al. / zennit's ``SequentialMergeBatchNorm``):

    W' = W * gamma / sqrt(var + eps)      (per output channel)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta

and makes the BatchNorm an identity. Pairs are found inside every ``nn.Sequential`` and in
every module that names them in a ``batchnorm_pairs`` attribute (``(("conv1", "bn1"), ...)``,
as the zoo's residual blocks do). Everything happens inside ``apply(model)`` (a context
manager) and is undone on exit: the original parameter values are copied back bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from hardened.errors import ConfigError
from hardened.explain.rules import BATCHNORM_LAYERS, batchnorm_affine

__all__ = ["Canonizer", "BatchNormFolding", "fold_pairs"]

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = BATCHNORM_LAYERS


class Canonizer(ABC):
    """A reversible model rewrite. ``apply(model)`` yields the set of modules it made identity
    (so the rule engine lets relevance pass through them) and undoes everything on exit."""

    @abstractmethod
    def apply(self, model: nn.Module) -> Any:
        """Context manager: rewrite ``model``; yield modules that became identities."""


def fold_pairs(model: nn.Module) -> list[tuple[Any, Any]]:
    """(layer, batchnorm) pairs that follow each other directly inside an ``nn.Sequential``,
    and those a module declares in ``batchnorm_pairs`` (attribute names)."""
    pairs: list[tuple[Any, Any]] = []
    for module in model.modules():
        for layer_name, bn_name in getattr(module, "batchnorm_pairs", ()):
            layer, bn = getattr(module, layer_name, None), getattr(module, bn_name, None)
            if isinstance(layer, _FOLDABLE) and isinstance(bn, _BATCHNORM):
                pairs.append((layer, bn))
        if isinstance(module, nn.Sequential):
            children = list(module.children())
            for first, second in zip(children, children[1:], strict=False):
                if isinstance(first, _FOLDABLE) and isinstance(second, _BATCHNORM):
                    pairs.append((first, second))
    return pairs


def _identity_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> Any:
    return inputs[0]


class BatchNormFolding(Canonizer):
    """Fold BatchNorm (eval statistics) into the preceding Linear/Conv layer.

    Args:
        pairs: ``(layer_name, batchnorm_name)`` pairs for models that are not plain
            ``nn.Sequential`` stacks (names from ``model.named_modules()``); by default the
            consecutive pairs inside every ``nn.Sequential`` are found automatically.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]] | None = None) -> None:
        self.pairs = None if pairs is None else [tuple(p) for p in pairs]

    def _resolve(self, model: nn.Module) -> list[tuple[Any, Any]]:
        if self.pairs is None:
            return fold_pairs(model)
        named = dict(model.named_modules())
        resolved: list[tuple[Any, Any]] = []
        for layer_name, bn_name in self.pairs:
            layer, bn = named.get(layer_name), named.get(bn_name)
            if not isinstance(layer, _FOLDABLE) or not isinstance(bn, _BATCHNORM):
                raise ConfigError(
                    f"BatchNormFolding: ({layer_name!r}, {bn_name!r}) must name a Linear/Conv "
                    "layer and the BatchNorm that follows it; see model.named_modules()"
                )
            resolved.append((layer, bn))
        return resolved

    @contextmanager
    def apply(self, model: nn.Module) -> Iterator[set[nn.Module]]:
        pairs = self._resolve(model)
        saved: list[tuple[Any, torch.Tensor, torch.Tensor | None]] = []
        handles = []
        folded: set[nn.Module] = set()
        try:
            with torch.no_grad():
                for layer, bn in pairs:
                    if bn in folded:
                        continue
                    weight = layer.weight
                    bias = layer.bias
                    saved.append((layer, weight.detach().clone(), None if bias is None else bias.detach().clone()))
                    scale, shift = batchnorm_affine(bn)
                    shape = (-1,) + (1,) * (weight.dim() - 1)
                    weight.mul_(scale.reshape(shape).to(weight.dtype))
                    new_bias = shift if bias is None else bias * scale + shift
                    if bias is None:
                        layer.bias = nn.Parameter(new_bias.to(weight.dtype), requires_grad=False)
                    else:
                        bias.copy_(new_bias)
                    handles.append(bn.register_forward_hook(_identity_hook))
                    folded.add(bn)
            yield folded
        finally:
            for handle in handles:
                handle.remove()
            with torch.no_grad():
                for layer, weight, bias in reversed(saved):
                    layer.weight.copy_(weight)
                    if bias is None:
                        layer.bias = None
                    else:
                        layer.bias.copy_(bias)
