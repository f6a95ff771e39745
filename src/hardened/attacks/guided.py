"""Explanation-guided attacks: spend the perturbation where the explanation finds the evidence.

- ``LRPFlip`` (L0): repeatedly explain the true class, flip the ``k`` most relevant pixels not yet
  changed to the opposite bound (``v -> lo + hi - v``), until the prediction changes or the
  pixel budget is spent.
- ``LRPMean`` (L0): the same, but the chosen pixels are set to a mean value (the image's
  per-channel mean, or given values such as the training data's mean).
- ``LRPGrad`` (Linf or L2): iterative gradient-sign steps restricted to (or weighted by) the
  pixels of highest relevance at that step; each sample stops as soon as it is adversarial.

``selection`` makes the comparison honest: ``"lrp"`` (relevance of the true class),
``"gradient"`` (gradient saliency: ``|d f_y / d x|`` for the pixel attacks, ``|d loss / d x|``
for LRP-grad, which costs nothing extra there) or ``"random"``. A pixel is an H×W position
(all channels change together); relevance is summed over channels. Each relevance map counts
as one gradient evaluation in the result's ``gradient_count``.

LRP-flip/mean turn the pixel-flipping evaluation of Samek et al. 2017 ("Evaluating the
visualization of what a deep neural network has learned") into an attack; LRP-grad is I-FGSM
(Kurakin et al. 2017) with the step masked by the explanation: the attack kernel
(``hardened.attacks.kernel``) with a direction hook that weights the gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from hardened._util.seeding import make_generator
from hardened._util.validate import check_int, check_real, check_seed
from hardened.attacks.base import ATTACKS, Attack, Oracle
from hardened.attacks.kernel import StepView, attack_objective, iterate, rows, success_stop
from hardened.attacks.losses import check_loss, is_success
from hardened.attacks.options import check_iterations, check_threat
from hardened.errors import ConfigError
from hardened.explain.attribute import lrp
from hardened.explain.composites import Composite, make_composite
from hardened.threat import ThreatModel, normalize_direction

__all__ = ["SELECTIONS", "LRPFlip", "LRPMean", "LRPGrad"]

SELECTIONS = ("lrp", "gradient", "random")


def _check_selection(selection: str) -> str:
    key = str(selection).lower()
    if key not in SELECTIONS:
        raise ConfigError(f"unknown selection {selection!r}: use one of {', '.join(SELECTIONS)}")
    return key


class _Guided(Attack):
    """Shared pieces: the selection scores and the composite."""

    seeded = True

    selection: str
    bounds: tuple[float, float]

    def _setup_guidance(self, selection: str, composite: str | Composite, seed: int | None) -> None:
        self.selection = _check_selection(selection)
        self._composite = make_composite(composite)
        self.composite = self._composite.name
        self.seed = check_seed(seed)

    def _relevance(self, oracle: Oracle, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, relevance N×C×H×W)`` of the true class, counted as one gradient each."""
        oracle.forward_count += x.shape[0]
        oracle.gradient_count += x.shape[0]
        return lrp(oracle.module, x, y, self._composite, bounds=self.bounds)

    def _pixel_scores(
        self, oracle: Oracle, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``(logits, score N×(H·W))``: higher = chosen first."""
        if self.selection == "lrp":
            logits, relevance = self._relevance(oracle, x, y)
            return logits, relevance.sum(dim=1).flatten(1)
        if self.selection == "gradient":
            logits, grad = oracle.input_grad(x, lambda z: z.gather(1, y[:, None]).squeeze(1))
            return logits, grad.abs().sum(dim=1).flatten(1)
        logits = oracle.logits(x)
        n, _, h, w = x.shape
        return logits, torch.rand((n, h * w), generator=generator, device=x.device)


@ATTACKS.register("lrp-flip")
class LRPFlip(_Guided):
    """L0 attack: change the ``pixels_per_step`` most relevant unchanged pixels per step.

    Args:
        max_pixels: pixel budget (H×W positions) per image.
        pixels_per_step: pixels changed between two explanations (smaller = more precise,
            more evaluations).
        selection: ``"lrp"``, ``"gradient"`` or ``"random"`` (the baselines).
        composite: LRP composite for ``selection="lrp"``.
        bounds: the pixel box; seed: for ``selection="random"``.
    """

    name = "lrp-flip"
    norms = ("l0",)

    def __init__(
        self,
        *,
        max_pixels: int = 100,
        pixels_per_step: int = 4,
        selection: str = "lrp",
        composite: str | Composite = "epsilon-gamma-box",
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        self.max_pixels = check_int(max_pixels, "max_pixels", minimum=1)
        self.pixels_per_step = check_int(pixels_per_step, "pixels_per_step", minimum=1)
        self.bounds = ThreatModel("linf", 0.0, bounds).bounds
        self._setup_guidance(selection, composite, seed)

    def _new_values(self, x: Tensor) -> Tensor:
        """The value each pixel would take if chosen (N×C×H×W)."""
        lo, hi = self.bounds
        return lo + hi - x

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        n, c, h, w = x.shape
        generator = make_generator(self.seed, x.device)
        replacement = self._new_values(x).reshape(n, c, h * w)
        x_adv = x.clone()
        flat_adv = x_adv.view(n, c, h * w)
        changed = torch.zeros(n, h * w, dtype=torch.bool, device=x.device)
        active = torch.arange(n, device=x.device)
        budget = min(self.max_pixels, h * w)
        spent = 0
        while spent < budget and active.numel():
            logits, score = self._pixel_scores(oracle, x_adv[active], y[active], generator)
            keep = ~is_success(logits, y[active], None)
            active, score = active[keep], score[keep]
            if active.numel() == 0:
                break
            k = min(self.pixels_per_step, budget - spent)
            score = score.masked_fill(changed[active], float("-inf"))
            chosen = score.topk(k, dim=1).indices
            changed[active[:, None], chosen] = True
            rows = active[:, None, None]
            channels = torch.arange(c, device=x.device)[None, :, None]
            cols = chosen[:, None, :]
            flat_adv[rows, channels, cols] = replacement[rows, channels, cols]
            spent += k
        return x_adv


@ATTACKS.register("lrp-mean")
class LRPMean(LRPFlip):
    """L0 attack like ``LRPFlip``, but chosen pixels are set to a mean value.

    Args:
        fill: ``"image"`` (each image's per-channel mean) or numbers (one, or one per channel),
            e.g. the training data's mean.
        Other arguments as ``LRPFlip``.
    """

    name = "lrp-mean"

    def __init__(self, *, fill: str | float | Sequence[float] = "image", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(fill, str):
            if fill != "image":
                raise ConfigError(f"fill must be 'image' or numbers, got {fill!r}")
            self.fill: str | tuple[float, ...] = "image"
        else:
            lo, hi = self.bounds
            given: Sequence[object] = fill if isinstance(fill, Sequence) else [fill]
            values = tuple(check_real(v, "fill", minimum=lo, maximum=hi) for v in given)
            if not values:
                raise ConfigError("fill must be 'image' or numbers in the bounds, got an empty sequence")
            self.fill = values

    def _new_values(self, x: Tensor) -> Tensor:
        if self.fill == "image":
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        values = torch.tensor(self.fill, dtype=x.dtype, device=x.device)
        if values.numel() not in (1, x.shape[1]):
            raise ConfigError(f"fill has {values.numel()} values but the images have {x.shape[1]} channels")
        return values.reshape(1, -1, 1, 1).expand_as(x)


@ATTACKS.register("lrp-grad")
class LRPGrad(_Guided):
    """Iterative gradient attack whose step is restricted to the most relevant pixels.

    Each step: ``x <- Proj(x + alpha * direction(grad_loss * m))`` where ``m`` is 1 on the
    ``ceil(pixel_fraction * H * W)`` pixels of highest score and 0 elsewhere (``mode="mask"``),
    or the positive relevance scaled to max 1 (``mode="weight"``). With ``pixel_fraction=1``
    and ``mode="mask"`` it is I-FGSM (BIM). Stops per sample on success.

    Args:
        eps: radius of the ``norm`` ball (``"linf"`` or ``"l2"``).
        steps: iterations; step_size: ``alpha`` (default ``2.5 * eps / steps``, as BIM).
        pixel_fraction: share of the H×W pixels a step may change, in (0, 1].
        mode: ``"mask"`` or ``"weight"``; selection: ``"lrp"``, ``"gradient"`` or ``"random"``.
        loss: ``"ce"`` or ``"margin"``; composite, bounds, seed as ``LRPFlip``.
    """

    name = "lrp-grad"
    norms = ("linf", "l2")

    def __init__(
        self,
        *,
        eps: float = 0.3,
        norm: str = "linf",
        steps: int = 20,
        step_size: float | None = None,
        pixel_fraction: float = 0.1,
        mode: str = "mask",
        selection: str = "lrp",
        loss: str = "ce",
        composite: str | Composite = "epsilon-gamma-box",
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        self.threat = check_threat(norm, eps, bounds, norms=("linf", "l2"), attack="LRP-grad")
        self.bounds = self.threat.bounds
        self.steps, self.step_size = check_iterations(self.threat, steps, step_size)
        self.pixel_fraction = check_real(pixel_fraction, "pixel_fraction", minimum=0.0, maximum=1.0, open_below=True)
        if mode not in ("mask", "weight"):
            raise ConfigError(f"mode must be 'mask' or 'weight', got {mode!r}")
        self.mode = mode
        self.loss = check_loss(loss)
        self._setup_guidance(selection, composite, seed)

    def _weights(self, oracle: Oracle, x: Tensor, y: Tensor, grad: Tensor, generator: torch.Generator) -> Tensor:
        """Per-pixel step weights N×1×H×W in [0, 1]."""
        n, _, h, w = x.shape
        if self.selection == "lrp":
            _, relevance = self._relevance(oracle, x, y)
            score = relevance.sum(dim=1).flatten(1)
        elif self.selection == "gradient":
            score = grad.abs().sum(dim=1).flatten(1)
        else:
            score = torch.rand((n, h * w), generator=generator, device=x.device)
        if self.mode == "weight":
            positive = score.clamp(min=0)
            weights = positive / positive.amax(dim=1, keepdim=True).clamp(min=1e-12)
        else:
            k = max(1, math.ceil(self.pixel_fraction * h * w))
            weights = torch.zeros_like(score)
            weights.scatter_(1, score.topk(k, dim=1).indices, 1.0)
        return weights.reshape(n, 1, h, w)

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        threat = self.threat
        if threat is None or threat.eps == 0.0:
            return x
        generator = make_generator(self.seed, x.device)

        def direction(view: StepView) -> Tensor:
            weights = self._weights(oracle, view.x, rows(y, view.index), view.grad, generator)
            if threat.norm == "linf":
                return view.grad.sign() * weights
            return normalize_direction(view.grad * weights, "l2")

        return iterate(
            oracle, x, x.clone(), threat=threat, steps=self.steps, step_size=self.step_size,
            objective=attack_objective(self.loss, y), direction=direction, stop=success_stop(y),
        )
