"""Explanation-guided attacks: LRP-flip / LRP-mean / LRP-grad against I-FGSM and the saliency and
random baselines, with success against L0, L2 and Linf budgets.

Where LRP cannot apply (TorchScript, layers without a rule) the saliency-guided variants and
I-FGSM run without the LRP ones, and the summary reads saliency-grad; an outputs-only model has
no gradients for any of them, so the stage is skipped with that reason."""

from __future__ import annotations

from dataclasses import dataclass

from hardened.audit.access import substitute_note
from hardened.audit.stage import (
    Stage,
    StageContext,
    StageOutput,
    StageSkipped,
    Summary,
    register_stage,
)
from hardened.audit.tables import Table, pct


@dataclass(frozen=True)
class ExplainAttacksBudget:
    n_guided: int
    eps_linf: tuple[float, ...]
    pgd_steps: int


@dataclass(frozen=True)
class ExplainAttacksSummary(Summary):
    guided_success: float
    guided_median_l2: float | None
    ifgsm_success: float
    ifgsm_median_l2: float | None
    guided: str = "LRP-grad"  # saliency-grad where LRP cannot apply

    def sentence(self) -> str:
        guided = f"Explanation-guided {self.guided} fools {100 * self.guided_success:.0f}% of the correctly classified images"
        if self.guided_median_l2 is not None:
            guided += f" (median L2 {self.guided_median_l2:.2f})"
        ifgsm = f" against {100 * self.ifgsm_success:.0f}% for I-FGSM"
        ifgsm += f" (median L2 {self.ifgsm_median_l2:.2f})." if self.ifgsm_median_l2 is not None else "."
        return guided + ifgsm


@register_stage
class ExplainAttacksStage(Stage[ExplainAttacksBudget]):
    """The default attack suite compared on the same correctly classified images."""

    name = "explain_attacks"
    title = "Explanation-guided attacks"
    position = 30
    budget_type = ExplainAttacksBudget
    summary_type = ExplainAttacksSummary
    weight = 3.0

    def run(self, ctx: StageContext[ExplainAttacksBudget]) -> StageOutput:
        from hardened.evaluate.compare import DEFAULT_BUDGETS, compare_attacks, default_attack_suite
        from hardened.report.plots import plot_success_curves

        if not ctx.access.gradients:
            raise StageSkipped(f"{ctx.access.lrp}; explanation-guided attacks need input gradients "
                               "(the robustness section runs the score-based and transfer attacks instead)")
        budget = ctx.budget
        x, y = ctx.test.x[: budget.n_guided], ctx.test.y[: budget.n_guided]
        eps = max(budget.eps_linf)
        pixels = int(x[0].numel())
        max_pixels = max(4, min(100, pixels // 8))  # 98 of MNIST's 784 pixels
        steps = 2 * budget.pgd_steps
        suite = default_attack_suite(eps=eps, steps=steps, step_size=2.5 * eps / steps, seed=ctx.seed,
                                     max_pixels=max_pixels, pixels_per_step=max(1, max_pixels // 25))
        notes = []
        if ctx.access.lrp is not None:
            suite = {label: attack for label, attack in suite.items() if not label.startswith("LRP-")}
            notes.append(substitute_note("LRP", ctx.access.lrp, "gradient explanations used: the saliency-guided "
                                         "attacks (saliency-grad, -flip, -mean) and I-FGSM ran without the LRP ones"))
        comparison = compare_attacks(ctx.model, x, y, suite, batch_size=ctx.batch_size)
        figures = {}
        for norm, label in (("l0", "L0"), ("l2", "L2"), ("linf", "Linf")):
            figures[f"Success rate against {label} norm"] = plot_success_curves(
                comparison.curves(norm), ctx.figure(f"guided_{norm}"), f"Attack success against {label} norm")
        table = comparison.table()
        rows = []
        for run in comparison.runs:
            medians = run.median_norms()
            rows.append([
                run.label, pct(run.success_rate),
                *[pct(table[run.label][norm][f"{b:g}"]) for norm in ("l0", "l2") for b in DEFAULT_BUDGETS[norm][1:3]],
                *[("n/a" if medians[k] is None else f"{medians[k]:.3g}") for k in ("l0", "l2", "linf")],
                f"{run.gradient_count / max(run.n, 1):.1f}",
            ])
        columns = ["attack", "success",
                   *[f"≤ {b:g} {norm.upper()}" for norm in ("l0", "l2") for b in DEFAULT_BUDGETS[norm][1:3]],
                   "median L0", "median L2", "median Linf", "gradients/image"]
        by_label = {r.label: r for r in comparison.runs}
        summary = None
        headline = "LRP-grad" if ctx.access.lrp is None else "saliency-grad"
        if "I-FGSM" in by_label and headline in by_label:
            ifgsm, guided = by_label["I-FGSM"], by_label[headline]
            summary = ExplainAttacksSummary(guided.success_rate, guided.median_norms()["l2"],
                                            ifgsm.success_rate, ifgsm.median_norms()["l2"], headline)
        title = (f"Attacks on {comparison.n} correctly classified images (Linf budget {eps:g} for the "
                 "gradient attacks)")
        return StageOutput(summary=summary, tables=(Table.of(title, columns, rows),), figures=figures,
                           notes=tuple(notes), data={"comparison": comparison.to_dict(),
                                                     "lrp": "used" if ctx.access.lrp is None else ctx.access.lrp})
