"""Sanity checks for gradient masking (Athalye et al. 2018, arXiv:1802.00420; Carlini et al.
2019, arXiv:1902.06705): accuracy monotone in eps, an unbounded attack reaches ~0%, more steps
and restarts are not markedly stronger, random noise is not stronger than the gradient; and the
cascade's own masking checks (randomness, probability outputs, zero gradients, Square finding
points the gradient attacks miss), read from the robustness stage.

An outputs-only model has no gradients: the gradient-based checks are listed as not applicable
with that reason, and the forward-only checks (randomness, probability outputs) are kept."""

from __future__ import annotations

from dataclasses import dataclass

from hardened.audit.access import substitute_note
from hardened.audit.stage import Stage, StageContext, StageOutput, Summary, register_stage
from hardened.audit.stages.robustness import cascade_sweeps, masking_findings
from hardened.audit.tables import Table
from hardened.evaluate.masking import MaskingFinding
from hardened.evaluate.sanity import masking_check, run_sanity_checks


@dataclass(frozen=True)
class SanityBudget:
    n_eval: int
    pgd_steps: int
    headline_linf: float
    headline_l2: float
    strong_steps_factor: int
    strong_restarts: int


@dataclass(frozen=True)
class SanitySummary(Summary):
    total: int
    flagged: tuple[str, ...]
    gradient_checks: bool = True  # False: an outputs-only model, only the checks on its outputs ran

    def sentence(self) -> str:
        if not self.gradient_checks:
            found = f"{len(self.flagged)} flagged ({', '.join(self.flagged)})" if self.flagged else "none flagged"
            return (f"Only the {self.total} masking checks on the outputs could run ({found}); the gradient-based "
                    "checks need gradients, which this model does not give.")
        if not self.flagged:
            return f"All {self.total} gradient-masking checks pass, so these attack numbers can be trusted."
        return (f"{len(self.flagged)} of {self.total} gradient-masking checks are flagged ({', '.join(self.flagged)}): "
                "treat the robust accuracies above as upper bounds.")


@register_stage
class SanityStage(Stage[SanityBudget]):
    """The masking checks at the headline eps of each norm, against the robustness stage's
    cascade, followed by the cascade's own masking checks."""

    name = "sanity"
    title = "Sanity checks for gradient masking"
    position = 70
    requires = ("robustness",)
    budget_type = SanityBudget
    summary_type = SanitySummary
    weight = 5.0

    def run(self, ctx: StageContext[SanityBudget]) -> StageOutput:
        budget = ctx.budget
        robustness = ctx.requirement("robustness")
        sweeps = cascade_sweeps(robustness)
        x, y = ctx.test.x[: budget.n_eval], ctx.test.y[: budget.n_eval]
        checks = []
        notes = []
        if ctx.access.outputs_only:
            notes.append(substitute_note(
                "The gradient-based checks (monotone in eps, unbounded attack, more steps and restarts, noise "
                "against the gradient)", ctx.access.lrp or "", "only the checks on the outputs ran"))
        norms = () if ctx.access.outputs_only else (("linf", budget.headline_linf), ("l2", budget.headline_l2))
        for norm, headline in norms:
            checks += run_sanity_checks(
                ctx.model, x, y, sweeps[norm], eps=headline, steps=budget.pgd_steps, seed=ctx.seed,
                strong_steps_factor=budget.strong_steps_factor, strong_restarts=budget.strong_restarts,
                unbounded_steps=2 * budget.pgd_steps, batch_size=ctx.batch_size,
            )
        checks += [masking_check(MaskingFinding(m["name"], m["fired"], m["meaning"], m["answer"], m["numbers"]),
                                 m["fired_at"]) for m in masking_findings(robustness)]
        table = Table.of("Gradient-masking checks", ["check", "result", "what it means"],
                         [[c.name, "pass" if c.passed else "flagged", c.explanation] for c in checks])
        summary = SanitySummary(len(checks), tuple(c.name for c in checks if not c.passed), not ctx.access.outputs_only)
        return StageOutput(summary=summary, tables=(table,), notes=tuple(notes), data={
            "checks": [c.to_dict() for c in checks], "passed": sum(c.passed for c in checks), "total": len(checks),
        })
