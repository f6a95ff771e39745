"""Training settings (``TrainConfig``), a leaf module: the loop and the methods both import it,
and neither imports the other's module for it (the loop imports the methods, never the reverse).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from hardened.data.dataset import Dataset
from hardened.errors import ConfigError
from hardened.threat import check_norm

__all__ = ["TrainConfig", "FitFunction", "OPTIMIZERS", "LR_SCHEDULES"]

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine", "cyclic", "piecewise")

FitFunction = Callable[[nn.Module, Dataset, "TrainConfig"], object]
"""``fit(model, data, config)``: trains ``model`` in place with the standard method; the trainer
hands it to ``Method.prepare`` for methods that train a helper model (a pseudo-labeller)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping settings.

    Args:
        epochs, batch_size, lr, optimizer (``adam``/``sgd``), weight_decay, momentum: as usual.
        lr_schedule: ``constant``; ``cosine`` (to 0 over the run); ``cyclic`` (linear up to
            ``lr`` at the fraction ``lr_peak`` of the steps, 0.4 by default, down to 0 at the
            end; Wong et al. 2020); ``piecewise`` (``lr`` times ``lr_gamma`` for each of the
            ``lr_milestones``, fractions of the steps, passed: Madry et al. 2018, Zhang et al. 2019).
        seed: fixes shuffling, the method's randomness and the forked global RNG per step.
        checkpoint_every: also checkpoint every N steps (0: at the end of each epoch only).
        eval_n: held-out images for the per-epoch PGD accuracy (0: no evaluation); the clean
            accuracy uses all of ``test_data`` (or this many training images without it).
        eval_eps, eval_norm, eval_steps: the PGD attack of the per-epoch robust accuracy;
            ``eval_eps=None`` takes the method's threat model (no robust accuracy if it has none).
        amp: mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU); ``None``: on
            exactly when training on CUDA.
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0
    lr_schedule: str = "constant"
    lr_peak: float = 0.4
    lr_milestones: tuple[float, ...] = ()
    lr_gamma: float = 0.1
    checkpoint_every: int = 0
    eval_n: int = 500
    eval_eps: float | None = None
    eval_norm: str = "linf"
    eval_steps: int = 10
    amp: bool | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"unknown lr schedule {self.lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0.0 < self.lr_peak < 1.0:
            raise ConfigError(f"lr_peak must be a fraction of the training in (0, 1), got {self.lr_peak}")
        milestones = tuple(float(m) for m in self.lr_milestones)
        if any(not 0.0 < m < 1.0 for m in milestones) or list(milestones) != sorted(set(milestones)):
            raise ConfigError(
                f"lr_milestones must be increasing fractions of the training in (0, 1), got {self.lr_milestones}"
            )
        object.__setattr__(self, "lr_milestones", milestones)
        if not 0.0 < self.lr_gamma < 1.0:
            raise ConfigError(f"lr_gamma must be in (0, 1), got {self.lr_gamma}")
        if self.lr_schedule == "piecewise" and not milestones:
            raise ConfigError("the piecewise lr schedule needs lr_milestones, e.g. (0.5, 0.75)")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.eval_n < 0 or self.eval_steps < 1:
            raise ConfigError("eval_n must be >= 0 and eval_steps >= 1")
        if self.eval_eps is not None and not (math.isfinite(self.eval_eps) and self.eval_eps > 0):
            raise ConfigError(f"eval_eps must be > 0 (or None), got {self.eval_eps}")
        object.__setattr__(self, "eval_norm", check_norm(self.eval_norm))
