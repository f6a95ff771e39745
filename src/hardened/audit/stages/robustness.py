"""Robustness against gradient attacks: FGSM/FGM and PGD sweeps over Linf and L2 eps, and the
minimal Linf perturbation per image by bisection (Madry et al. 2018, arXiv:1706.06083)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hardened.audit.result import StageResult
from hardened.audit.stage import Stage, StageContext, StageOutput, Summary, register_stage
from hardened.audit.tables import Table, pct
from hardened.evaluate.sweeps import SweepResult, minimal_eps, robust_accuracy_sweep
from hardened.report.audit_plots import plot_minimal_eps
from hardened.report.plots import plot_sweeps

__all__ = ["RobustnessBudget", "RobustnessStage", "RobustnessSummary", "pgd_sweeps"]


@dataclass(frozen=True)
class RobustnessBudget:
    n_eval: int
    pgd_steps: int
    eps_linf: tuple[float, ...]
    eps_l2: tuple[float, ...]
    headline_linf: float
    headline_l2: float
    n_minimal: int
    bisection_steps: int


@dataclass(frozen=True)
class RobustnessSummary(Summary):
    linf_eps: float
    linf_accuracy: float
    linf_max_eps: float
    linf_max_accuracy: float
    l2_eps: float
    l2_accuracy: float
    minimal_linf_median: float

    def sentence(self) -> str:
        return (
            f"Under PGD attack its accuracy falls to {100 * self.linf_accuracy:.1f}% at Linf eps={self.linf_eps:g}, "
            f"{100 * self.linf_max_accuracy:.1f}% at eps={self.linf_max_eps:g}, and {100 * self.l2_accuracy:.1f}% at "
            f"L2 eps={self.l2_eps:g}; half of the images are fooled by a Linf change of "
            f"{self.minimal_linf_median:.3g} or less."
        )


def pgd_sweeps(result: StageResult) -> dict[str, SweepResult]:
    """The PGD sweeps of a robustness result, by norm (``"linf"``, ``"l2"``), for later stages."""
    sweeps = (SweepResult.from_dict(s) for s in result.data["sweeps"])
    return {s.norm: s for s in sweeps if s.attack == "pgd"}


def _sweeps(ctx: StageContext[RobustnessBudget], norm: str, eps: tuple[float, ...]) -> list[SweepResult]:
    x, y = ctx.test.x[: ctx.budget.n_eval], ctx.test.y[: ctx.budget.n_eval]
    one_step = "fgsm" if norm == "linf" else "fgm"
    return [
        robust_accuracy_sweep(ctx.model, x, y, eps_values=eps, attack=one_step, norm=norm),
        robust_accuracy_sweep(ctx.model, x, y, eps_values=eps, attack="pgd", norm=norm,
                              steps=ctx.budget.pgd_steps, seed=ctx.seed),
    ]


@register_stage
class RobustnessStage(Stage[RobustnessBudget]):
    """One-step and PGD accuracy curves per norm, and the per-image minimal Linf eps."""

    name = "robustness"
    title = "Robustness against gradient attacks"
    position = 20
    budget_type = RobustnessBudget
    summary_type = RobustnessSummary
    weight = 6.0

    def run(self, ctx: StageContext[RobustnessBudget]) -> StageOutput:
        budget = ctx.budget
        linf = _sweeps(ctx, "linf", budget.eps_linf)
        l2 = _sweeps(ctx, "l2", budget.eps_l2)
        x, y = ctx.test.x[: budget.n_minimal], ctx.test.y[: budget.n_minimal]
        eps_max = max(budget.eps_linf) * 2
        minimal = minimal_eps(ctx.model, x, y, eps_max=eps_max, attack="pgd", norm="linf",
                              steps=budget.bisection_steps, seed=ctx.seed)
        figures = {
            "Robust accuracy, Linf": plot_sweeps(linf, ctx.figure("robust_linf"), "Robust accuracy against Linf eps"),
            "Robust accuracy, L2": plot_sweeps(l2, ctx.figure("robust_l2"), "Robust accuracy against L2 eps"),
            "Minimal Linf perturbations": plot_minimal_eps(minimal.eps, "linf", ctx.figure("minimal_linf"), eps_max,
                                                           minimal.median()),
        }
        fooled = len([e for e in minimal.eps if math.isfinite(e)]) / max(len(minimal.eps), 1)
        tables = [
            Table.of(f"Accuracy under attack, {norm} ({len(sweeps[0].eps) and sweeps[0].n} images, PGD-{budget.pgd_steps})",
                     ["eps", *[s.attack.upper() for s in sweeps]],
                     [[f"{e:g}", *[pct(s.robust_accuracy[i]) for s in sweeps]] for i, e in enumerate(sweeps[0].eps)])
            for norm, sweeps in (("Linf", linf), ("L2", l2))
        ]
        tables.append(Table.of(
            f"Minimal Linf perturbation ({len(minimal.eps)} images, bisection to {eps_max / 2**budget.bisection_steps:.2g})",
            ["median", "fooled within eps ≤ " + f"{eps_max:g}"],
            [[f"{minimal.median():.3g}", pct(fooled)]],
        ))
        summary = RobustnessSummary(
            linf_eps=budget.headline_linf,
            linf_accuracy=dict(zip(linf[1].eps, linf[1].robust_accuracy, strict=True))[budget.headline_linf],
            linf_max_eps=max(budget.eps_linf),
            linf_max_accuracy=linf[1].robust_accuracy[-1],
            l2_eps=budget.headline_l2,
            l2_accuracy=dict(zip(l2[1].eps, l2[1].robust_accuracy, strict=True))[budget.headline_l2],
            minimal_linf_median=minimal.median(),
        )
        return StageOutput(summary=summary, tables=tuple(tables), figures=figures, data={
            "sweeps": [s.to_dict() for s in linf + l2],
            "minimal_linf": minimal.to_dict(),
            "minimal_linf_fooled_fraction": fooled,
        })
