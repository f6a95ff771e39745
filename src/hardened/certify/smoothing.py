"""Randomized smoothing (Cohen, Rosenfeld and Kolter 2019, "Certified Adversarial Robustness via
Randomized Smoothing", ICML).

The smoothed classifier is ``g(x) = argmax_c P(f(x + e) = c)`` with ``e ~ N(0, sigma² I)`` over a base
classifier ``f`` (any model mapping N×C×H×W images to logits). ``predict`` returns g(x) or abstains
(two-sided binomial test); ``certify`` returns g(x) with an L2 radius ``sigma * Phi^-1(pA)``
within which g provably does not change, with probability at least ``1 - alpha`` over the noise.

Noise is drawn on the input's device in batches sized to memory, from an explicit
``torch.Generator`` or ``seed``: the same seed and batch size give the same result.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hardened._util.batching import eval_mode
from hardened._util.checks import check_images, check_model_output
from hardened._util.device import model_device
from hardened._util.memory import fit_batch_size
from hardened._util.seeding import make_generator
from hardened.certify.stats import (
    binomial_test,
    check_alpha,
    clopper_pearson_lower,
    min_samples_to_certify,
    min_samples_to_predict,
    normal_ppf,
)
from hardened.errors import ConfigError, InputError

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_N",
    "DEFAULT_N0",
    "Certificate",
    "SmoothedPrediction",
    "SmoothedClassifier",
    "auto_batch_size",
    "certify",
    "check_certify_settings",
    "predict",
    "sample_counts",
]

DEFAULT_N0 = 100
DEFAULT_N = 100_000
DEFAULT_ALPHA = 0.001
_MAX_AUTO_BATCH = 4096


@dataclass(frozen=True)
class Certificate:
    """The result of ``certify`` on one image.

    Attributes:
        prediction: the smoothed class, or ``None`` when the certificate abstained.
        radius: certified L2 radius ``sigma * Phi^-1(pA_lower)``; 0.0 when abstained.
        pa_lower: one-sided (1 - alpha) Clopper-Pearson lower bound on P(f(x + e) = prediction).
        counts: per-class counts of the ``n`` estimation samples.
        selection_counts: per-class counts of the ``n0`` selection samples.
        sigma, n0, n, alpha: the settings.
        seconds: wall-clock time of the call.
    """

    prediction: int | None
    radius: float
    pa_lower: float
    counts: tuple[int, ...]
    selection_counts: tuple[int, ...]
    sigma: float
    n0: int
    n: int
    alpha: float
    seconds: float

    @property
    def abstained(self) -> bool:
        """True when pA_lower <= 1/2: no class is certified."""
        return self.prediction is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"abstained": self.abstained, "counts": list(self.counts),
                               "selection_counts": list(self.selection_counts)}


@dataclass(frozen=True)
class SmoothedPrediction:
    """The result of ``predict`` on one image.

    Attributes:
        prediction: the smoothed class, or ``None`` when the binomial test could not separate the
            top two classes at level alpha (abstain).
        p_value: two-sided binomial test p-value of the top count against the runner-up.
        counts: per-class counts of the ``n`` samples.
        sigma, n, alpha: the settings; seconds: wall-clock time.
    """

    prediction: int | None
    p_value: float
    counts: tuple[int, ...]
    sigma: float
    n: int
    alpha: float
    seconds: float

    @property
    def abstained(self) -> bool:
        return self.prediction is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"abstained": self.abstained, "counts": list(self.counts)}


# ---------------------------------------------------------------- validation


def _check_sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ConfigError(f"sigma (the noise level) must be a positive finite number, e.g. 0.25, got {sigma!r}")
    return float(sigma)


MAX_SAMPLES = 10**8  # per image: 1,000 × the usual n = 100,000; beyond it a run takes days or years


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} (a number of noise samples) must be an integer >= 1, got {value!r}")
    if value > MAX_SAMPLES:
        raise ConfigError(
            f"{name}={value} noise samples per image is more than {MAX_SAMPLES:,} (at ~10^5 samples/s that "
            f"is {value / 1e5 / 86400:,.0f} days per image); 100,000 is the usual choice"
        )
    return int(value)


def _check_batch_size(batch_size: object) -> int | None:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1 or None (sized to memory), got {batch_size!r}")
    return int(batch_size)


def _check_single_image(x: object, bounds: tuple[float, float]) -> Tensor:
    """One image, C×H×W or 1×C×H×W, returned as 1×C×H×W."""
    if isinstance(x, Tensor) and x.dim() == 3:
        x = x.unsqueeze(0)
    x = check_images(x, bounds)
    if x.shape[0] != 1:
        raise InputError(
            f"certify/predict take one image (C×H×W or 1×C×H×W), got a batch of {x.shape[0]}; "
            "loop over the images or use hardened.certify.certify_dataset"
        )
    return x


def _check_device(model: nn.Module, x: Tensor) -> None:
    device = model_device(model, default=x.device)
    if device != x.device:
        raise InputError(
            f"the image is on {x.device} but the model is on {device}; "
            f"move the image with x.to('{device}') (the library never moves the model)"
        )


def _resolve_generator(
    generator: torch.Generator | None, seed: int | None, device: torch.device
) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ConfigError("pass either generator= or seed=, not both")
    if generator is None:
        return make_generator(seed, device)
    if torch.device(generator.device).type != device.type:
        raise ConfigError(
            f"the generator is on {generator.device} but the image is on {device}; "
            f"create it with torch.Generator(device='{device}')"
        )
    return generator


def check_certify_settings(
    sigma: float, n0: int, n: int, alpha: float, batch_size: int | None = None
) -> tuple[float, int, int, float, int | None]:
    """Validate the settings of ``certify`` (before any sampling) and return them normalised.

    Raises ``ConfigError`` for sigma <= 0, n0 or n < 1, alpha outside (0, 1), a bad batch size,
    and an ``n`` too small to ever certify at ``alpha`` (the message gives the smallest n that can).
    """
    sigma = _check_sigma(sigma)
    n0 = _check_count(n0, "n0")
    n = _check_count(n, "n")
    alpha = check_alpha(alpha)
    smallest = min_samples_to_certify(alpha)
    if n < smallest:
        raise ConfigError(
            f"n={n} can never certify at alpha={alpha:g}: even if all samples agree the lower bound "
            f"on pA stays <= 1/2; use n >= {smallest} (100,000 is the usual choice)"
        )
    return sigma, n0, n, alpha, _check_batch_size(batch_size)


# ---------------------------------------------------------------- sampling


def auto_batch_size(
    model: nn.Module, x: Tensor, limit: int | None = None, memory_bytes: int | None = None
) -> int:
    """Noise batch size that fits in memory: ``hardened._util.memory.fit_batch_size`` for a
    forward without gradients (a quarter of ``memory_bytes``, by default of the memory available
    on ``x``'s device, over the measured bytes per sample), capped at ``limit`` and 4096."""
    return fit_batch_size(model, x[:1], grad=False, limit=limit, memory_bytes=memory_bytes, cap=_MAX_AUTO_BATCH)


@torch.no_grad()
def sample_counts(
    model: nn.Module,
    x: Tensor,
    sigma: float,
    num: int,
    num_classes: int,
    batch_size: int,
    generator: torch.Generator,
) -> Tensor:
    """Per-class counts (int64, length ``num_classes``) of ``argmax f(x + e)`` over ``num`` draws
    of ``e ~ N(0, sigma² I)``; ``x`` is 1×C×H×W, the model is assumed in eval mode.

    The noise buffer is allocated once and refilled in place, on ``x``'s device and dtype.
    """
    counts = torch.zeros(num_classes, dtype=torch.long, device=x.device)
    buffer = torch.empty((min(batch_size, num), *x.shape[1:]), dtype=x.dtype, device=x.device)
    remaining = num
    while remaining > 0:
        size = min(batch_size, remaining)
        noisy = buffer[:size]
        torch.randn(noisy.shape, generator=generator, dtype=x.dtype, device=x.device, out=noisy)
        noisy.mul_(sigma).add_(x)
        predictions = model(noisy).argmax(dim=1)
        counts += torch.bincount(predictions, minlength=num_classes)[:num_classes]
        remaining -= size
    return counts


def _prepare(
    model: nn.Module, x: object, batch_size: int | None, limit: int, bounds: tuple[float, float]
) -> tuple[Tensor, int, int]:
    """Checked 1×C×H×W image, number of classes and noise batch size."""
    image = _check_single_image(x, bounds)
    _check_device(model, image)
    num_classes = int(check_model_output(model, image).shape[1])
    size = batch_size if batch_size is not None else auto_batch_size(model, image, limit)
    return image, num_classes, size


# ---------------------------------------------------------------- the two procedures


def certify(
    model: nn.Module,
    x: Tensor,
    sigma: float,
    n0: int = DEFAULT_N0,
    n: int = DEFAULT_N,
    alpha: float = DEFAULT_ALPHA,
    *,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Certificate:
    """CERTIFY of Cohen et al. (2019): a class and an L2 radius for one image.

    Selects ``cA`` as the most frequent class over ``n0`` noisy copies, counts ``nA`` over ``n``
    fresh copies, takes the one-sided Clopper-Pearson lower bound ``pA`` at level ``alpha`` and
    returns radius ``sigma * Phi^-1(pA)``, or abstains when ``pA <= 1/2``. With probability at
    least ``1 - alpha`` a returned class is the smoothed classifier's prediction everywhere
    within the radius.

    Args:
        model: base classifier (N×C×H×W -> N×K logits); put in eval mode during the call and
            restored afterwards; never moved or modified.
        x: one image, C×H×W or 1×C×H×W, in ``bounds``, on the model's device.
        sigma: noise standard deviation (in pixel units).
        n0, n: selection and estimation sample counts.
        alpha: failure probability.
        batch_size: noisy copies per forward pass (None: sized to memory).
        generator, seed: the noise source (one of them; neither: fresh entropy).
    """
    start = time.perf_counter()
    sigma, n0, n, alpha, batch_size = check_certify_settings(sigma, n0, n, alpha, batch_size)
    with eval_mode(model):
        image, num_classes, size = _prepare(model, x, batch_size, max(n0, n), bounds)
        rng = _resolve_generator(generator, seed, image.device)
        selection = sample_counts(model, image, sigma, n0, num_classes, size, rng)
        top = int(selection.argmax())
        counts = sample_counts(model, image, sigma, n, num_classes, size, rng)
    n_a = int(counts[top])
    pa_lower = clopper_pearson_lower(n_a, n, alpha)
    abstain = pa_lower <= 0.5
    radius = 0.0 if abstain else sigma * normal_ppf(pa_lower)
    return Certificate(
        prediction=None if abstain else top,
        radius=radius,
        pa_lower=pa_lower,
        counts=tuple(int(c) for c in counts.tolist()),
        selection_counts=tuple(int(c) for c in selection.tolist()),
        sigma=sigma,
        n0=n0,
        n=n,
        alpha=alpha,
        seconds=time.perf_counter() - start,
    )


def predict(
    model: nn.Module,
    x: Tensor,
    sigma: float,
    n: int = DEFAULT_N,
    alpha: float = DEFAULT_ALPHA,
    *,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> SmoothedPrediction:
    """PREDICT of Cohen et al. (2019): the smoothed class of one image, or abstain.

    Counts the top two classes ``nA``, ``nB`` over ``n`` noisy copies and answers the top class
    when the two-sided binomial test of ``nA`` out of ``nA + nB`` against 1/2 has p-value
    ``<= alpha``; then the answer differs from g(x) with probability at most ``alpha``.
    Arguments as for ``certify``.
    """
    start = time.perf_counter()
    sigma = _check_sigma(sigma)
    n = _check_count(n, "n")
    alpha = check_alpha(alpha)
    smallest = min_samples_to_predict(alpha)
    if n < smallest:
        raise ConfigError(
            f"n={n} can never pass the binomial test at alpha={alpha:g}, so predict would always "
            f"abstain; use n >= {smallest}"
        )
    batch_size = _check_batch_size(batch_size)
    with eval_mode(model):
        image, num_classes, size = _prepare(model, x, batch_size, n, bounds)
        rng = _resolve_generator(generator, seed, image.device)
        counts = sample_counts(model, image, sigma, n, num_classes, size, rng)
    values, classes = counts.topk(min(2, num_classes))
    n_a = int(values[0])
    n_b = int(values[1]) if num_classes > 1 else 0
    p_value = binomial_test(n_a, n_a + n_b, 0.5)
    return SmoothedPrediction(
        prediction=int(classes[0]) if p_value <= alpha else None,
        p_value=p_value,
        counts=tuple(int(c) for c in counts.tolist()),
        sigma=sigma,
        n=n,
        alpha=alpha,
        seconds=time.perf_counter() - start,
    )


class SmoothedClassifier:
    """A base classifier with Gaussian noise: ``predict`` and ``certify`` with fixed settings.

    Thin wrapper over the functions ``predict`` and ``certify``: it keeps the model, ``sigma``,
    the batch size and one noise generator (created from ``seed`` on the first call, on the
    input's device) that successive calls draw from. A fresh instance with ``seed=s`` gives the
    same first result as the function called with ``seed=s``.
    """

    def __init__(
        self,
        model: nn.Module,
        sigma: float,
        *,
        batch_size: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if generator is not None and seed is not None:
            raise ConfigError("pass either generator= or seed=, not both")
        self.model = model
        self.sigma = _check_sigma(sigma)
        self.batch_size = _check_batch_size(batch_size)
        self.seed = seed
        self.bounds = bounds
        self._generator = generator

    def _rng(self, x: object) -> torch.Generator | None:
        if not isinstance(x, Tensor):
            return None  # the function rejects x before any sampling
        if self._generator is None:
            self._generator = make_generator(self.seed, x.device)
        return self._generator

    def predict(self, x: Tensor, n: int = DEFAULT_N, alpha: float = DEFAULT_ALPHA) -> SmoothedPrediction:
        """The smoothed class of one image or an abstain (see ``hardened.certify.predict``)."""
        return predict(self.model, x, self.sigma, n, alpha, batch_size=self.batch_size,
                       generator=self._rng(x), bounds=self.bounds)

    def certify(
        self, x: Tensor, n0: int = DEFAULT_N0, n: int = DEFAULT_N, alpha: float = DEFAULT_ALPHA
    ) -> Certificate:
        """A class and certified L2 radius for one image (see ``hardened.certify.certify``)."""
        return certify(self.model, x, self.sigma, n0, n, alpha, batch_size=self.batch_size,
                       generator=self._rng(x), bounds=self.bounds)

    def __repr__(self) -> str:
        return f"SmoothedClassifier(sigma={self.sigma}, batch_size={self.batch_size}, seed={self.seed})"
