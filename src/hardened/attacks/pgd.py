"""Iterative gradient attacks written once: PGD, BIM/I-FGSM, MI-FGSM (and FGSM as one step).

One loop (``_iterate``) with small switches: random start, step-size schedule, momentum, loss,
per-sample early stopping, and restarts that keep each sample's best result.

References: Madry et al. 2018 (PGD); Kurakin et al. 2017 (BIM); Dong et al. 2018 (MI-FGSM).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from hardened._util.seeding import make_generator
from hardened.attacks.base import ATTACKS, Attack, Oracle
from hardened.attacks.losses import attack_loss, check_loss, is_success
from hardened.errors import ConfigError
from hardened.threat import ThreatModel, normalize_direction

__all__ = ["PGD", "BIM", "MIFGSM", "SCHEDULES"]

SCHEDULES = ("constant", "cosine", "step")


def step_size_at(base: float, step: int, steps: int, schedule: str) -> float:
    """Step size of iteration ``step`` (0-based) out of ``steps`` under ``schedule``.

    constant: ``base``; cosine: ``base * (1 + cos(pi * step / steps)) / 2``;
    step: ``base`` halved at 50% and again at 75% of the iterations.
    """
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * step / steps))
    return base * (0.5 ** (int(step >= steps // 2) + int(step >= (3 * steps) // 4)))


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018) in the Linf, L2 or L1 ball.

    Args:
        eps: radius of the threat model's ball.
        norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
        steps: iterations per restart.
        step_size: step length in the norm; default ``2.5 * eps / steps``.
        random_start: ``True`` (or ``"uniform"``) starts from a point uniform in the ball;
            ``"radial"`` draws the start's radius uniformly from ``[0, eps]`` instead (nearer
            the clean image; stronger on L2 in our benchmark); ``False`` starts at the image.
        restarts: independent runs; each sample keeps its best (success first, then loss).
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (Carlini-Wagner logit margin).
        schedule: step-size schedule, ``"constant"``, ``"cosine"`` or ``"step"``.
        momentum: decay factor of the accumulated, L1-normalised gradient (MI-FGSM); 0 = off.
        early_stop: stop updating a sample as soon as it is adversarial (fast, minimal effort);
            ``False`` runs every step for maximum confidence.
        bounds: the pixel box.
        seed: seed of the random start; the same seed gives the same result.
    """

    name = "pgd"
    norms = ("linf", "l2", "l1")
    targeted = True
    seeded = True

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        steps: int = 40,
        step_size: float | None = None,
        random_start: bool | str = True,
        restarts: int = 1,
        loss: str = "ce",
        schedule: str = "constant",
        momentum: float = 0.0,
        early_stop: bool = True,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        self.threat = ThreatModel(norm, eps, bounds)
        self.bounds = self.threat.bounds
        if int(steps) < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        if int(restarts) < 1:
            raise ConfigError(f"restarts must be >= 1, got {restarts}")
        if schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
        if not (0.0 <= float(momentum)):
            raise ConfigError(f"momentum must be >= 0, got {momentum}")
        self.steps = int(steps)
        default_step = 2.5 * self.threat.eps / self.steps
        self.step_size = float(default_step if step_size is None else step_size)
        if self.step_size < 0 or not math.isfinite(self.step_size):
            raise ConfigError(f"step_size must be a finite number >= 0, got {step_size}")
        if random_start not in (True, False, "uniform", "radial"):
            raise ConfigError(
                f"random_start must be True, False, 'uniform' or 'radial', got {random_start!r}"
            )
        self.random_start = random_start
        self.restarts = int(restarts)
        self.loss = check_loss(loss)
        self.schedule = schedule
        self.momentum = float(momentum)
        self.early_stop = bool(early_stop)
        self.seed = seed

    def _first_gradient_at_clean(self) -> bool:
        return not self.random_start and self.threat is not None and self.threat.eps > 0.0

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        if self.threat is None or self.threat.eps == 0.0:
            return x
        generator = make_generator(self.seed, x.device)
        goal = targets if targets is not None else y
        targeted = targets is not None
        if self.restarts == 1:
            return self._iterate(oracle, x, goal, y, targets, generator)
        best = x.clone()
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=torch.float64)
        best_success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            todo = (~best_success).nonzero().squeeze(1) if self.early_stop else None
            if todo is not None and todo.numel() == 0:
                break
            index = todo if todo is not None else torch.arange(x.shape[0], device=x.device)
            sub_targets = None if targets is None else targets[index]
            run = self._iterate(oracle, x[index], goal[index], y[index], sub_targets, generator)
            logits = oracle.logits(run)
            loss = attack_loss(self.loss, logits, goal[index], targeted)
            success = is_success(logits, y[index], None if targets is None else targets[index])
            better = (success & ~best_success[index]) | (
                (success == best_success[index]) & (loss > best_loss[index])
            )
            chosen = index[better]
            best[chosen] = run[better]
            best_loss[chosen] = loss[better].double()
            best_success[chosen] = success[better]
        return best

    def _iterate(
        self,
        oracle: Oracle,
        x: Tensor,
        goal: Tensor,
        labels: Tensor,
        targets: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """One run of the loop from a (random) start; returns the final iterate per sample.

        While every sample is still attacked (always, without early stopping) the loop works on
        the whole batch: no index copies, and the step is added in place. Once early stopping
        retires samples it gathers and scatters the ones still ``active``. Both paths compute
        the same values.
        """
        assert self.threat is not None
        threat = self.threat
        targeted = targets is not None
        if self.random_start:
            x_adv = threat.random_start(x, generator, radial=self.random_start == "radial")
        else:
            x_adv = x.clone()
        active: Tensor | None = None  # indices of the samples still attacked; None: all of them
        accumulated = torch.zeros_like(x) if self.momentum > 0 else None
        for step in range(self.steps):
            if active is None:
                logits, _, grad = oracle.loss_and_grad(
                    x_adv, goal, loss=self.loss, targeted=targeted
                )
            else:
                logits, _, grad = oracle.loss_and_grad(
                    x_adv[active], goal[active], loss=self.loss, targeted=targeted
                )
            if self.early_stop:
                done = is_success(
                    logits,
                    labels if active is None else labels[active],
                    None if targets is None else targets if active is None else targets[active],
                )
                if bool(done.any()):
                    keep = ~done
                    active = keep.nonzero().squeeze(1) if active is None else active[keep]
                    grad = grad[keep]
                    if active.numel() == 0:
                        break
            if accumulated is not None:
                l1 = grad.abs().flatten(1).sum(dim=1).clamp(min=1e-12)
                if active is None:
                    grad = self.momentum * accumulated + grad / l1.view(-1, 1, 1, 1)
                    accumulated = grad
                else:
                    grad = self.momentum * accumulated[active] + grad / l1.view(-1, 1, 1, 1)
                    accumulated[active] = grad
            alpha = step_size_at(self.step_size, step, self.steps, self.schedule)
            step_vector = alpha * normalize_direction(grad, threat.norm)
            if active is None:
                x_adv = threat.project(x_adv.add_(step_vector), x)
            else:
                x_adv[active] = threat.project(x_adv[active] + step_vector, x[active])
        return x_adv


@ATTACKS.register("bim", aliases=("ifgsm", "i-fgsm"))
class BIM(PGD):
    """Basic iterative method / I-FGSM (Kurakin et al. 2017): PGD from the clean image."""

    name = "bim"

    def __init__(self, *, eps: float, steps: int = 10, random_start: bool = False, **kwargs: Any):
        super().__init__(eps=eps, steps=steps, random_start=random_start, **kwargs)


@ATTACKS.register("mifgsm", aliases=("mi-fgsm",))
class MIFGSM(PGD):
    """Momentum iterative FGSM (Dong et al. 2018): decay 1.0, step ``eps / steps``, no start."""

    name = "mifgsm"

    def __init__(
        self,
        *,
        eps: float,
        steps: int = 10,
        momentum: float = 1.0,
        step_size: float | None = None,
        random_start: bool = False,
        **kwargs: Any,
    ) -> None:
        step = eps / steps if step_size is None else step_size
        super().__init__(
            eps=eps,
            steps=steps,
            momentum=momentum,
            step_size=step,
            random_start=random_start,
            **kwargs,
        )
