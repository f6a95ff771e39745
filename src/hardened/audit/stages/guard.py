"""Guard against unreliable inputs: reliability scores calibrated at 5% false positives, their
false negatives on out-of-distribution probes, the bare model's overconfidence, and an adaptive
attack on the best guard.

A score that cannot apply to this model is left out with its reason, and the best of the others
is chosen: the all-layer Mahalanobis score needs the features (forward hooks on known layers),
so a TorchScript or outputs-only model is guarded by the softmax and energy scores (outputs
only) or the VAE (input only). An outputs-only model is attacked with Square (score-based) in
place of PGD and the guard-aware PGD, which need gradients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hardened.audit.access import SQUARE_QUERIES
from hardened.audit.stage import (
    Stage,
    StageContext,
    StageOutput,
    StageSkipped,
    Summary,
    register_stage,
)
from hardened.audit.tables import Table, pct
from hardened.errors import ConfigError

GUARD_SCORES = ("softmax", "energy", "mahalanobis", "vae")
GUARD_PROBES = ("noise", "inverted", "natural")
SCORE_OPTIONS: dict[str, dict[str, Any]] = {"mahalanobis": {"layers": "all"}}
FALSE_POSITIVE_RATE = 0.05
MIN_HELD_OUT = 20
FEATURE_SCORES = ("mahalanobis",)  # the scores that read the model's features


@dataclass(frozen=True)
class GuardBudget:
    n_guard_fit: int
    guard_epochs: int
    n_guard_eval: int
    n_guided: int
    headline_linf: float
    pgd_steps: int


@dataclass(frozen=True)
class GuardSummary(Summary):
    best_score: str
    worst_fnr: float
    max_evasion: float
    adaptive: bool = True  # False: an outputs-only model, attacked with Square (no gradients)

    def sentence(self) -> str:
        attack = ("under an adaptive attack that also keeps the score low" if self.adaptive
                  else "under a score-based attack (Square)")
        return (
            f"The best guard ({self.best_score} score, 5% false positives) lets through at most "
            f"{100 * self.worst_fnr:.1f}% of the out-of-distribution probes; {attack}, "
            f"{100 * self.max_evasion:.0f}% of the images become adversarial and accepted."
        )


@register_stage
class GuardStage(Stage[GuardBudget]):
    """Every guard score fitted on training images, calibrated on held-out ones, probed and attacked."""

    name = "guard"
    title = "Guard against unreliable inputs"
    position = 60
    budget_type = GuardBudget
    summary_type = GuardSummary
    weight = 3.0

    def run(self, ctx: StageContext[GuardBudget]) -> StageOutput:
        from hardened.guard import GuardedClassifier, make_score
        from hardened.guard.adaptive import attack_guard
        from hardened.guard.evaluation import evaluate_guard
        from hardened.guard.probes import load_probe
        from hardened.report.plots import plot_score_histograms

        budget = ctx.budget
        train = ctx.splits.train.to(ctx.device)
        n_fit = min(budget.n_guard_fit, len(train) * 3 // 4)
        fit_data, held_out = train.head(n_fit), train.subset(slice(n_fit, n_fit + max(len(train) - n_fit, 0)))
        if len(held_out) < MIN_HELD_OUT:
            raise StageSkipped(f"too few training images ({len(train)}) to fit and calibrate a guard")
        id_x = ctx.test.x[: budget.n_guard_eval]
        probes = {name: load_probe(name, id_x, len(id_x), seed=ctx.seed).to(ctx.device) for name in GUARD_PROBES}
        evaluations = {}
        guards = {}
        left_out: dict[str, str] = {}
        for name in GUARD_SCORES:
            options = {"epochs": budget.guard_epochs, "seed": ctx.seed} if name == "vae" else SCORE_OPTIONS.get(name, {})
            try:
                if name in FEATURE_SCORES and ctx.access.outputs_only:
                    raise ConfigError(f"{ctx.access.lrp}, so its features cannot be read")
                score = make_score(name, None if name == "vae" else ctx.model, **options,
                                   batch_size=ctx.batch_size).fit(fit_data)
            except ConfigError as error:  # this score cannot read this model: the others stand
                left_out[name] = str(error)
                continue
            guard = GuardedClassifier(ctx.model, score, batch_size=ctx.batch_size)
            guard.calibrate(held_out.x, fpr=FALSE_POSITIVE_RATE)
            guards[name] = guard
            evaluations[name] = evaluate_guard(guard, id_x, probes, id_name=ctx.test.name)
        if not evaluations:
            raise StageSkipped("no reliability score applies: " + "; ".join(f"{n}: {r}" for n, r in left_out.items()))
        mean_auroc = {n: sum(r.auroc for r in e.ood) / len(e.ood) for n, e in evaluations.items()}
        best = max(mean_auroc, key=lambda n: mean_auroc[n])
        best_eval = evaluations[best]
        x, y = ctx.test.x[: budget.n_guided], ctx.test.y[: budget.n_guided]
        queries = None if ctx.access.gradients else SQUARE_QUERIES
        adaptive = attack_guard(guards[best], x, y, eps=budget.headline_linf * 2, steps=budget.pgd_steps, seed=ctx.seed,
                                queries=queries)
        notes = [f"{name} score left out: {reason}" for name, reason in left_out.items()]
        if left_out:
            notes.append(f"Chosen automatically among the scores that apply ({', '.join(evaluations)}): the {best} "
                         "score, the best mean AUROC over the probes.")
        if queries is not None:
            notes.append(f"PGD and the guard-aware PGD not applicable: {ctx.access.lrp}; the guard is attacked with "
                         f"Square (score-based, {queries} queries per image) instead.")
        path = plot_score_histograms(best_eval, ctx.figure("guard_scores"))
        score_rows = [
            [name, f"{e.threshold:.4g}", pct(e.id_fpr),
             *[f"{pct(r.fnr)} / {r.auroc:.3f}" for r in e.ood], f"{mean_auroc[name]:.3f}"]
            for name, e in evaluations.items()
        ]
        over_rows = [[r.name, *[pct(v) for v in r.overconfident.values()]] for r in best_eval.ood]
        levels = list(best_eval.ood[0].overconfident) if best_eval.ood else []
        attack_rows = [[a.attack, pct(a.success_rate), pct(a.detection_rate if a.detection_rate == a.detection_rate else None),
                        pct(a.evasion_rate)] for a in adaptive.attacks]
        tables = (
            Table.of("Reliability scores: threshold at 5% false positives on held-out training images; "
                     "per probe false-negative rate / AUROC",
                     ["score", "threshold", "test FPR", *GUARD_PROBES, "mean AUROC"], score_rows),
            Table.of("Overconfidence of the bare classifier on out-of-distribution probes (share above confidence)",
                     ["probe", *[f"> {lv}" for lv in levels]], over_rows),
            Table.of(f"Attacks on the guarded classifier ({best} score, Linf eps {adaptive.eps:g}, {adaptive.n} images)",
                     ["attack", "label changed", "detected by the guard", "adversarial and accepted"], attack_rows),
        )
        summary = GuardSummary(best, max(r.fnr for r in best_eval.ood), max(a.evasion_rate for a in adaptive.attacks),
                               queries is None)
        return StageOutput(summary=summary, tables=tables, figures={f"Score distributions ({best})": path},
                           notes=tuple(notes), data={
            "best_score": best,
            "left_out": left_out,
            "evaluations": {n: e.to_dict() for n, e in evaluations.items()},
            "adaptive_attack": adaptive.to_dict(),
        })
