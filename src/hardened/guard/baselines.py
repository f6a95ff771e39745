"""Baseline reliability scores computed from the classifier (no extra network).

- ``MaxSoftmax``: ``1 - max_k softmax(z)_k`` (Hendrycks & Gimpel 2017, "A baseline for
  detecting misclassified and out-of-distribution examples").
- ``Energy``: ``E(x) = -T * logsumexp(z / T)`` (Liu et al. 2020, "Energy-based out-of-distribution
  detection").
- ``Mahalanobis``: ``min_k (f - mu_k)^T Sigma^-1 (f - mu_k)`` on the penultimate features ``f``
  with class means ``mu_k`` and one shared covariance ``Sigma`` (Lee et al. 2018, "A simple unified
  framework for detecting out-of-distribution samples and adversarial attacks").

All three are differentiable in the input, so the adaptive attack can descend them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from hardened._util.batching import batch_slices, eval_mode
from hardened._util.progress import progress_bar
from hardened.errors import ConfigError, InputError
from hardened.guard.base import ClassifierScore

__all__ = ["MaxSoftmax", "Energy", "Mahalanobis", "penultimate_features", "last_linear"]


class MaxSoftmax(ClassifierScore):
    """``1 - max softmax probability``: in [0, 1 - 1/K], higher = less confident."""

    name = "softmax"

    def _fit(self, x: Tensor, y: Tensor | None, progress: bool) -> None:
        return None

    def _score(self, x: Tensor) -> Tensor:
        return 1.0 - self.model(x).float().softmax(dim=1).amax(dim=1)


class Energy(ClassifierScore):
    """Free energy ``-T logsumexp(z / T)`` of the logits ``z``; higher = less reliable.

    Args:
        model: the classifier.
        temperature: ``T > 0`` (1 in Liu et al. 2020).
    """

    name = "energy"

    def __init__(self, model: nn.Module, *, temperature: float = 1.0, batch_size: int = 256) -> None:
        super().__init__(model, batch_size=batch_size)
        if not float(temperature) > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def _fit(self, x: Tensor, y: Tensor | None, progress: bool) -> None:
        return None

    def _score(self, x: Tensor) -> Tensor:
        t = self.temperature
        return -t * torch.logsumexp(self.model(x).float() / t, dim=1)

    def _options(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "batch_size": self.batch_size}


def last_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` registered in ``model`` (the classification layer of the zoo models)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            "the Mahalanobis score needs penultimate features: the model has no nn.Linear layer "
            "whose input could be read; use the softmax or energy score instead"
        )
    return linears[-1]


@contextmanager
def _tap(layer: nn.Module) -> Iterator[list[Tensor]]:
    """Record the input of ``layer`` on each forward; the hook is removed on exit."""
    captured: list[Tensor] = []

    def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        captured.append(inputs[0])

    handle = layer.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def penultimate_features(model: nn.Module, x: Tensor) -> Tensor:
    """Input of the model's last linear layer for images ``x``: N×D (differentiable)."""
    with _tap(last_linear(model)) as captured:
        model(x)
    if not captured:
        raise InputError("the model's last linear layer was not called in the forward pass")
    return captured[-1].flatten(1)


class Mahalanobis(ClassifierScore):
    """Minimum squared Mahalanobis distance of the penultimate features to the class means.

    ``fit`` uses the labels of a ``Dataset`` (or the classifier's predictions for a bare image
    tensor). The shared covariance is regularised as ``Sigma + ridge * tr(Sigma)/D * I`` so that
    it stays invertible for rank-deficient (e.g. ReLU) features.

    Args:
        model: the classifier; features are the input of its last ``nn.Linear``.
        ridge: relative diagonal regularisation, ``>= 0``.
    """

    name = "mahalanobis"

    def __init__(self, model: nn.Module, *, ridge: float = 1e-6, batch_size: int = 256) -> None:
        super().__init__(model, batch_size=batch_size)
        if not float(ridge) >= 0:
            raise ConfigError(f"ridge must be >= 0, got {ridge}")
        self.ridge = float(ridge)
        self.means: Tensor | None = None
        self.precision: Tensor | None = None

    def _fit(self, x: Tensor, y: Tensor | None, progress: bool) -> None:
        feats, preds = [], []
        with eval_mode(self.model), torch.no_grad(), progress_bar(
            -(-x.shape[0] // self.batch_size), "mahalanobis features", progress
        ) as bar:
            for part in batch_slices(x.shape[0], self.batch_size):
                with _tap(last_linear(self.model)) as captured:
                    logits = self.model(x[part])
                feats.append(captured[-1].flatten(1).double())
                preds.append(logits.argmax(dim=1))
                bar.advance()
        f = torch.cat(feats)
        labels = (y if y is not None else torch.cat(preds)).to(f.device)
        classes = int(labels.max()) + 1
        counts = torch.bincount(labels, minlength=classes)
        if bool((counts < 1).any()):
            missing = (counts < 1).nonzero().flatten().tolist()
            raise InputError(f"the Mahalanobis score needs samples of every class; none of classes {missing}")
        means = torch.zeros(classes, f.shape[1], dtype=torch.float64, device=f.device)
        means.index_add_(0, labels, f)
        means /= counts[:, None].double()
        centred = f - means[labels]
        cov = centred.T @ centred / max(f.shape[0] - 1, 1)
        dim = cov.shape[0]
        scale = float(torch.trace(cov)) / dim if dim else 1.0
        cov = cov + (self.ridge * scale + 1e-12) * torch.eye(dim, dtype=cov.dtype, device=cov.device)
        self.means = means.float()
        self.precision = torch.linalg.inv(cov).float()
        self.fit_record = {"classes": classes, "feature_dim": dim}

    def _score(self, x: Tensor) -> Tensor:
        if self.means is None or self.precision is None:
            raise InputError("the Mahalanobis score has no class means; call fit first")
        f = penultimate_features(self.model, x).float()
        diff = f[:, None, :] - self.means[None, :, :]  # N×K×D
        dist = torch.einsum("nkd,de,nke->nk", diff, self.precision, diff)
        return dist.amin(dim=1)

    def _options(self) -> dict[str, Any]:
        return {"ridge": self.ridge, "batch_size": self.batch_size}

    def _state(self) -> dict[str, Tensor]:
        if self.means is None or self.precision is None:
            return {}
        return {"means": self.means, "precision": self.precision}

    def _load(self, tensors: dict[str, Tensor], input_shape: tuple[int, int, int]) -> None:
        if "means" not in tensors or "precision" not in tensors:
            raise ConfigError("the saved Mahalanobis score lacks its means/precision tensors")
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self.means = tensors["means"].float().to(device)
        self.precision = tensors["precision"].float().to(device)
