"""Batch iteration over tensors and models, without autograd where it is not needed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from hardened._util.device import submodules

__all__ = ["batch_slices", "predict_logits", "eval_mode"]


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)`` in steps of ``batch_size``."""
    if batch_size < 1:
        from hardened.errors import ConfigError

        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


class eval_mode:
    """Context manager: put ``model`` in eval mode and restore its previous mode on exit. A
    model that is a plain callable (an outputs-only model) has no mode and is left as it is."""

    def __init__(self, model: nn.Module | Callable[[Tensor], Tensor]) -> None:
        self.model = model
        self._modes: list[nn.Module] = []

    def __enter__(self) -> nn.Module | Callable[[Tensor], Tensor]:
        if isinstance(self.model, nn.Module):
            # only the modules in training mode change (and are restored): a model already in
            # eval mode, as a served one is, costs one walk over its modules and no eval() call
            self._modes = [m for m in submodules(self.model) if m.training]
            if self._modes:
                self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for module in self._modes:
            module.training = True


@torch.no_grad()
def predict_logits(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor, batch_size: int = 512) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched; the model's mode is restored."""
    with eval_mode(model):
        if x.shape[0] == 0:
            probe = model(x[:0])
            return probe.detach()
        return torch.cat([model(x[s]).detach() for s in batch_slices(x.shape[0], batch_size)])
