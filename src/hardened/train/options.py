"""From the settings a user gives once to the options each training method takes.

``hardened train`` and ``hardened defend-compare`` take one flat set of settings (eps, norm,
steps, beta, sigma...); ``method_options`` routes to each method only what it uses, so that
``make_method(name, **method_options(name, settings))`` builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hardened.errors import ConfigError
from hardened.train.methods import GUARD_ACTIONS, METHODS, CollapseGuard

__all__ = ["MethodSettings", "method_options", "collapse_guard", "default_lr", "default_lr_schedule"]

GUARD_MODES = (*GUARD_ACTIONS, "off")


@dataclass(frozen=True)
class MethodSettings:
    """The union of the methods' settings (``eps=None``: not given; adversarial methods need it)."""

    eps: float | None = None
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    beta: float = 6.0
    sigma: float = 0.25
    adversarial_lr_scale: float = 0.5
    guard: CollapseGuard | None = None
    eps_warmup: float = 0.0
    noise: float | None = None
    grad_align: float = 0.0
    robust_loss: str = "pgd"
    labelled: str = "standard"


def collapse_guard(
    mode: str, drop: float, every: int, gap: float = 0.3, floor: float = 0.1, start: float = 0.25
) -> CollapseGuard | None:
    """The fgsm catastrophic-overfitting guard for ``mode`` (stop, lower, report or off: none)."""
    if mode not in GUARD_MODES:
        raise ConfigError(f"--guard must be one of {', '.join(GUARD_MODES)}, got {mode!r}")
    if mode == "off":
        return None
    return CollapseGuard(drop=drop, every=every, action=mode, gap=gap, floor=floor, start=start)


DEFAULT_LR = 1e-3
FAST_ADAM_LR = 7e-3  # the peak of fgsm's cyclic schedule with Adam (Wong et al. 2020 use 5e-3 on full MNIST)


def default_lr(method: str, optimizer: str, lr: float | None) -> float:
    """``lr`` when given; else 7e-3 for fgsm with Adam (the peak of its cyclic schedule), else 1e-3.

    Wong et al. 2020 peak at 5e-3 over 6,000 steps of full MNIST (the ``fast-mnist`` recipe keeps
    it). A short run needs more: on mnist-5k (lenet, Linf 0.3, 8 epochs = 256 steps, eps warm-up
    0.4) PGD-40 accuracy over seeds 0-2 was 26-41% at 5e-3, 55-61% at 7e-3 and 66-70% at 1e-2
    (``benchmarks/defend_seeds.py``); but on full MNIST (the fast-mnist recipe, seed 0) 1e-2
    overfitted catastrophically at the peak, where 7e-3 did not (the standard cascade on seeds
    0-2: 79.2%, 77.8%, 55.0% at 7e-3 against 77.1%, 81.5%, 69.3% at 5e-3, which the recipe keeps).
    1e-3 gave half of 5e-3's robustness.
    """
    if lr is not None:
        return lr
    return FAST_ADAM_LR if METHODS.canonical(method) == "fgsm" and optimizer == "adam" else DEFAULT_LR


def default_lr_schedule(method: str, schedule: str | None) -> str:
    """``schedule`` when given; else the method's published one (fgsm: cyclic, Wong et al. 2020)."""
    if schedule is not None:
        return schedule
    return "cyclic" if METHODS.canonical(method) == "fgsm" else "constant"


def method_options(method: str, settings: MethodSettings) -> dict[str, Any]:
    """The keyword options ``make_method(method, ...)`` takes, from ``settings``."""
    key = METHODS.canonical(method)
    if key == "noise":
        return {"sigma": settings.sigma}
    if not METHODS.get(key).adversarial:
        return {}
    if settings.eps is None:
        raise ConfigError(f"--method {key} is adversarial: give --eps (e.g. --eps 0.3 --norm linf)")
    options: dict[str, Any] = {"eps": settings.eps, "norm": settings.norm, "step_size": settings.step_size,
                               "eps_warmup": settings.eps_warmup}
    if key == "fgsm":
        return options | {"random_start": settings.random_start, "guard": settings.guard,
                          "noise": settings.noise, "grad_align": settings.grad_align}
    options["steps"] = settings.steps
    if key == "trades":
        return options | {"beta": settings.beta}
    options["random_start"] = settings.random_start
    if key == "semi-supervised":
        options |= {"adversarial_lr_scale": settings.adversarial_lr_scale, "robust_loss": settings.robust_loss,
                    "labelled": settings.labelled}
        if settings.robust_loss == "trades":
            options["beta"] = settings.beta
    return options
