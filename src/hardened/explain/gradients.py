"""Gradient attributions, the baselines for LRP. Each maps ``(model, x, target)`` to
``(logits N×K, attribution N×C×H×W)`` for the target logit ``f_t``; no input checks here
(``explain`` does them).

- gradient: ``d f_t / d x``; saliency: ``|d f_t / d x|`` (Simonyan et al. 2014)
- gradient × input: ``x * d f_t / d x`` (Shrikumar et al. 2016)
- integrated gradients: ``(x - x0) * mean_k grad f_t(x0 + (k + 1/2)/m (x - x0))`` (midpoint
  Riemann sum; Sundararajan et al. 2017)
- SmoothGrad: ``mean_k grad f_t(x + n_k)``, ``n_k ~ N(0, (sigma (hi - lo))^2)`` (Smilkov 2017)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hardened.errors import ConfigError

__all__ = [
    "target_gradient",
    "gradient",
    "saliency",
    "gradient_x_input",
    "integrated_gradients",
    "smoothgrad",
]


def target_gradient(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(logits, d f_target / d x)`` with one forward and one backward pass."""
    with torch.enable_grad():
        x_var = x.detach().requires_grad_(True)
        logits = model(x_var)
        chosen = logits.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, x_var)
    return logits.detach(), grad.detach()


def gradient(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The plain gradient of the target logit."""
    return target_gradient(model, x, target)


def saliency(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Absolute gradient of the target logit (Simonyan et al. 2014)."""
    logits, grad = target_gradient(model, x, target)
    return logits, grad.abs()


def gradient_x_input(model: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient times input."""
    logits, grad = target_gradient(model, x, target)
    return logits, grad * x


def integrated_gradients(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    baseline: Tensor | float | None = None,
    steps: int = 32,
) -> tuple[Tensor, Tensor]:
    """Integrated gradients from ``baseline`` (zeros by default) in ``steps`` midpoint steps.

    Completeness: ``sum(attribution) ~= f_t(x) - f_t(baseline)`` (error shrinks with steps).
    """
    if int(steps) < 1:
        raise ConfigError(f"integrated gradients: steps must be >= 1, got {steps}")
    x0 = torch.zeros_like(x) if baseline is None else torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    total = torch.zeros_like(x)
    for k in range(int(steps)):
        alpha = (k + 0.5) / steps
        _, grad = target_gradient(model, x0 + alpha * (x - x0), target)
        total += grad
    with torch.no_grad():
        logits = model(x)
    return logits, (x - x0) * total / steps


def smoothgrad(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    samples: int = 16,
    sigma: float = 0.15,
    bounds: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean gradient over ``samples`` noisy copies; ``sigma`` relative to the pixel range."""
    if int(samples) < 1:
        raise ConfigError(f"smoothgrad: samples must be >= 1, got {samples}")
    if not float(sigma) >= 0:
        raise ConfigError(f"smoothgrad: sigma must be >= 0, got {sigma}")
    scale = float(sigma) * (bounds[1] - bounds[0])
    total = torch.zeros_like(x)
    for _ in range(int(samples)):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        _, grad = target_gradient(model, x + scale * noise, target)
        total += grad
    with torch.no_grad():
        logits = model(x)
    return logits, total / samples
