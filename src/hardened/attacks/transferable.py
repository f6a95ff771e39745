"""Transferable attacks: MI-FGSM with input diversity (DI) and translation invariance (TI),
crafted on an ensemble of source models.

- ``LogitEnsemble``: the mean of several models' logits (Liu et al. 2017, "Delving into
  transferable adversarial examples and black-box attacks"), a source to craft on.
- ``DiverseInputs``: with probability ``p``, resize the image to a random side in
  ``[H, H * resize_rate)``, pad it at a random place to ``H * resize_rate`` and resize it back to
  H×W before the model (Xie et al. 2019, "Improving transferability of adversarial examples
  with input diversity"; resized back because most classifiers take one input size).
- ``TransferMIFGSM`` (``"mifgsm-di-ti"``): MI-FGSM (Dong et al. 2018) on ``DiverseInputs`` of
  the model, its gradient smoothed by a Gaussian ``kernel_size``×``kernel_size`` kernel before the
  momentum (Dong et al. 2019, "Evading defenses to transferable adversarial examples by
  translation-invariant attacks").

``hardened.evaluate.transfer_matrix`` crafts on each source and measures every target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardened._util.seeding import make_generator
from hardened._util.validate import check_int, check_real
from hardened.attacks.base import ATTACKS, Oracle
from hardened.attacks.kernel import Direction, StepView
from hardened.attacks.pgd import MIFGSM
from hardened.errors import ConfigError

__all__ = ["DiverseInputs", "LogitEnsemble", "TransferMIFGSM", "gaussian_kernel"]


class LogitEnsemble(nn.Module):
    """The mean of the members' logits (every member maps N×C×H×W to N×K)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one source model")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


class DiverseInputs(nn.Module):
    """``model`` behind the DI transformation (random resize and pad, probability ``p``)."""

    def __init__(self, model: nn.Module, *, p: float = 0.5, resize_rate: float = 1.1, seed: int | None = 0) -> None:
        super().__init__()
        self.model = model
        self.p = check_real(p, "diversity_prob", minimum=0.0, maximum=1.0)
        self.resize_rate = check_real(resize_rate, "resize_rate", minimum=1.0)
        self._seed = seed
        self._generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self._generator is None:
            self._generator = make_generator(self._seed, x.device)
        g = self._generator
        h, w = x.shape[-2:]
        outer = max(int(h * self.resize_rate), h + 1) if self.resize_rate > 1 else h
        if float(torch.rand(1, generator=g, device=x.device)) >= self.p or outer == h:
            return self.model(x)
        side = int(torch.randint(h, outer, (1,), generator=g, device=x.device))
        top = int(torch.randint(0, outer - side + 1, (1,), generator=g, device=x.device))
        left = int(torch.randint(0, outer - side + 1, (1,), generator=g, device=x.device))
        resized = F.interpolate(x, size=(side, side * w // h), mode="nearest")
        padded = F.pad(resized, (left, outer * w // h - side * w // h - left, top, outer - side - top))
        return self.model(F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False))


def gaussian_kernel(size: int, sigma: float | None = None, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """A size×size Gaussian (sum 1); sigma defaults to ``size / sqrt(3) / 2`` (about Dong et al.'s
    ``kernlen`` with ``nsig = 3``)."""
    sigma = size / (2 * 3**0.5) if sigma is None else sigma
    axis = torch.arange(size, dtype=dtype) - (size - 1) / 2
    bump = torch.exp(-(axis**2) / (2 * sigma**2))
    kernel = bump[:, None] * bump[None, :]
    return kernel / kernel.sum()


class _Smoothed:
    """A direction hook that convolves the gradient with a kernel (per channel) first."""

    def __init__(self, kernel: Tensor, then: Direction) -> None:
        self.kernel, self.then = kernel, then

    def __call__(self, view: StepView) -> Tensor:
        c = view.grad.shape[1]
        weight = self.kernel.to(view.grad).expand(c, 1, *self.kernel.shape)
        grad = F.conv2d(view.grad, weight, padding=self.kernel.shape[-1] // 2, groups=c)
        return self.then(StepView(view.step, view.x, view.logits, view.values, grad, view.index))


@ATTACKS.register("mifgsm-di-ti", aliases=("di-ti-mifgsm", "transfer-mifgsm"))
class TransferMIFGSM(MIFGSM):
    """MI-FGSM with input diversity and translation invariance, for transfer to unseen models.

    Args: as ``MIFGSM``, plus ``diversity_prob`` (0 switches DI off), ``resize_rate`` and
    ``kernel_size`` (odd; 1 switches TI off). ``seed`` also drives the DI draws.
    """

    name = "mifgsm-di-ti"

    def __init__(
        self,
        *,
        eps: float,
        diversity_prob: float = 0.5,
        resize_rate: float = 1.1,
        kernel_size: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps=eps, **kwargs)
        DiverseInputs(nn.Identity(), p=diversity_prob, resize_rate=resize_rate)  # checks both
        self.diversity_prob, self.resize_rate = float(diversity_prob), float(resize_rate)
        self.kernel_size = check_int(kernel_size, "kernel_size", minimum=1)
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd (the kernel is centred), got {kernel_size}")

    def _first_gradient_at_clean(self) -> bool:
        return False  # the gradient is taken through the DI wrapper, never at the checked input

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        diverse = DiverseInputs(oracle.module, p=self.diversity_prob, resize_rate=self.resize_rate, seed=self.seed)
        inner = Oracle(diverse, oracle.num_classes, oracle.n)
        try:
            return super()._perturb(inner, x, y, targets)
        finally:
            oracle.forward_count += inner.forward_count
            oracle.gradient_count += inner.gradient_count

    def _direction(self, x: Tensor) -> Direction:
        """TI: smooth the raw gradient, then MI-FGSM's momentum and sign step."""
        momentum = super()._direction(x)
        if self.kernel_size == 1:
            return momentum
        return _Smoothed(gaussian_kernel(self.kernel_size, dtype=x.dtype), momentum)
