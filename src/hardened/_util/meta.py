"""Check that saved tensors fit a network before the network is allocated.

Sizes read from a JSON record (``"hidden": 2**40``) are untrusted; the tensors of a safetensors
file are bounded by the file itself. Building the network on PyTorch's ``meta`` device costs no
memory, so its parameter names and shapes can be compared with the saved tensors first, and a
network that the file cannot fill is refused before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from hardened.errors import ConfigError

__all__ = ["check_state_fits"]


def check_state_fits(build: Callable[[], nn.Module], state: Mapping[str, Tensor], what: str) -> None:
    """``ConfigError`` unless ``build()``'s state dict has exactly the names and shapes of ``state``."""
    try:
        with torch.device("meta"):
            module = build()
    except (RuntimeError, ValueError, TypeError, OverflowError) as error:
        raise ConfigError(f"the saved {what} settings describe no valid network: {error}") from error
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state.items()}
    if expected != saved:
        wrong = sorted(set(expected) ^ set(saved)) or sorted(k for k in expected if expected[k] != saved[k])
        raise ConfigError(
            f"the saved {what} weights do not fit the network its settings describe "
            f"(first difference: {wrong[0]}); the guard folder is corrupt or was edited"
        )
