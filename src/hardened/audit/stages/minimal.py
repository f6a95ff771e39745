"""Minimal adversarial perturbations from one FMN run per norm, and the accuracy curve they give.

FMN (Pintor, Roli, Brendel & Biggio 2021, "Fast minimum-norm adversarial attacks through adaptive
norm constraints", NeurIPS) finds, per image, a small perturbation that changes the prediction.
The accuracy at any eps is then the share of images whose minimal perturbation is larger than
eps: one run gives the whole curve, where a bisection needed
``steps + 2`` attack runs per image. FMN runs through the masking answers (BPDA, EOT,
log-outputs) that the checks choose on a probe of correctly classified images, so a model that
masks its gradients does not look robust here either.

Every figure is an upper bound on the robust accuracy (a lower bound on the minimal norm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from hardened._util.batching import predict_logits
from hardened.audit.stage import (
    Stage,
    StageContext,
    StageOutput,
    StageSkipped,
    Summary,
    register_stage,
)
from hardened.audit.tables import Table, pct
from hardened.evaluate.masking import plan_countermeasures
from hardened.evaluate.sweeps import MinimalPerturbation, SweepResult, minimal_norm
from hardened.report.audit_plots import plot_minimal_eps
from hardened.report.plots import plot_sweeps

__all__ = ["MinimalBudget", "MinimalStage", "MinimalSummary", "attack_model"]

PROBE = 64  # correctly classified images the masking checks look at


@dataclass(frozen=True)
class MinimalBudget:
    n_minimal: int
    fmn_steps: int
    eps_linf: tuple[float, ...]
    eps_l2: tuple[float, ...]
    headline_linf: float
    headline_l2: float


@dataclass(frozen=True)
class MinimalSummary(Summary):
    """Median minimal norms and the accuracies the minimal norms give at the headline eps."""

    n: int
    linf_median: float
    l2_median: float
    linf_eps: float
    linf_accuracy: float
    l2_eps: float
    l2_accuracy: float
    countermeasures: tuple[str, ...]

    def sentence(self) -> str:
        through = f" (through {', '.join(self.countermeasures)})" if self.countermeasures else ""
        return (
            f"Half of {self.n} images are fooled by a Linf change of {self.linf_median:.3g} or less and an L2 "
            f"change of {self.l2_median:.3g} or less (FMN minimal perturbations{through}); by them at most "
            f"{100 * self.linf_accuracy:.1f}% stay correct at Linf eps={self.linf_eps:g} and "
            f"{100 * self.l2_accuracy:.1f}% at L2 eps={self.l2_eps:g}."
        )


def attack_model(model: nn.Module, x: Tensor, y: Tensor) -> tuple[nn.Module, list[str]]:
    """The model a gradient attack should see: through the masking answers the checks choose on
    a probe of correctly classified points (BPDA, EOT, log-outputs), and their descriptions."""
    correct = predict_logits(model, x[:PROBE]).argmax(1).to(y.device) == y[:PROBE]
    probe = correct.nonzero().squeeze(1)
    if not probe.numel():
        return model, []
    plan = plan_countermeasures(model, x[probe], y[probe])
    return (plan.wrap(model), plan.describe()) if plan.active else (model, [])


def accuracy_curve(minimal: MinimalPerturbation, eps_values: tuple[float, ...]) -> SweepResult:
    """Accuracy at each eps from per-sample minimal norms: the share with minimal norm > eps."""
    grid = sorted(float(e) for e in eps_values)
    return SweepResult(attack=f"{minimal.attack} (minimal norms)", norm=minimal.norm, eps=grid,
                       robust_accuracy=[_accuracy_at(minimal, e) for e in grid], n=len(minimal.eps),
                       seconds=minimal.seconds, params={})


@register_stage
class MinimalStage(Stage[MinimalBudget]):
    """Per-image minimal Linf and L2 perturbations (FMN) and the accuracy curves they imply."""

    name = "minimal"
    title = "Minimal adversarial perturbations"
    position = 22
    budget_type = MinimalBudget
    summary_type = MinimalSummary
    weight = 1.5

    def run(self, ctx: StageContext[MinimalBudget]) -> StageOutput:
        if ctx.access.outputs_only:
            raise StageSkipped("FMN needs gradients and this model answers outputs only; the robustness "
                               "section gives its minimal Linf perturbations by Square bisection")
        budget = ctx.budget
        x, y = ctx.test.x[: budget.n_minimal], ctx.test.y[: budget.n_minimal]
        target, answers = attack_model(ctx.model, x, y)
        minimal = {norm: minimal_norm(target, x, y, attack="fmn", norm=norm, steps=budget.fmn_steps,
                                        batch_size=ctx.batch_size)
                   for norm in ("linf", "l2")}
        grids = {"linf": budget.eps_linf, "l2": budget.eps_l2}
        curves = {norm: accuracy_curve(minimal[norm], grids[norm]) for norm in minimal}
        through = f", through {', '.join(answers)}" if answers else ""
        figures = {}
        for norm, label in (("linf", "Linf"), ("l2", "L2")):
            found = [e for e in minimal[norm].eps if math.isfinite(e)]
            top = max([*grids[norm], *found]) or 1.0
            figures[f"Minimal {label} perturbations (FMN)"] = plot_minimal_eps(
                minimal[norm].eps, norm, ctx.figure(f"minimal_{norm}"), top, minimal[norm].median())
            figures[f"Accuracy against {label} eps from the minimal perturbations (upper bounds)"] = plot_sweeps(
                [curves[norm]], ctx.figure(f"minimal_curve_{norm}"), f"Accuracy against {label} eps, from FMN")
        tables = [
            Table.of(f"Minimal perturbations ({len(x)} images; FMN, {budget.fmn_steps} steps{through})",
                     ["norm", "median", "fooled at all"],
                     [[label, f"{minimal[norm].median():.3g}",
                       pct(sum(math.isfinite(e) for e in minimal[norm].eps) / max(len(x), 1))] for norm, label in (("linf", "Linf"), ("l2", "L2"))]),
            *[Table.of(f"Accuracy from the minimal {label} norms (share of images whose minimal perturbation "
                       "is larger than eps; upper bounds)", ["eps", "accuracy"],
                       [[f"{e:g}", pct(a)] for e, a in zip(curves[norm].eps, curves[norm].robust_accuracy, strict=True)])
              for norm, label in (("linf", "Linf"), ("l2", "L2"))],
        ]
        summary = MinimalSummary(
            n=len(x), linf_median=minimal["linf"].median(), l2_median=minimal["l2"].median(),
            linf_eps=budget.headline_linf, linf_accuracy=_accuracy_at(minimal["linf"], budget.headline_linf),
            l2_eps=budget.headline_l2, l2_accuracy=_accuracy_at(minimal["l2"], budget.headline_l2),
            countermeasures=tuple(answers),
        )
        notes = ("One FMN run per norm gives every image's minimal perturbation, hence the whole accuracy curve; "
                 "a stronger attack can only find smaller perturbations and lower the curve.",)
        return StageOutput(summary=summary, tables=tuple(tables), figures=figures, notes=notes, data={
            "minimal": {norm: m.to_dict() for norm, m in minimal.items()},
            "curves": [c.to_dict() for c in curves.values()],
            "countermeasures": answers,
        })


def _accuracy_at(minimal: MinimalPerturbation, eps: float) -> float:
    """The share of images whose minimal perturbation is larger than ``eps``."""
    return sum(e > eps for e in minimal.eps) / max(len(minimal.eps), 1)
