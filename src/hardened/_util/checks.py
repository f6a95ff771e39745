"""Input validation shared by attacks, explanations, certificates and guards."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import Tensor, nn

from hardened.errors import ConfigError, HardenedError, InputError

__all__ = ["check_images", "check_labels", "check_logits", "check_model_output", "forward_error"]


def check_images(x: object, bounds: tuple[float, float] = (0.0, 1.0), *, allow_empty: bool = False) -> Tensor:
    """Check that ``x`` is a finite float N×C×H×W tensor inside ``bounds``; return it."""
    if not isinstance(x, Tensor):
        raise InputError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(
            f"images must have shape N×C×H×W (4 dimensions), got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0) or a channel dimension with x.unsqueeze(1)"
        )
    if not x.is_floating_point():
        raise InputError(
            f"images must be floating point in [{bounds[0]}, {bounds[1]}], got dtype {x.dtype}; "
            "convert uint8 images with x.float() / 255"
        )
    if x.shape[0] == 0 and not allow_empty:
        raise InputError("the batch is empty (N = 0): pass at least one image")
    lo, hi = bounds
    if x.numel():
        # one pass: NaN propagates into the extremes and an infinity is one of them
        extremes = torch.aminmax(x)
        x_min, x_max = float(extremes.min), float(extremes.max)
        if not (math.isfinite(x_min) and math.isfinite(x_max)):
            bad = int((~torch.isfinite(x)).flatten(1).any(dim=1).sum())
            raise InputError(f"{bad} image(s) contain NaN or Inf values; clean or drop them first")
        if x_min < lo - 1e-6 or x_max > hi + 1e-6:
            raise InputError(
                f"pixel values span [{x_min:.4g}, {x_max:.4g}] but must lie in [{lo}, {hi}]; "
                "scale images to the bounds and put normalisation (mean/std) inside the model"
            )
    return x


def check_labels(y: object, n: int, num_classes: int | None = None, *, name: str = "labels") -> Tensor:
    """Check that ``y`` is an integer tensor of shape (n,) with values in [0, num_classes)."""
    if not isinstance(y, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of int64, got {type(y).__name__}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"{name} must be integer class indices, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != n:
        raise InputError(
            f"{name} must have shape ({n},) to match {n} images, got shape {tuple(y.shape)}"
        )
    if n and num_classes is not None:
        y_min, y_max = int(y.min()), int(y.max())
        if y_min < 0 or y_max >= num_classes:
            raise InputError(
                f"{name} span [{y_min}, {y_max}] but the model has {num_classes} classes "
                f"(valid: 0..{num_classes - 1})"
            )
    return y.long()


def check_model_output(model: Callable[[Tensor], Tensor], x: Tensor, *, keep_graph: bool = False) -> Tensor:
    """Run ``model`` on ``x`` and check it returns logits N×K; return them.

    Without ``keep_graph`` the pass runs under ``no_grad``; with it, autograd records the pass
    (for an ``x`` that requires grad) so a caller can backpropagate through the logits.
    """
    try:
        with torch.enable_grad() if keep_graph else torch.no_grad():
            out = model(x)
    except RuntimeError as error:
        raise forward_error(model, x, error) from error
    return check_logits(out, x.shape[0])


def check_logits(out: object, n: int) -> Tensor:
    """``out`` if it is a logits tensor N×K for ``n`` images, else ``InputError``."""
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != n:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise InputError(f"the model must return logits of shape N×K, got {shape} for {n} images")
    return out


_OUT_OF_MEMORY = re.compile(r"out of memory|can't allocate memory|not enough memory|failed to allocate", re.I)
_SHAPE = re.compile(
    r"shape|size mismatch|sizes? of tensor|channels|must match the size|cannot be multiplied|"
    r"kernel size can't be greater|input size|dimension|expected input",
    re.I,
)


def forward_error(model: Callable[[Tensor], Tensor], x: Tensor, error: RuntimeError) -> HardenedError:
    """The library's error for a ``RuntimeError`` raised by ``model(x)``, saying what it was.

    Out of memory -> ``ConfigError`` (lower the batch size); images of another dtype than the
    weights -> ``InputError`` (convert them); a shape or size mismatch -> ``InputError`` naming
    the image shape; anything else -> ``HardenedError`` with the error's own first line.
    """
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, torch.OutOfMemoryError) or _OUT_OF_MEMORY.search(first):
        return ConfigError(
            f"the model ran out of memory on a batch of {x.shape[0]} images ({first}); "
            "lower the batch size (--batch-size, or batch_size=)"
        )
    parameters = model.parameters() if isinstance(model, nn.Module) else ()
    weights = next((t.dtype for t in parameters if t.is_floating_point()), None)
    if weights is not None and x.is_floating_point() and x.dtype != weights:
        convert = "x.float()" if weights == torch.float32 else f"x.to({weights})"
        return InputError(
            f"the images are {str(x.dtype).removeprefix('torch.')} but the model's weights are "
            f"{str(weights).removeprefix('torch.')}: convert the images with {convert} ({first})"
        )
    if _SHAPE.search(first):
        return InputError(
            f"the model cannot take images of shape {tuple(x.shape[1:])} (C×H×W): {first}. "
            "Check the channel count and image size the model was built for"
        )
    return HardenedError(f"the model's forward pass failed on {x.shape[0]} images: {first}")
