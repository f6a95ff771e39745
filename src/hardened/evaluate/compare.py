"""Attack comparison on the same model and inputs: success rate against L0/L2/Linf, success at
fixed budgets, median norms of the successes, cost; and a per-step trace of one iterative
attack (for animations).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hardened._util.batching import predict_logits
from hardened._util.progress import progress_bar
from hardened.attacks import BIM, Attack, LRPFlip, LRPGrad, LRPMean, attack_in_batches
from hardened.errors import ConfigError, InputError
from hardened.evaluate.sweeps import SuccessCurve, success_curve
from hardened.explain.attribute import lrp

__all__ = [
    "AttackRun",
    "AttackComparison",
    "TraceStep",
    "DEFAULT_BUDGETS",
    "compare_attacks",
    "default_attack_suite",
    "trace_attack",
]

COMPARED_NORMS = ("l0", "l2", "linf")
DEFAULT_BUDGETS: dict[str, list[float]] = {
    "l0": [10, 25, 50, 100],
    "l2": [1.0, 2.0, 3.0, 4.0],
    "linf": [0.05, 0.1, 0.2, 0.3],
}


@dataclass(frozen=True)
class AttackRun:
    """One attack on the compared inputs: per-sample success and norms, and its cost."""

    label: str
    attack: str
    params: dict[str, Any]
    success: list[bool]
    norms: dict[str, list[float]]
    forward_count: int
    gradient_count: int
    seconds: float

    @property
    def n(self) -> int:
        return len(self.success)

    @property
    def success_rate(self) -> float:
        return sum(self.success) / self.n if self.n else 0.0

    def median_norms(self) -> dict[str, float | None]:
        """Median of each norm over the successful samples (``None`` without successes)."""
        ok = torch.tensor(self.success, dtype=torch.bool)
        out: dict[str, float | None] = {}
        for norm, values in self.norms.items():
            chosen = torch.tensor(values, dtype=torch.float64)[ok]
            out[norm] = float(chosen.median()) if chosen.numel() else None
        return out

    def summary(self) -> dict[str, Any]:
        n = max(self.n, 1)
        return {
            "label": self.label,
            "attack": self.attack,
            "params": self.params,
            "n": self.n,
            "success_rate": self.success_rate,
            "median_norms_of_successes": self.median_norms(),
            "gradient_evaluations_per_image": self.gradient_count / n,
            "forward_evaluations_per_image": self.forward_count / n,
            "seconds": self.seconds,
            "images_per_second": self.n / self.seconds if self.seconds > 0 else None,
        }


@dataclass(frozen=True)
class AttackComparison:
    """Several attacks on the same correctly classified inputs."""

    runs: list[AttackRun]
    n: int
    clean_accuracy: float
    info: dict[str, Any] = field(default_factory=dict)
    kind: str = "attack_comparison"

    def curves(self, norm: str, thresholds: Sequence[float] | None = None, points: int = 101) -> list[SuccessCurve]:
        """ASR against ``norm`` (``l0``, ``l2``, ``linf``), one curve per attack, shared grid."""
        if norm not in COMPARED_NORMS:
            raise ConfigError(f"unknown norm {norm!r}: use one of {', '.join(COMPARED_NORMS)}")
        if thresholds is None:
            top = max(
                (max((v for v, ok in zip(r.norms[norm], r.success, strict=True) if ok), default=0.0) for r in self.runs),
                default=0.0,
            )
            thresholds = torch.linspace(0, top or 1.0, points).tolist()
        return [
            success_curve(r.norms[norm], r.success, list(thresholds), attack=r.label, norm=norm)
            for r in self.runs
        ]

    def table(self, budgets: Mapping[str, Sequence[float]] | None = None) -> dict[str, dict[str, dict[str, float]]]:
        """``{label: {norm: {budget: ASR}}}``: success with a perturbation norm <= budget."""
        budgets = DEFAULT_BUDGETS if budgets is None else budgets
        out: dict[str, dict[str, dict[str, float]]] = {}
        for run in self.runs:
            out[run.label] = {}
            for norm, values in budgets.items():
                curve = success_curve(run.norms[norm], run.success, list(values), norm=norm)
                out[run.label][norm] = {f"{b:g}": r for b, r in zip(curve.thresholds, curve.success_rate, strict=True)}
        return out

    def to_dict(self, budgets: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "info": self.info,
            "summary": [r.summary() for r in self.runs],
            "asr_at_budget": self.table(budgets),
            "runs": [asdict(r) for r in self.runs],
        }


def compare_attacks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Mapping[str, Attack],
    *,
    correct_only: bool = True,
    batch_size: int = 100,
    progress: bool = False,
    info: dict[str, Any] | None = None,
) -> AttackComparison:
    """Run every attack on the same inputs (the correctly classified ones by default)."""
    if not attacks:
        raise ConfigError("give at least one attack to compare")
    clean = predict_logits(model, x).argmax(dim=1)
    correct = clean == y.to(clean.device)
    clean_accuracy = float(correct.float().mean()) if len(y) else 0.0
    if correct_only:
        x, y = x[correct], y[correct]
    if len(x) == 0:
        raise InputError("no inputs left to attack (none is classified correctly)")
    runs = []
    with progress_bar(len(attacks) * len(x), "comparing attacks", progress) as bar:
        for label, attack in attacks.items():
            start = time.perf_counter()
            result = attack_in_batches(attack, model, x, y, batch_size=batch_size, bar=bar)
            runs.append(
                AttackRun(
                    label=label,
                    attack=attack.name,
                    params=attack.params(),
                    success=result.success.cpu().tolist(),
                    norms={k: result.norms[k].cpu().double().tolist() for k in COMPARED_NORMS},
                    forward_count=result.forward_count,
                    gradient_count=result.gradient_count,
                    seconds=time.perf_counter() - start,
                )
            )
            bar.describe(f"{label}: ASR {runs[-1].success_rate:.3f}")
    return AttackComparison(runs=runs, n=len(x), clean_accuracy=clean_accuracy, info=dict(info or {}))


def default_attack_suite(
    *,
    eps: float = 0.3,
    steps: int = 30,
    step_size: float = 0.01,
    max_pixels: int = 100,
    pixels_per_step: int = 4,
    pixel_fraction: float = 0.1,
    composite: str = "epsilon-gamma-box",
    seed: int = 0,
    fill: str | float = "image",
) -> dict[str, Attack]:
    """I-FGSM and the three guided attacks, each with LRP, gradient and random pixel choice.

    I-FGSM and LRP-grad share ``eps``, ``steps`` and ``step_size`` (Linf); both stop per sample
    at the first success, so the norm of each success is the effort it needed.
    """
    suite: dict[str, Attack] = {
        "I-FGSM": BIM(eps=eps, steps=steps, step_size=step_size, early_stop=True),
    }
    names = {"lrp": "LRP", "gradient": "saliency", "random": "random"}
    for selection, prefix in names.items():
        suite[f"{prefix}-grad"] = LRPGrad(
            eps=eps, steps=steps, step_size=step_size, pixel_fraction=pixel_fraction,
            selection=selection, composite=composite, seed=seed,
        )
    for selection, prefix in names.items():
        suite[f"{prefix}-flip"] = LRPFlip(
            max_pixels=max_pixels, pixels_per_step=pixels_per_step, selection=selection,
            composite=composite, seed=seed,
        )
    for selection, prefix in names.items():
        suite[f"{prefix}-mean"] = LRPMean(
            max_pixels=max_pixels, pixels_per_step=pixels_per_step, selection=selection,
            composite=composite, seed=seed, fill=fill,
        )
    return suite


@dataclass(frozen=True)
class TraceStep:
    """The state of an iterative attack on one image after ``step`` iterations."""

    step: int
    x_adv: Tensor
    perturbation: Tensor
    relevance: Tensor
    prediction: int
    confidence: float


def trace_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    make: Callable[[int], Attack],
    steps: int,
    *,
    composite: str = "epsilon-gamma-box",
    stop_at_success: bool = True,
) -> list[TraceStep]:
    """States of an iterative attack on one image (1×C×H×W) after 0, 1, ..., ``steps`` steps.

    ``make(t)`` builds the attack with ``t`` iterations (and a fixed step size), so step ``t``
    is the first ``t`` iterations of the full run for deterministic attacks. Each state gets
    the LRP relevance of the true class.
    """
    if x.shape[0] != 1:
        raise InputError(f"trace one image at a time (1×C×H×W), got {tuple(x.shape)}")
    trace = []
    current = x
    for t in range(int(steps) + 1):
        if t:
            current = make(t)(model, x, y).x_adv
        logits, relevance = lrp(model, current, y, composite)
        probabilities = logits.softmax(dim=1)[0]
        prediction = int(probabilities.argmax())
        trace.append(
            TraceStep(t, current[0].detach(), (current - x)[0].detach(), relevance[0],
                      prediction, float(probabilities[prediction]))
        )
        if stop_at_success and prediction != int(y[0]):
            break
    return trace
