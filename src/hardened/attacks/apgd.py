"""Auto-PGD (APGD): PGD with a budget-aware step size, momentum and restarts from the best point.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (ICML), Algorithm 1. From a (random) start ``x0`` with step ``eta = 2 eps``:

    z     = P(x_k + eta * dir(grad f(x_k)))
    x_k+1 = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_k-1))      (alpha = 1 at the first step)

where ``P`` projects onto the ball and the box, and ``dir`` is ``sign`` (Linf) or the L2-unit
gradient. At the checkpoints ``w_j = ceil(p_j * steps)``, ``p_0 = 0``, ``p_1 = 0.22``,
``p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06)``, a sample's step is halved and its iterate moved
back to its best point so far when either (1) its loss increased in fewer than ``rho`` of the
steps since the last checkpoint, or (2) its step was not halved at the last checkpoint and its
best loss has not improved since. Each sample keeps its best point (highest loss) and the
adversarial points it meets; restarts keep each sample's best (success first, then loss).

With ``smoothing > 0`` each gradient is taken at one Gaussian draw ``clip(x + smoothing * n)``
instead of at ``x`` (the loss, the checkpoints and success stay at ``x``): the smoothed-gradient
member of the cascade presets, for models whose own gradient is zero on flat, thresholded
regions (an Linf-trained MNIST model at L2).

APGD-T (``APGDT``) runs the targeted DLR loss towards each of the ``n_target_classes`` classes
ranked highest by the clean logits (9 in the paper's AutoAttack), on the points still robust.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from hardened._util.seeding import make_generator
from hardened._util.validate import check_flag, check_int, check_real, check_seed
from hardened.attacks.base import ATTACKS, Attack, Oracle
from hardened.attacks.losses import attack_loss, check_loss, is_success
from hardened.attacks.options import check_threat
from hardened.errors import ConfigError
from hardened.threat import normalize_direction

__all__ = ["APGD", "APGDDLR", "APGDT", "checkpoints"]

APGD_LOSSES = ("ce", "dlr")
APGD_NORMS = ("linf", "l2")


def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)`` (j >= 1, ``p_j <= 1``) after which the step
    size is checked, without repeats; computed in exact fractions so no rounding moves one.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06)``. For 100 steps:
    22, 41, 57, 70, 80, 87, 93, 99 (the reference implementation's, which counts in whole steps).
    """
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    return sorted({math.ceil(q * steps) for q in p[1:] if q <= 1})


@ATTACKS.register("apgd-ce", aliases=("apgd",))
class APGD(Attack):
    """APGD (Croce & Hein 2020) with the cross-entropy or the DLR loss, Linf or L2.

    Args:
        eps: radius of the threat model's ball.
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: iterations per restart (``steps + 1`` gradients: one at the start point).
        restarts: independent runs; each sample keeps its best (success first, then loss).
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (difference of logits ratio).
        rho: the checkpoint's share of loss increases below which the step is halved (0.75).
        alpha: the momentum parameter: weight of the new step, ``1 - alpha`` on the previous one.
        random_start: start uniformly in the ball (``True``) or at the image.
        early_stop: stop updating a sample once it is adversarial (the result is unchanged for
            the attack's goal; it saves gradients).
        smoothing: standard deviation (pixel units) of the Gaussian noise the gradient is taken
            under (one draw per step; 0: the plain gradient). A stochastic gradient of the
            Gaussian-smoothed loss ``E_n f(x + smoothing * n)`` (the EOT estimate of Athalye et
            al. 2018 over noise, as SmoothAdv, Salman et al. 2019, attacks smoothed
            classifiers): it passes the flat, thresholded regions where a model's own gradient
            is zero (on an Linf-trained MNIST lenet at L2 eps 2, 0.15 breaks 33 of the 53
            points APGD-CE and APGD-T leave, Square with 5,000 queries 16). The loss, the
            step-size checks and success are taken at the un-noised point, one forward more.
        bounds: the pixel box.
        seed: seed of the random starts; the same seed gives the same result.
    """

    name = "apgd-ce"
    norms = APGD_NORMS
    targeted = True
    seeded = True

    def __init__(
        self,
        *,
        eps: float,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        rho: float = 0.75,
        alpha: float = 0.75,
        random_start: bool = True,
        early_stop: bool = True,
        smoothing: float = 0.0,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        self.threat = check_threat(norm, eps, bounds, norms=APGD_NORMS, attack="APGD (use PGD for l1)")
        self.smoothing = check_real(smoothing, "smoothing", minimum=0.0)
        self.bounds = self.threat.bounds
        self.steps = check_int(steps, "steps", minimum=1)
        self.restarts = check_int(restarts, "restarts", minimum=1)
        self.loss = check_loss(loss, APGD_LOSSES)
        self.rho = check_real(rho, "rho", minimum=0.0, maximum=1.0)
        self.alpha = check_real(alpha, "alpha", minimum=0.0, maximum=1.0, open_below=True)
        self.random_start = check_flag(random_start, "random_start")
        self.early_stop = check_flag(early_stop, "early_stop")
        self.seed = check_seed(seed)

    def _first_gradient_at_clean(self) -> bool:
        return not self.random_start and self.threat is not None and self.threat.eps > 0.0

    def _plan(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> list[tuple[Tensor | None, bool]]:
        """The runs to make: ``(loss targets or None, success means reaching them)``."""
        return [(targets, targets is not None)]

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        assert self.threat is not None
        if self.threat.eps == 0.0:
            return x
        generator = make_generator(self.seed, x.device)
        n = x.shape[0]
        best = x.clone()
        best_loss = torch.full((n,), float("-inf"), device=x.device, dtype=torch.float64)
        best_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        for goal, reach in self._plan(oracle, x, y, targets):
            for _ in range(self.restarts):
                index = (~best_success).nonzero().squeeze(1) if self.early_stop else torch.arange(n, device=x.device)
                if index.numel() == 0:
                    return best
                run, success, loss = self._run(
                    oracle, x[index], y[index], None if goal is None else goal[index], reach, generator
                )
                better = (success & ~best_success[index]) | (
                    (success == best_success[index]) & (loss > best_loss[index])
                )
                chosen = index[better]
                best[chosen] = run[better]
                best_loss[chosen] = loss[better]
                best_success[chosen] = success[better]
        return best

    def _evaluate(
        self, oracle: Oracle, x: Tensor, y: Tensor, goal: Tensor | None, reach: bool, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, gradient, success)`` at ``x``; with ``smoothing`` the gradient is taken at one
        Gaussian draw ``clip(x + smoothing * n)``, the loss and the success at ``x`` itself."""
        at = x
        if self.smoothing > 0.0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            at = (x + self.smoothing * noise).clamp(*self.bounds)
        true_labels = None if goal is None else y
        logits, loss, grad = oracle.loss_and_grad(
            at, y if goal is None else goal, loss=self.loss, targeted=goal is not None, true_labels=true_labels
        )
        if self.smoothing > 0.0:
            logits = oracle.logits(x)
            loss = attack_loss(self.loss, logits, y if goal is None else goal, goal is not None, true_labels=true_labels)
        return loss.double(), grad, is_success(logits, y, goal if reach else None)

    def _run(
        self,
        oracle: Oracle,
        x: Tensor,
        y: Tensor,
        goal: Tensor | None,
        reach: bool,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run; returns ``(points, success, loss)`` per sample.

        A sample's point is the first adversarial iterate it reaches (with early stopping; the
        last one without), else its highest-loss iterate. The per-sample state lives in one dict
        of tensors over the samples still attacked, compacted when early stopping retires some.
        """
        assert self.threat is not None
        threat = self.threat
        n = x.shape[0]
        out = x.clone()
        out_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        out_loss = torch.full((n,), float("-inf"), device=x.device, dtype=torch.float64)
        start = threat.random_start(x, generator) if self.random_start else x.clone()
        loss, grad, success = self._evaluate(oracle, start, y, goal, reach, generator)
        s: dict[str, Any] = {
            "rows": torch.arange(n, device=x.device), "x": x, "y": y, "goal": goal,
            "adv": start, "prev": start.clone(), "grad": grad, "loss": loss,
            "best": start.clone(), "best_grad": grad.clone(), "best_loss": loss.clone(),
            "eta": torch.full((n,), 2.0 * threat.eps, device=x.device, dtype=x.dtype),
            "ups": torch.zeros(n, device=x.device), "loss_at_check": loss.clone(),
            "halved_at_check": torch.ones(n, dtype=torch.bool, device=x.device),
        }
        s = self._record(s, success, out, out_success, out_loss)
        marks = set(checkpoints(self.steps))
        last_mark = 0
        for step in range(self.steps):
            if s["rows"].numel() == 0:
                return out, out_success, out_loss
            a = self.alpha if step > 0 else 1.0
            view = (-1,) + (1,) * (x.dim() - 1)
            z = threat.project(s["adv"] + s["eta"].view(view) * normalize_direction(s["grad"], threat.norm), s["x"])
            moved = threat.project(s["adv"] + a * (z - s["adv"]) + (1 - a) * (s["adv"] - s["prev"]), s["x"])
            s["prev"], s["adv"] = s["adv"], moved
            loss, grad, success = self._evaluate(oracle, moved, s["y"], s["goal"], reach, generator)
            s["ups"] += (loss > s["loss"]).float()
            s["loss"], s["grad"] = loss, grad
            improved = loss > s["best_loss"]
            s["best"][improved] = moved[improved]
            s["best_grad"][improved] = grad[improved]
            s["best_loss"] = torch.where(improved, loss, s["best_loss"])
            s = self._record(s, success, out, out_success, out_loss)
            if step + 1 in marks:
                few_ups = s["ups"] < self.rho * (step + 1 - last_mark)
                stalled = ~s["halved_at_check"] & (s["best_loss"] <= s["loss_at_check"])
                halve = few_ups | stalled
                s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
                s["adv"][halve] = s["best"][halve]
                s["grad"][halve] = s["best_grad"][halve]
                s["loss"] = torch.where(halve, s["best_loss"], s["loss"])  # the iterate is x_max now
                s["halved_at_check"], s["loss_at_check"] = halve, s["best_loss"].clone()
                s["ups"] = torch.zeros_like(s["ups"])
                last_mark = step + 1
        failed = ~out_success[s["rows"]]
        rows = s["rows"][failed]
        out[rows] = s["best"][failed]
        out_loss[rows] = s["best_loss"][failed]
        return out, out_success, out_loss

    def _record(
        self, s: dict[str, Any], success: Tensor, out: Tensor, out_success: Tensor, out_loss: Tensor
    ) -> dict[str, Any]:
        """Write the adversarial iterates into ``out``; with early stopping, retire them."""
        if not bool(success.any()):
            return s
        rows = s["rows"][success]
        out[rows] = s["adv"][success]
        out_success[rows] = True
        out_loss[rows] = s["loss"][success]
        if not self.early_stop:
            return s
        keep = ~success
        return {k: (None if v is None else v[keep]) for k, v in s.items()}


@ATTACKS.register("apgd-dlr")
class APGDDLR(APGD):
    """APGD on the DLR loss (``apgd-dlr``)."""

    name = "apgd-dlr"

    def __init__(self, *, eps: float, loss: str = "dlr", **kwargs: Any) -> None:
        super().__init__(eps=eps, loss=loss, **kwargs)


@ATTACKS.register("apgd-t")
class APGDT(APGD):
    """APGD-T: APGD on the targeted DLR loss towards each of the top ``n_target_classes``.

    Untargeted in its goal: a sample is broken once it is misclassified, whichever target got
    it there. Targets are the classes with the highest clean logits other than the true label
    (the 2nd, 3rd, ... most likely for a correctly classified image), tried in that order on
    the samples still robust, ``restarts`` runs each. Given explicit ``targets=`` it runs the
    targeted DLR loss towards them instead, and success means reaching them.
    """

    name = "apgd-t"

    def __init__(self, *, eps: float, n_target_classes: int = 9, loss: str = "dlr", **kwargs: Any) -> None:
        if loss != "dlr":
            raise ConfigError(f"APGD-T runs the targeted DLR loss only, got loss={loss!r}; use apgd-ce")
        super().__init__(eps=eps, loss=loss, **kwargs)
        self.n_target_classes = check_int(n_target_classes, "n_target_classes", minimum=1)

    def _plan(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> list[tuple[Tensor | None, bool]]:
        if targets is not None:
            return [(targets, True)]
        logits = oracle.logits(x)
        ranked = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)
        count = min(self.n_target_classes, logits.shape[1] - 1)
        return [(ranked[:, r], False) for r in range(count)]
