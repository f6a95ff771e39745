"""Adaptive attack on a guarded classifier: change the label *and* stay under the guard's threshold.

An OOD detector alone is fooled by high-confidence adversarial examples (Carlini & Wagner 2017,
"Adversarial examples are not easily detected"; Athalye et al. 2018). ``GuardAwarePGD`` is PGD
on a two-part objective: per sample and step, the direction is the sum of

- the unit (L2) gradient of the attack loss (cross-entropy or margin) while the label has not
  changed yet, and with weight ``0.25`` afterwards (to stay across the boundary), and
- once the label has changed, ``score_weight`` times the unit gradient of *minus* the guard's
  score while the score is above ``threshold - margin`` (differentiable scores only; descending
  the score before the label changes would pull a confidence-based score back to the true class),

mapped to the threshold's norm's steepest direction and projected into the ball (the attack
kernel, ``hardened.attacks.kernel``, with this as its direction hook). Each sample
keeps its best iterate: adversarial and accepted with the lowest score first, then adversarial
with the lowest score. For a non-differentiable score (``wgan-inverter``) only this score-aware
selection of iterates applies (no gradient through the score).

``attack_guard`` reports the guard's detection rate (share of successful adversarial examples it
refuses) under plain PGD and under this adaptive attack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from hardened._util.seeding import make_generator
from hardened._util.validate import check_flag, check_real, check_seed
from hardened.attacks.base import Attack, Oracle
from hardened.attacks.kernel import BestIterate, StepView, attack_objective, iterate, start_point
from hardened.attacks.losses import check_loss, is_success
from hardened.attacks.options import check_iterations, check_threat
from hardened.attacks.pgd import PGD
from hardened.errors import ConfigError
from hardened.guard.guarded import GuardedClassifier, _check_threshold
from hardened.threat import check_norm, normalize_direction

__all__ = ["GuardAwarePGD", "AttackOnGuard", "GuardAttackReport", "attack_guard"]


def _unit(grad: Tensor) -> Tensor:
    length = grad.flatten(1).norm(dim=1).clamp(min=1e-12)
    return grad / length.view(-1, *([1] * (grad.dim() - 1)))


class GuardAwarePGD(Attack):
    """PGD against classifier + guard (see the module docstring).

    Args:
        guard: the guarded classifier (its score and threshold are attacked; call the attack
            with ``guard.model``).
        eps, norm, steps, step_size, random_start, loss, bounds, seed: as for ``PGD``.
        score_weight: weight of the score direction relative to the loss direction.
        margin: aim for ``score <= threshold - margin``.
    """

    name = "guard-pgd"

    def __init__(
        self,
        *,
        guard: GuardedClassifier,
        eps: float,
        norm: str = "linf",
        steps: int = 40,
        step_size: float | None = None,
        random_start: bool = True,
        loss: str = "ce",
        score_weight: float = 1.0,
        margin: float = 0.0,
        bounds: tuple[float, float] = (0.0, 1.0),
        seed: int | None = 0,
    ) -> None:
        if not isinstance(guard, GuardedClassifier):
            raise ConfigError(f"guard must be a GuardedClassifier, got {type(guard).__name__}")
        self._guard = guard
        self._threshold = _check_threshold(guard.threshold)
        self.threat = check_threat(norm, eps, bounds)
        self.bounds = self.threat.bounds
        self.steps, self.step_size = check_iterations(self.threat, steps, step_size)
        self.random_start = check_flag(random_start, "random_start")
        self.loss = check_loss(loss)
        self.score_weight = check_real(score_weight, "score_weight", minimum=0.0)
        self.margin = check_real(margin, "margin")
        self.seed = check_seed(seed)

    def params(self) -> dict[str, Any]:
        return super().params() | {"score": self._guard.score.name, "threshold": self._threshold}

    def _scores(self, x: Tensor, want_grad: bool) -> tuple[Tensor, Tensor | None]:
        score = self._guard.score
        if want_grad and score.differentiable:
            with torch.enable_grad():
                x_var = x.detach().requires_grad_(True)
                values = score.score_tensor(x_var)
                (grad,) = torch.autograd.grad(values.sum(), x_var)
            return values.detach(), grad.detach()
        return score.score(x).to(x.device), None

    def _perturb(self, oracle: Oracle, x: Tensor, y: Tensor, targets: Tensor | None) -> Tensor:
        threat = self.threat
        if threat is None or threat.eps == 0.0:
            return x
        targeted = targets is not None
        goal = targets if targets is not None else y
        generator = make_generator(self.seed, x.device)
        best = BestIterate(x)  # rank: 0 none, 1 adversarial, 2 adversarial and accepted
        limit = self._threshold - self.margin

        def keep(candidate: Tensor, success: Tensor, scores: Tensor) -> None:
            accepted = torch.isfinite(scores) & (scores <= self._threshold)
            finite = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, float("inf")))
            best.update(candidate, success.float() * (1.0 + accepted.float()), -finite)

        def direction(view: StepView) -> Tensor:
            success = is_success(view.logits, y, targets)
            scores, score_grad = self._scores(view.x, want_grad=True)
            keep(view.x, success, scores)
            loss_weight = torch.where(success, 0.25, 1.0).view(-1, 1, 1, 1)
            combined = loss_weight * _unit(view.grad)
            if score_grad is not None:
                above = ((scores > limit) & success).float().view(-1, 1, 1, 1)
                combined = combined - self.score_weight * above * _unit(score_grad)
            return normalize_direction(combined, threat.norm)

        x_adv = iterate(
            oracle, x, start_point(threat, x, self.random_start, generator), threat=threat,
            steps=self.steps, step_size=self.step_size,
            objective=attack_objective(self.loss, goal, targeted), direction=direction,
        )
        final_logits = oracle.logits(x_adv)
        final_scores, _ = self._scores(x_adv, want_grad=False)
        keep(x_adv, is_success(final_logits, y, targets), final_scores)
        return torch.where((best.rank > 0).view(-1, 1, 1, 1), best.x, x_adv)


@dataclass(frozen=True)
class AttackOnGuard:
    """One attack's effect on the guarded classifier.

    Attributes:
        attack: name; success_rate: share of inputs whose label changed (bare classifier);
        detection_rate: share of those adversarial examples the guard refuses;
        evasion_rate: share of all inputs that are adversarial *and* accepted (the guarded
        classifier's real failure rate under this attack).
    """

    attack: str
    success_rate: float
    detection_rate: float
    evasion_rate: float
    mean_score: float


@dataclass(frozen=True)
class GuardAttackReport:
    """Plain PGD against the adaptive attack on the same inputs and threat model."""

    n: int
    eps: float
    norm: str
    clean_accuracy: float
    clean_refusal_rate: float
    attacks: tuple[AttackOnGuard, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "eps": self.eps, "norm": self.norm, "clean_accuracy": self.clean_accuracy,
                "clean_refusal_rate": self.clean_refusal_rate,
                "attacks": [asdict(a) for a in self.attacks]}


def _measure(guard: GuardedClassifier, name: str, x_adv: Tensor, success: Tensor) -> AttackOnGuard:
    result = guard.predict_batch(x_adv)
    refused = ~result.accepted.to(success.device)
    hits = int(success.sum())
    detection = float((refused & success).sum()) / hits if hits else float("nan")
    finite = result.scores[torch.isfinite(result.scores)]
    return AttackOnGuard(
        attack=name,
        success_rate=float(success.float().mean()),
        detection_rate=detection,
        evasion_rate=float((success & ~refused).float().mean()),
        mean_score=float(finite.mean()) if finite.numel() else float("nan"),
    )


def attack_guard(
    guard: GuardedClassifier,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    steps: int = 40,
    score_weight: float = 1.0,
    seed: int = 0,
    queries: int | None = None,
) -> GuardAttackReport:
    """Detection rate of ``guard`` under plain PGD and under ``GuardAwarePGD`` (same budget).

    ``queries`` (for a classifier without gradients, an outputs-only one): Square with that
    many queries per image takes PGD's place, and the gradient-based adaptive attack is left out.
    """
    clean = guard.predict_batch(x)
    if queries is not None:
        from hardened.attacks.square import Square

        square = Square(eps=eps, norm=norm, queries=queries, seed=seed)(guard.model, x, y)
        measured: tuple[AttackOnGuard, ...] = (_measure(guard, "square", square.x_adv, square.success),)
    else:
        plain = PGD(eps=eps, norm=norm, steps=steps, seed=seed, early_stop=False)(guard.model, x, y)
        adaptive = GuardAwarePGD(guard=guard, eps=eps, norm=norm, steps=steps,
                                 score_weight=score_weight, seed=seed)(guard.model, x, y)
        measured = (_measure(guard, "pgd", plain.x_adv, plain.success),
                    _measure(guard, "guard-pgd", adaptive.x_adv, adaptive.success))
    return GuardAttackReport(
        n=int(x.shape[0]),
        eps=float(eps),
        norm=check_norm(norm),
        clean_accuracy=float((clean.predictions.cpu() == y.cpu()).float().mean()),
        clean_refusal_rate=clean.refusal_rate,
        attacks=measured,
    )
