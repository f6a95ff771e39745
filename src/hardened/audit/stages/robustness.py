"""Robustness against attacks: a one-step curve and the cascade evaluator's curve per norm
(APGD-CE, APGD-T, Square on the points still robust; Croce & Hein 2020, arXiv:2003.01690), the
and the gradient-masking checks and their answers (BPDA, EOT; Athalye et al. 2018,
arXiv:1802.00420). The minimal perturbations per image are the ``minimal`` stage's (FMN).

Every robust accuracy here is an upper bound: the share of points none of these attacks broke.
An outputs-only model (no gradients) gets the score-based cascade and transfer from a surrogate
instead (``_score_based``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardened.audit.result import StageResult
from hardened.audit.stage import Stage, StageContext, StageOutput, Summary, register_stage
from hardened.audit.tables import Table, pct
from hardened.evaluate.cascade import CascadeSweep, cascade_sweep, resolve_steps
from hardened.evaluate.sweeps import SweepResult, robust_accuracy_sweep
from hardened.report.plots import plot_sweeps

__all__ = ["RobustnessBudget", "RobustnessStage", "RobustnessSummary", "cascade_sweeps", "masking_findings"]

@dataclass(frozen=True)
class RobustnessBudget:
    n_eval: int
    cascade_preset: str
    eps_linf: tuple[float, ...]
    eps_l2: tuple[float, ...]
    headline_linf: float
    headline_l2: float
    cascade_batch: int  # the unit a torchrun audit splits over its ranks (AuditBudget)
    pgd_steps: int  # the transfer attack's steps on the surrogate of an outputs-only model
    n_minimal: int  # an outputs-only model's minimal Linf perturbations (Square bisection)


@dataclass(frozen=True)
class RobustnessSummary(Summary):
    """The cascade's figures (upper bounds) at the headline eps of each norm and the largest
    Linf eps; ``masking_fired``: the checks that fired; ``countermeasures``: their answers."""

    linf_eps: float
    linf_accuracy: float
    linf_max_eps: float
    linf_max_accuracy: float
    l2_eps: float
    l2_accuracy: float
    preset: str
    masking_fired: tuple[str, ...]
    countermeasures: tuple[str, ...]
    minimal_linf_median: float | None = None  # outputs-only models (Square bisection); else the minimal stage's

    def sentence(self) -> str:
        flag = f" (masking check fired: {', '.join(self.masking_fired)})" if self.masking_fired else ""
        minimal = ("" if self.minimal_linf_median is None else
                   f"; half of the images are fooled by a Linf change of {self.minimal_linf_median:.3g} or less")
        text = (
            f"Under the {self.preset} attack cascade at most {100 * self.linf_accuracy:.1f}% of the images stay "
            f"correct at Linf eps={self.linf_eps:g}{flag}, {100 * self.linf_max_accuracy:.1f}% at "
            f"eps={self.linf_max_eps:g}{flag} and {100 * self.l2_accuracy:.1f}% at L2 eps={self.l2_eps:g}{flag}"
            f"{minimal}. These are upper bounds: the points these attacks did not break."
        )
        if self.masking_fired:
            answered = f" The attacks used {', '.join(self.countermeasures)}." if self.countermeasures else ""
            text += (f" The model masks gradients ({', '.join(self.masking_fired)}), so its true robust accuracy "
                     f"may be lower still.{answered}")
        return text


def cascade_sweeps(result: StageResult) -> dict[str, SweepResult]:
    """The cascade's sweeps of a robustness result, by norm (``"linf"``, ``"l2"``), for later stages."""
    sweeps = (SweepResult.from_dict(s) for s in result.data["sweeps"])
    return {s.norm: s for s in sweeps if s.attack.startswith("cascade")}


def masking_findings(result: StageResult) -> list[dict[str, Any]]:
    """The gradient-masking checks of a robustness result: ``name``, ``fired``, ``fired_at``
    (``"linf 0.3"``...), ``answer``, ``meaning`` and ``numbers`` (of a fired instance where one fired)."""
    return list(result.data["masking"])


def _merge_findings(cascades: dict[str, CascadeSweep]) -> list[dict[str, Any]]:
    """One row per check over every (norm, eps) cascade: fired anywhere, and where."""
    merged: dict[str, dict[str, Any]] = {}
    for norm, sweep in cascades.items():
        for run in sweep.results:
            for finding in run.findings:
                row = merged.setdefault(finding.name, {"name": finding.name, "fired": False, "fired_at": [],
                                                       "answer": finding.answer, "meaning": finding.meaning,
                                                       "numbers": finding.numbers})
                if finding.fired:
                    if not row["fired"]:
                        row.update(fired=True, answer=finding.answer, meaning=finding.meaning, numbers=finding.numbers)
                    row["fired_at"].append(f"{norm} {run.eps:g}")
    return list(merged.values())


def _contribution_rows(sweep: CascadeSweep) -> list[list[Any]]:
    return [
        [f"{run.eps:g}", pct(run.robust_accuracy), c.label, c.attacked, c.broken, c.forwards, c.backwards, c.queries]
        for run in sweep.results for c in run.contributions
    ]


def _state(ctx: StageContext[RobustnessBudget], norm: str) -> Path | None:
    return None if ctx.work_dir is None else ctx.work_dir / "cascade" / norm


@register_stage
class RobustnessStage(Stage[RobustnessBudget]):
    """One-step and cascade accuracy curves per norm and the masking checks."""

    name = "robustness"
    title = "Robustness against attacks"
    position = 20
    budget_type = RobustnessBudget
    summary_type = RobustnessSummary
    weight = 6.0
    sharded = True  # the cascade's batches are split over the ranks (its state is the work folder)

    def run(self, ctx: StageContext[RobustnessBudget]) -> StageOutput:
        if ctx.access.outputs_only:
            from hardened.audit.stages._score_based import score_based_robustness

            return score_based_robustness(ctx)
        budget = ctx.budget
        members = [s.label for s in resolve_steps(budget.cascade_preset)]
        x, y = ctx.test.x[: budget.n_eval], ctx.test.y[: budget.n_eval]
        cascades: dict[str, CascadeSweep] = {}
        sweeps: dict[str, list[SweepResult]] = {}
        for norm, eps in (("linf", budget.eps_linf), ("l2", budget.eps_l2)):
            one_step = robust_accuracy_sweep(ctx.model, x, y, eps_values=eps, attack="fgsm" if norm == "linf" else "fgm",
                                             norm=norm, batch_size=ctx.batch_size)
            cascades[norm] = cascade_sweep(ctx.model, x, y, eps_values=eps, norm=norm, preset=budget.cascade_preset,
                                           seed=ctx.seed, state_dir=_state(ctx, norm),
                                           batch_size=min(budget.cascade_batch, ctx.batch_size))  # memory permitting
            sweeps[norm] = [one_step, cascades[norm].sweep]
        masking = _merge_findings(cascades)
        fired = tuple(m["name"] for m in masking if m["fired"])
        answers = tuple(dict.fromkeys(a for c in cascades.values() for r in c.results for a in r.countermeasures))

        strength = f"{budget.cascade_preset} preset: {' then '.join(members)}"
        figures = {
            "Robust accuracy, Linf (upper bounds)": plot_sweeps(sweeps["linf"], ctx.figure("robust_linf"),
                                                                "Robust accuracy against Linf eps"),
            "Robust accuracy, L2 (upper bounds)": plot_sweeps(sweeps["l2"], ctx.figure("robust_l2"),
                                                              "Robust accuracy against L2 eps"),
        }
        tables = [
            Table.of(f"Accuracy under attack, {label} ({len(x)} images; upper bounds; cascade = {strength})",
                     ["eps", *[s.attack.upper() for s in sweeps[norm]]],
                     [[f"{e:g}", *[pct(s.robust_accuracy[i]) for s in sweeps[norm]]]
                      for i, e in enumerate(sweeps[norm][0].eps)])
            for norm, label in (("linf", "Linf"), ("l2", "L2"))
        ]
        tables += [
            Table.of(f"Which attack broke the points, {label}: each member attacks only the points still robust "
                     "(broke = its marginal contribution; passes are images through the model)",
                     ["eps", "robust (upper bound)", "attack", "attacked", "broke", "forward passes",
                      "backward passes", "queries"], _contribution_rows(cascades[norm]))
            for norm, label in (("linf", "Linf"), ("l2", "L2"))
        ]
        tables.append(Table.of(
            "Gradient-masking checks of the cascade (a fired check means the gradients mislead the attack)",
            ["check", "result", "fired at", "answer", "what it means"],
            [[m["name"], "fired" if m["fired"] else "pass", ", ".join(m["fired_at"]) or "-", m["answer"] or "-",
              m["meaning"]] for m in masking],
        ))
        notes = [
            f"Every robust accuracy above is an upper bound: the share of points that the {strength} did not "
            "break. A stronger attack can only lower it.",
            *([f"Gradient masking detected ({', '.join(fired)}): the attacks used {', '.join(answers) or 'no answer'}; "
               "treat every figure as optimistic."] if fired else []),
            *(["The quick preset has no score-based member, so the check that Square finds points the gradient "
               "attacks miss did not run; the standard and thorough budgets run it."]
              if not any("score-attack" == m["name"] for m in masking) else []),
        ]
        summary = RobustnessSummary(
            linf_eps=budget.headline_linf,
            linf_accuracy=_at(sweeps["linf"][1], budget.headline_linf),
            linf_max_eps=max(budget.eps_linf),
            linf_max_accuracy=_at(sweeps["linf"][1], max(budget.eps_linf)),
            l2_eps=budget.headline_l2,
            l2_accuracy=_at(sweeps["l2"][1], budget.headline_l2),
            preset=budget.cascade_preset,
            masking_fired=fired,
            countermeasures=answers,
        )
        return StageOutput(summary=summary, tables=tuple(tables), figures=figures, notes=tuple(notes), data={
            "sweeps": [s.to_dict() for s in sweeps["linf"] + sweeps["l2"]],
            "preset": budget.cascade_preset,
            "members": members,
            "cascades": {norm: [r.to_dict() for r in c.results] for norm, c in cascades.items()},
            "masking": masking,
            "countermeasures": list(answers),
            "resumed": sum(r.resumed for c in cascades.values() for r in c.results),
        })


def _at(sweep: SweepResult, eps: float) -> float:
    return dict(zip(sweep.eps, sweep.robust_accuracy, strict=True))[eps]
