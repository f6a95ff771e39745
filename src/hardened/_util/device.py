"""The one "which device does this model live on" lookup."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["model_device", "submodules"]


def submodules(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` and every module below it, in ``model.modules()`` order (pre-order, each
    once), lazily, by a plain walk over ``_modules``: ``modules()`` builds a dotted name for every
    module on the way, which a served one-image request pays for on each of its look-ups."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield module
        stack.extend(child for child in reversed(module._modules.values()) if child is not None)


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of ``model``'s first parameter, else its first buffer, else ``default``
    (a parameter-free model such as a pure preprocessing layer). The walk stops at the first."""
    for attribute in ("_parameters", "_buffers"):
        for module in submodules(model):
            for tensor in getattr(module, attribute).values():
                if tensor is not None:
                    return tensor.device
    return torch.device(default)
