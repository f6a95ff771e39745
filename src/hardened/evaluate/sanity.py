"""Checks that catch a falsely robust model (gradient masking), after Carlini et al. 2019
("On Evaluating Adversarial Robustness") and Athalye et al. 2018 (obfuscated gradients).

Each check compares two measurements that must be ordered in a certain way for an honest
evaluation; a violation is flagged with an explanation in plain words.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hardened._util.batching import predict_logits
from hardened._util.seeding import make_generator
from hardened.attacks import PGD, attack_in_batches
from hardened.errors import BudgetWarning
from hardened.evaluate.masking import MaskingFinding
from hardened.evaluate.sweeps import SweepResult
from hardened.threat import ThreatModel

__all__ = ["SanityCheck", "masking_check", "monotone_check", "unbounded_check", "stronger_attack_check", "noise_check", "run_sanity_checks"]


@dataclass(frozen=True)
class SanityCheck:
    """One check: its name, whether it passed, the numbers behind it and an explanation."""

    name: str
    passed: bool
    explanation: str
    numbers: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _accuracy(result_pred: Tensor, y: Tensor) -> float:
    return float((result_pred.cpu() == y.cpu()).float().mean())


def _attack_accuracy(model: nn.Module, x: Tensor, y: Tensor, attack: Any, batch_size: int) -> float:
    return _accuracy(attack_in_batches(attack, model, x, y, batch_size=batch_size).pred_adv, y)


def monotone_check(sweep: SweepResult, tolerance: float = 0.01) -> SanityCheck:
    """Robust accuracy must not increase with eps (beyond ``tolerance``, absolute)."""
    rises = [
        (sweep.eps[i], sweep.eps[i + 1], sweep.robust_accuracy[i + 1] - sweep.robust_accuracy[i])
        for i in range(len(sweep.eps) - 1)
        if sweep.robust_accuracy[i + 1] > sweep.robust_accuracy[i] + tolerance
    ]
    passed = not rises
    text = (
        f"{sweep.attack} {sweep.norm}: accuracy never rises with eps."
        if passed
        else f"{sweep.attack} {sweep.norm}: accuracy rises from eps={rises[0][0]:g} to eps={rises[0][1]:g} "
        f"(+{100 * rises[0][2]:.1f} points). A larger budget contains every smaller one, so the attack is "
        "failing to find examples it found before: a sign of masked or noisy gradients."
    )
    return SanityCheck(f"monotone in eps ({sweep.norm})", passed, text, {"rises": rises})


def unbounded_check(
    model: nn.Module, x: Tensor, y: Tensor, *, norm: str = "linf", steps: int = 50,
    threshold: float = 0.02, batch_size: int = 256, seed: int = 0,
) -> SanityCheck:
    """An attack with an unbounded budget (the whole pixel box) must reach near 0% accuracy."""
    dim = x[0].numel()
    eps = 1.0 if norm == "linf" else (math.sqrt(dim) if norm == "l2" else float(dim))
    attack = PGD(eps=eps, norm=norm, steps=steps, step_size=eps / 4 if norm == "linf" else eps / 10, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)  # a budget allowing any image is the point here
        accuracy = _attack_accuracy(model, x, y, attack, batch_size)
    passed = accuracy <= threshold
    text = (
        f"with an unbounded {norm} budget PGD-{steps} drives accuracy to {100 * accuracy:.1f}%."
        if passed
        else f"with an unbounded {norm} budget PGD-{steps} still leaves {100 * accuracy:.1f}% accuracy "
        f"(expected at most {100 * threshold:.0f}%). Any image can be turned into any other here, so the "
        "gradients do not point the attack anywhere useful: the reported robustness is not trustworthy."
    )
    return SanityCheck(f"unbounded attack ({norm})", passed, text, {"eps": eps, "accuracy": accuracy})


def stronger_attack_check(
    model: nn.Module, x: Tensor, y: Tensor, *, norm: str, eps: float, reported_accuracy: float,
    reported_steps: int, steps_factor: int = 5, restarts: int = 3, margin: float = 0.03,
    batch_size: int = 256, seed: int = 0,
) -> SanityCheck:
    """More steps and restarts must not be markedly stronger than the reported attack."""
    attack = PGD(eps=eps, norm=norm, steps=reported_steps * steps_factor, restarts=restarts, seed=seed + 1)
    accuracy = _attack_accuracy(model, x, y, attack, batch_size)
    drop = reported_accuracy - accuracy
    passed = drop <= margin
    text = (
        f"PGD with {steps_factor}x the steps and {restarts} restarts at {norm} eps={eps:g} lowers accuracy "
        f"by {100 * drop:.1f} points (≤ {100 * margin:.0f}): the reported attack has converged."
        if passed
        else f"PGD with {steps_factor}x the steps and {restarts} restarts at {norm} eps={eps:g} lowers accuracy "
        f"from {100 * reported_accuracy:.1f}% to {100 * accuracy:.1f}%: the reported attack had not converged, "
        "so the robust accuracy in this report is an overestimate. Use the stronger budget."
    )
    return SanityCheck(f"stronger attack ({norm})", passed, text, {
        "eps": eps, "reported_accuracy": reported_accuracy, "stronger_accuracy": accuracy,
        "steps": reported_steps * steps_factor, "restarts": restarts,
    })


def noise_check(
    model: nn.Module, x: Tensor, y: Tensor, *, norm: str, eps: float, gradient_accuracy: float,
    samples: int = 20, margin: float = 0.02, batch_size: int = 256, seed: int = 0,
) -> SanityCheck:
    """Random points of the same norm must not be stronger than the gradient attack.

    A sample counts as broken by noise when any of ``samples`` uniform draws from the ball
    misclassifies it.
    """
    threat = ThreatModel(norm, eps)
    generator = make_generator(seed, x.device)
    survived = torch.ones(len(x), dtype=torch.bool)
    for _ in range(samples):
        noisy = threat.random_start(x, generator)
        pred = predict_logits(model, noisy, batch_size).argmax(1).cpu()
        survived &= pred == y.cpu()
    accuracy = float(survived.float().mean())
    passed = accuracy + margin >= gradient_accuracy
    text = (
        f"the best of {samples} random {norm} perturbations of size {eps:g} leaves {100 * accuracy:.1f}% "
        f"accuracy, above the gradient attack's {100 * gradient_accuracy:.1f}%."
        if passed
        else f"random {norm} noise of size {eps:g} ({samples} draws) leaves {100 * accuracy:.1f}% accuracy, "
        f"lower than the gradient attack's {100 * gradient_accuracy:.1f}%. Random search beating the "
        "gradient means the gradients are misleading: a sign of gradient masking."
    )
    return SanityCheck(f"random noise ({norm})", passed, text, {
        "eps": eps, "noise_accuracy": accuracy, "gradient_accuracy": gradient_accuracy, "samples": samples,
    })


def masking_check(finding: MaskingFinding, where: Sequence[str] = ()) -> SanityCheck:
    """A gradient-masking check of ``hardened.evaluate.masking`` (run by the cascade) as a sanity
    check: it passes when it did not fire; ``where`` names the settings it fired at."""
    at = f" (fired at {', '.join(where)})" if finding.fired and where else ""
    answer = f" Answered with: {finding.answer}." if finding.fired and finding.answer else ""
    return SanityCheck(f"masking: {finding.name}", not finding.fired, f"{finding.meaning}{at}{answer}",
                       {**finding.numbers, "fired_at": list(where)})


def run_sanity_checks(
    model: nn.Module, x: Tensor, y: Tensor, sweep: SweepResult, *, eps: float, steps: int,
    batch_size: int = 256, seed: int = 0, strong_steps_factor: int = 5, strong_restarts: int = 3,
    unbounded_steps: int = 50,
) -> list[SanityCheck]:
    """All four checks for one PGD sweep (its norm, at ``eps``, which must be in the sweep)."""
    reported = dict(zip(sweep.eps, sweep.robust_accuracy, strict=True))[eps]
    return [
        monotone_check(sweep),
        unbounded_check(model, x, y, norm=sweep.norm, steps=unbounded_steps, batch_size=batch_size, seed=seed),
        stronger_attack_check(
            model, x, y, norm=sweep.norm, eps=eps, reported_accuracy=reported, reported_steps=steps,
            steps_factor=strong_steps_factor, restarts=strong_restarts, batch_size=batch_size, seed=seed,
        ),
        noise_check(model, x, y, norm=sweep.norm, eps=eps, gradient_accuracy=reported, batch_size=batch_size, seed=seed),
    ]
