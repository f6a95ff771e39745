"""Iterative gradient attacks written once: PGD, BIM/I-FGSM, MI-FGSM (and FGSM as one step).

All run the attack kernel (``hardened.attacks.kernel.iterate``) with small switches: random
start, step-size schedule, momentum (a direction hook), loss, per-sample early stopping (a stop
hook), and restarts that keep each sample's best result (``BestIterate``).

References: Madry et al. 2018 (PGD); Kurakin et al. 2017 (BIM); Dong et al. 2018 (MI-FGSM).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from hardened._util.seeding import make_generator
from hardened._util.validate import check_flag, check_int, check_real, check_seed
from hardened.attacks.base import ATTACKS, Attack, Oracle
from hardened.attacks.kernel import (
    SCHEDULES,
    BestIterate,
    Direction,
    Momentum,
    attack_objective,
    check_schedule,
    iterate,
    start_point,
    steepest,
    step_schedule,
    step_size_at,
    success_stop,
)
from hardened.attacks.losses import attack_loss, check_loss, is_success
from hardened.attacks.options import check_iterations, check_threat
from hardened.errors import ConfigError

__all__ = ["PGD", "BIM", "MIFGSM", "SCHEDULES", "step_size_at"]


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
    default_step_factor: ClassVar[float] = 2.5  # step_size=None means factor * eps / steps

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
        self.threat = check_threat(norm, eps, bounds)
        self.bounds = self.threat.bounds
        self.steps, self.step_size = check_iterations(
            self.threat, steps, step_size, default_factor=self.default_step_factor
        )
        self.restarts = check_int(restarts, "restarts", minimum=1)
        self.momentum = check_real(momentum, "momentum", minimum=0.0)
        if not (isinstance(random_start, bool) or random_start in ("uniform", "radial")):
            raise ConfigError(
                f"random_start must be True, False, 'uniform' or 'radial', got {random_start!r}"
            )
        self.random_start = random_start
        self.loss = check_loss(loss)
        self.schedule = check_schedule(schedule)
        self.early_stop = check_flag(early_stop, "early_stop")
        self.seed = check_seed(seed)

    def _first_gradient_at_clean(self) -> bool:
        return not self.random_start and self.threat is not None and self.threat.eps > 0.0

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        if self.threat is None or self.threat.eps == 0.0:
            return x
        generator = make_generator(self.seed, x.device)
        goal = targets if targets is not None else y
        targeted = targets is not None
        if self.restarts == 1:
            return self._run(oracle, x, goal, y, targets, generator)
        best = BestIterate(x)
        for _ in range(self.restarts):
            todo = (best.rank == 0).nonzero().squeeze(1) if self.early_stop else None
            if todo is not None and todo.numel() == 0:
                break
            index = todo if todo is not None else torch.arange(x.shape[0], device=x.device)
            sub_targets = None if targets is None else targets[index]
            run = self._run(oracle, x[index], goal[index], y[index], sub_targets, generator)
            logits = oracle.logits(run)
            loss = attack_loss(self.loss, logits, goal[index], targeted)
            best.update(run, is_success(logits, y[index], sub_targets), loss, index)
        return best.x

    def _direction(self, x: Tensor) -> Direction:
        """The step direction hook of one run: momentum (MI-FGSM) or the steepest ascent."""
        assert self.threat is not None
        norm = self.threat.norm
        return Momentum(x, self.momentum, norm) if self.momentum > 0 else steepest(norm)

    def _run(
        self,
        oracle: Oracle,
        x: Tensor,
        goal: Tensor,
        labels: Tensor,
        targets: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """One run of the kernel from a (random) start; returns the final iterate per sample."""
        assert self.threat is not None
        threat = self.threat
        return iterate(
            oracle, x, start_point(threat, x, self.random_start, generator),
            threat=threat,
            steps=self.steps,
            step_size=step_schedule(self.step_size, self.steps, self.schedule),
            objective=attack_objective(self.loss, goal, targets is not None),
            direction=self._direction(x),
            stop=success_stop(labels, targets) if self.early_stop else None,
        )


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
    default_step_factor = 1.0

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
        super().__init__(
            eps=eps,
            steps=steps,
            momentum=momentum,
            step_size=step_size,
            random_start=random_start,
            **kwargs,
        )
