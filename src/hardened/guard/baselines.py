"""Baseline reliability scores computed from the classifier (no extra network).

- ``MaxSoftmax``: ``1 - max_k softmax(z)_k`` (Hendrycks & Gimpel 2017, "A baseline for
  detecting misclassified and out-of-distribution examples").
- ``Energy``: ``E(x) = -T * logsumexp(z / T)`` (Liu et al. 2020, "Energy-based out-of-distribution
  detection").
- ``Mahalanobis``: ``min_k (f - mu_k)^T Sigma^-1 (f - mu_k)`` on the penultimate features ``f``
  with class means ``mu_k`` and one shared covariance ``Sigma`` (Lee et al. 2018, "A simple unified
  framework for detecting out-of-distribution samples and adversarial attacks"). With
  ``layers="all"`` the same distance is taken on every Linear/Conv layer's output (convolutions
  averaged over space, as Lee et al. do) and the per-layer distances are summed after
  standardising each with its mean and spread on held-back training images (Lee et al. weight
  the layers with a regression fitted on OOD data instead, which a guard without OOD data lacks).

All three are differentiable in the input, so the adaptive attack can descend them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import Tensor, nn

from hardened._util.batching import batch_slices, eval_mode
from hardened._util.device import model_device
from hardened._util.progress import progress_bar
from hardened.errors import ConfigError, InputError, NotFittedError
from hardened.guard.base import SCORES, ClassifierScore, LogitScore

__all__ = ["MaxSoftmax", "Energy", "Mahalanobis", "penultimate_features", "last_linear", "LAYER_CHOICES"]

LAYER_CHOICES = ("penultimate", "all")


@SCORES.register("softmax", aliases=("msp", "max-softmax"))
class MaxSoftmax(LogitScore):
    """``1 - max softmax probability``: in [0, 1 - 1/K], higher = less confident."""

    name = "softmax"
    requires_fit = False

    def _fit(self, x: Tensor, y: Tensor | None, progress: bool) -> None:
        return None

    def _from_logits(self, logits: Tensor) -> Tensor:
        return 1.0 - logits.float().softmax(dim=1).amax(dim=1)


@SCORES.register("energy")
class Energy(LogitScore):
    """Free energy ``-T logsumexp(z / T)`` of the logits ``z``; higher = less reliable.

    Args:
        model: the classifier.
        temperature: ``T > 0`` (1 in Liu et al. 2020).
    """

    name = "energy"
    requires_fit = False

    def __init__(self, model: nn.Module, *, temperature: float = 1.0, batch_size: int = 256) -> None:
        super().__init__(model, batch_size=batch_size)
        if not float(temperature) > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def _fit(self, x: Tensor, y: Tensor | None, progress: bool) -> None:
        return None

    def _from_logits(self, logits: Tensor) -> Tensor:
        t = self.temperature
        if t == 1.0:  # Liu et al.'s default: two operations fewer
            return -torch.logsumexp(logits.float(), dim=1)
        return -t * torch.logsumexp(logits.float() / t, dim=1)

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


def _penultimate_and_logits(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The input of the model's last linear layer (N×D) and the logits, from one forward pass."""
    with _tap(last_linear(model)) as captured:
        logits = model(x)
    if not captured:
        raise InputError("the model's last linear layer was not called in the forward pass")
    return captured[-1].flatten(1), logits


def penultimate_features(model: nn.Module, x: Tensor) -> Tensor:
    """Input of the model's last linear layer for images ``x``: N×D (differentiable)."""
    return _penultimate_and_logits(model, x)[0]


def _feature_layers(model: nn.Module) -> list[nn.Module]:
    layers: list[nn.Module] = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if not layers:
        raise ConfigError(
            "the Mahalanobis score with layers='all' needs Linear or Conv layers to read features "
            "from; use the softmax or energy score instead"
        )
    return layers


def _layer_feature(output: Tensor) -> Tensor:
    """A layer's output as features N×D (convolutions averaged over space, as Lee et al. do)."""
    return output.mean(dim=tuple(range(2, output.dim()))) if output.dim() > 2 else output


@contextmanager
def _tap_outputs(layers: list[nn.Module]) -> Iterator[list[Tensor]]:
    """Record each layer's output (as ``_layer_feature``) on each forward."""
    captured: list[Tensor] = []

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        captured.append(_layer_feature(output))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


class _FeatureTaps:
    """Where the all-layer Mahalanobis score reads its features in ``model``: ``layers``, and
    ``children``, one flag per child, when ``model`` is a plain ``nn.Sequential`` whose feature
    layers are all direct children. Then ``run`` calls the children in turn and keeps the
    flagged outputs: the computation ``Sequential.forward`` does, without registering, calling
    and removing a forward hook per layer on every batch (measured on a 1-image LeNet batch,
    those hooks cost more than the distances). Hooks on the model itself, or global ones, would
    be skipped by such a run, so it is used only when there are none."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.layers = model, _feature_layers(model)
        self.children: list[bool] | None = None
        if type(model) is nn.Sequential:
            tapped = {id(layer) for layer in self.layers}
            flags = [id(child) in tapped for child in model]
            if sum(flags) == len(self.layers):
                self.children = flags

    def run(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The layers' features and the model's output for ``x``."""
        model = self.model
        if self.children is None or _hooked(model):
            with _tap_outputs(self.layers) as outputs:
                logits = model(x)
            return list(outputs), logits
        features = []
        for child, tapped in zip(cast(nn.Sequential, model), self.children, strict=True):
            x = child(x)
            if tapped:
                features.append(_layer_feature(x))
        return features, x


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(model: nn.Module) -> bool:
    """Whether ``model`` has hooks of its own, or any global module hook is registered
    (``torch.nn.modules.module.register_module_forward_hook`` and the like)."""
    module = torch.nn.modules.module
    return any(getattr(model, name, None) for name in _HOOKS) or any(
        getattr(module, f"_global{name}", None) for name in _HOOKS)


def _gaussian(f: Tensor, labels: Tensor, ridge: float) -> tuple[Tensor, Tensor]:
    """Class means K×D and the shared (ridge-regularised) precision D×D of features ``f`` (float64)."""
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
    cov = cov + (ridge * scale + 1e-12) * torch.eye(dim, dtype=cov.dtype, device=cov.device)
    return means, torch.linalg.inv(cov)


def _min_distance(f: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """``min_k (f_n - mu_k)ᵀ P (f_n - mu_k)`` for features ``f`` N×D, means K×D, symmetric P D×D."""
    return _ClassGaussians(means, precision).min_distance(f)


class _ClassGaussians:
    """One layer's class means K×D and shared precision P (D×D, symmetric), with what every
    distance reuses precomputed: ``P mu_k`` and ``mu_kᵀ P mu_k``.

    ``min_distance`` expands ``(f - mu_k)ᵀ P (f - mu_k)`` as ``fᵀPf - 2 fᵀ(P mu_k) + mu_kᵀ P mu_k``:
    N·D² + N·K·D multiply-adds instead of the difference form's N·K·D² (ten times fewer for ten
    classes), in a handful of tensor operations (a served one-image request is bound by their
    count). The expansion cancels large terms, so it runs in float64: in float32 an image scored
    alone and the same image in a batch differed by 1e-3 (relative) in the all-layer score.
    """

    def __init__(self, means: Tensor, precision: Tensor) -> None:
        means, self.precision = means.double(), precision.double()
        self.projected_means_t = (means @ self.precision).T.contiguous()  # D×K
        self.mean_norms = (self.projected_means_t.T * means).sum(dim=1)  # K

    def min_distance(self, f: Tensor) -> Tensor:
        """Shape N (float32) for features ``f`` N×D."""
        f = f.double()
        quadratic = ((f @ self.precision) * f).sum(dim=1, keepdim=True)  # N×1
        squared = torch.addmm(self.mean_norms, f, self.projected_means_t, alpha=-2.0) + quadratic
        return squared.amin(dim=1).clamp_min(0.0).float()  # rounding can undershoot 0 on a mean


class _LayerDistances:
    """Every layer's minimum class distance (N×L) from per-layer features, precomputed per layer.

    With several layers of few dimensions in all (<= ``STACK_LIMIT``, e.g. a lenet's 16 + 32 +
    128 + 10), the layers are stacked: one block-diagonal precision and one matrix of projected
    means, so every layer's distances come from ten tensor operations instead of five per layer
    (a served one-image request is bound by their count, not by arithmetic).
    """

    STACK_LIMIT = 1024

    def __init__(self, means: list[Tensor], precisions: list[Tensor], z_mean: Tensor | None = None,
                 z_std: Tensor | None = None) -> None:
        self.layers = [_ClassGaussians(m, p) for m, p in zip(means, precisions, strict=True)]
        # the standardisation of ``standardised_sum``: weights 1/z_std and offset -sum(z_mean/z_std)
        self.standardisation: tuple[Tensor, Tensor] | None = None
        if z_mean is not None and z_std is not None:
            weights = 1.0 / z_std.double()
            self.standardisation = weights, -(z_mean.double() * weights).sum()
        dims = [m.shape[1] for m in means]
        self.stacked = len(means) > 1 and sum(dims) <= self.STACK_LIMIT and len({m.shape[0] for m in means}) == 1
        if not self.stacked:
            return
        classes, total, device = means[0].shape[0], sum(dims), means[0].device
        self.shape = (len(means), classes)
        self.precision = torch.block_diag(*(g.precision for g in self.layers))
        self.segments = torch.zeros(total, len(means), dtype=torch.float64, device=device)
        self.cross = torch.zeros(total, len(means) * classes, dtype=torch.float64, device=device)
        offset = 0
        for k, (gaussians, dim) in enumerate(zip(self.layers, dims, strict=True)):
            self.segments[offset:offset + dim, k] = 1.0
            self.cross[offset:offset + dim, k * classes:(k + 1) * classes] = gaussians.projected_means_t
            offset += dim
        self.norms = torch.cat([g.mean_norms for g in self.layers])

    def __call__(self, features: list[Tensor]) -> Tensor:
        if not self.stacked:
            return torch.stack([g.min_distance(f) for f, g in zip(features, self.layers, strict=True)], 1)
        return self._stacked(features).float()

    def _stacked(self, features: list[Tensor]) -> Tensor:
        """The stacked layers' distances N×L in float64 (the quadratic term is the same for every
        class, so it is added after the minimum over the classes)."""
        f = torch.cat(features, dim=1).double()
        quadratic = ((f @ self.precision) * f) @ self.segments  # N×L
        cross = torch.addmm(self.norms, f, self.cross, alpha=-2.0).view(f.shape[0], *self.shape)  # N×L×K
        return (cross.amin(dim=2) + quadratic).clamp_min(0.0)

    def standardised_sum(self, features: list[Tensor]) -> Tensor:
        """``sum_l (d_l - z_mean_l) / z_std_l`` (N,), float32, with the ``z_mean`` / ``z_std``
        given at construction: the all-layer score, its standardisation folded into one
        matrix-vector product."""
        if self.standardisation is None:
            raise NotFittedError("these layer distances were built without z_mean / z_std")
        weights, offset = self.standardisation
        distances = self._stacked(features) if self.stacked else self(features).double()
        return torch.addmv(offset, distances, weights).float()


@SCORES.register("mahalanobis")
class Mahalanobis(ClassifierScore):
    """Minimum squared Mahalanobis distance of the classifier's features to the class means.

    ``fit`` uses the labels of a ``Dataset`` (or the classifier's predictions for a bare image
    tensor). The shared covariance is regularised as ``Sigma + ridge * tr(Sigma)/D * I`` so that
    it stays invertible for rank-deficient (e.g. ReLU) features.

    Args:
        model: the classifier.
        layers: ``"penultimate"`` (the input of the last ``nn.Linear``) or ``"all"`` (every
            Linear/Conv output; distances standardised on every fifth fit image, which is held
            back from the Gaussians, and summed). On MNIST against Fashion-MNIST, ``"all"`` gives
            an AUROC of about 0.9999 where the penultimate layer alone gives 0.88.
        ridge: relative diagonal regularisation, ``>= 0``.
    """

    name = "mahalanobis"

    def __init__(
        self, model: nn.Module, *, layers: str = "penultimate", ridge: float = 1e-6, batch_size: int = 256
    ) -> None:
        super().__init__(model, batch_size=batch_size)
        if not float(ridge) >= 0:
            raise ConfigError(f"ridge must be >= 0, got {ridge}")
        if layers not in LAYER_CHOICES:
            raise ConfigError(f"layers must be one of {', '.join(LAYER_CHOICES)}, got {layers!r}")
        self.layers = layers
        self.ridge = float(ridge)
        self.means: list[Tensor] = []
        self.precisions: list[Tensor] = []
        self._distances: _LayerDistances | None = None  # built from means/precisions on first use
        self._taps: _FeatureTaps | None = None  # where the features are read in the model
        self.z_mean: Tensor | None = None
        self.z_std: Tensor | None = None

    def _features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Per-layer features (each N×D) and the logits for images ``x`` (differentiable)."""
        if self.layers == "penultimate":
            features, logits = _penultimate_and_logits(self.model, x)
            return [features], logits
        if self._taps is None or self._taps.model is not self.model:
            self._taps = _FeatureTaps(self.model)
        return self._taps.run(x)

    def _fit(self, x: Tensor, y: Tensor | None, progress: bool) -> None:
        parts: list[list[Tensor]] = []
        preds = []
        with eval_mode(self.model), torch.no_grad(), progress_bar(
            -(-x.shape[0] // self.batch_size), "mahalanobis features", progress
        ) as bar:
            for part in batch_slices(x.shape[0], self.batch_size):
                features, logits = self._features(x[part])
                parts.append([f.double() for f in features])
                preds.append(logits.argmax(dim=1))
                bar.advance()
        feats = [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]
        labels = (y if y is not None else torch.cat(preds)).to(feats[0].device)
        held = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
        if self.layers == "all":
            held[4::5] = True
            if int(held.sum()) < 2 or bool((torch.bincount(labels[~held]) < 1).any()):
                raise InputError(
                    "the Mahalanobis score with layers='all' holds back every fifth fit image to "
                    f"standardise the layers; {labels.shape[0]} images leave too few: give more"
                )
        fitted = [_gaussian(f[~held], labels[~held], self.ridge) for f in feats]
        # contiguous, as they come back from a saved file: the same layout gives the same sums
        self.means = [m.float().contiguous() for m, _ in fitted]
        self.precisions = [p.float().contiguous() for _, p in fitted]
        self._distances = None
        self.fit_record = {"classes": int(self.means[0].shape[0]),
                           "feature_dims": [int(m.shape[1]) for m in self.means]}
        if self.layers == "all":
            distances = torch.stack([_min_distance(f[held], m, p) for f, (m, p) in zip(feats, fitted, strict=True)], 1)
            self.z_mean = distances.mean(dim=0).float()
            self.z_std = distances.std(dim=0).clamp(min=1e-12).float()
            self.fit_record["standardised_on"] = int(held.sum())

    def _score(self, x: Tensor) -> Tensor:
        return self._score_with_logits(x)[0]

    def _score_with_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.means:
            raise NotFittedError("the mahalanobis score is not fitted (no class means): call fit(train_data) first")
        features, logits = self._features(x)
        return self._from_features(features), logits

    def _from_features(self, features: list[Tensor]) -> Tensor:
        if self._distances is None:
            self._distances = _LayerDistances(self.means, self.precisions, self.z_mean, self.z_std)
        if self.layers == "penultimate":
            return self._distances.layers[0].min_distance(features[0])
        return self._distances.standardised_sum(features)

    def _options(self) -> dict[str, Any]:
        return {"layers": self.layers, "ridge": self.ridge, "batch_size": self.batch_size}

    def _state(self) -> dict[str, Tensor]:
        if not self.means:
            return {}
        if self.layers == "penultimate":
            return {"means": self.means[0], "precision": self.precisions[0]}
        assert self.z_mean is not None and self.z_std is not None
        state = {"z_mean": self.z_mean, "z_std": self.z_std}
        for k, (m, p) in enumerate(zip(self.means, self.precisions, strict=True)):
            state |= {f"means.{k}": m, f"precision.{k}": p}
        return state

    def _load(self, tensors: dict[str, Tensor], input_shape: tuple[int, int, int]) -> None:
        device = model_device(self.model)
        if self.layers == "penultimate":
            keys = [("means", "precision")]
        else:
            count = len([k for k in tensors if k.startswith("means.")])
            keys = [(f"means.{k}", f"precision.{k}") for k in range(count)]
            if not count or "z_mean" not in tensors or "z_std" not in tensors:
                raise ConfigError("the saved Mahalanobis score lacks its per-layer tensors")
            self.z_mean, self.z_std = tensors["z_mean"].float().to(device), tensors["z_std"].float().to(device)
        if any(m not in tensors or p not in tensors for m, p in keys):
            raise ConfigError("the saved Mahalanobis score lacks its means/precision tensors")
        self.means = [tensors[m].float().to(device) for m, _ in keys]
        self.precisions = [tensors[p].float().to(device) for _, p in keys]
        self._distances = None
