"""The audit pipeline: stages that call the library's API and collect one report.

``run_audit(model, splits, out_dir=...)`` runs each stage, catching the library's errors so a
stage that cannot run (say, IBP on a layer it cannot bound) is reported as skipped or failed
while the rest goes on. Stage results are cached under ``out_dir/stages/`` keyed by the model's
weights, the data, the budget and the seed, so an interrupted audit resumes where it stopped and
a re-run with the same seed gives the same numbers. ``audit.json`` follows ``AUDIT_SCHEMA``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardened._util.atomic import write_json
from hardened._util.batching import predict_logits
from hardened._util.progress import progress_bar
from hardened.data.dataset import Dataset, Splits
from hardened.errors import ConfigError, HardenedError, InputError
from hardened.evaluate.calibration import calibration
from hardened.evaluate.sanity import run_sanity_checks
from hardened.evaluate.sweeps import SweepResult, minimal_eps, robust_accuracy_sweep
from hardened.report.audit_plots import plot_gallery, plot_minimal_eps, plot_reliability
from hardened.report.plots import plot_sweeps

__all__ = [
    "AUDIT_SCHEMA_VERSION",
    "BUDGETS",
    "AuditBudget",
    "AuditResult",
    "StageResult",
    "check_output_dir",
    "run_audit",
]

AUDIT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class AuditBudget:
    """How much work each stage may do. ``quick`` fits in a few minutes on 2 CPU cores."""

    name: str
    n_eval: int  # test images for sweeps and sanity checks
    pgd_steps: int
    eps_linf: tuple[float, ...]
    eps_l2: tuple[float, ...]
    headline_linf: float
    headline_l2: float
    n_minimal: int
    bisection_steps: int
    n_gallery: int
    n_guided: int
    n_certify: int
    smoothing_n: int
    smoothing_sigma: float
    ibp_eps: float
    n_guard_fit: int
    guard_epochs: int
    n_guard_eval: int
    strong_steps_factor: int
    strong_restarts: int


BUDGETS: dict[str, AuditBudget] = {
    "quick": AuditBudget(
        name="quick", n_eval=200, pgd_steps=20,
        eps_linf=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3), eps_l2=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
        headline_linf=0.1, headline_l2=1.0, n_minimal=64, bisection_steps=7, n_gallery=6,
        n_guided=64, n_certify=40, smoothing_n=1_000, smoothing_sigma=0.25, ibp_eps=0.01,
        n_guard_fit=3_000, guard_epochs=3, n_guard_eval=300, strong_steps_factor=3, strong_restarts=2,
    ),
    "standard": AuditBudget(
        name="standard", n_eval=1_000, pgd_steps=40,
        eps_linf=(0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3), eps_l2=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
        headline_linf=0.1, headline_l2=1.0, n_minimal=200, bisection_steps=8, n_gallery=8,
        n_guided=200, n_certify=100, smoothing_n=10_000, smoothing_sigma=0.25, ibp_eps=0.01,
        n_guard_fit=4_000, guard_epochs=8, n_guard_eval=1_000, strong_steps_factor=5, strong_restarts=3,
    ),
    "thorough": AuditBudget(
        name="thorough", n_eval=10_000, pgd_steps=100,
        eps_linf=(0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3), eps_l2=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0),
        headline_linf=0.1, headline_l2=1.0, n_minimal=1_000, bisection_steps=10, n_gallery=10,
        n_guided=1_000, n_certify=500, smoothing_n=100_000, smoothing_sigma=0.25, ibp_eps=0.01,
        n_guard_fit=20_000, guard_epochs=20, n_guard_eval=5_000, strong_steps_factor=10, strong_restarts=5,
    ),
}


@dataclass(frozen=True)
class StageResult:
    """The outcome of one stage: ``ok``, ``skipped`` (cannot apply) or ``failed`` (an error)."""

    name: str
    title: str
    status: str
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditResult:
    """The whole audit: what was audited, with which budget and seed, the verdict, the stages."""

    schema_version: int
    model: str
    data: str
    budget: str
    seed: int
    verdict: str
    stages: tuple[StageResult, ...]
    seconds: float

    @property
    def complete(self) -> bool:
        return all(stage.status == "ok" for stage in self.stages)

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "data": self.data,
            "budget": self.budget,
            "seed": self.seed,
            "verdict": self.verdict,
            "complete": self.complete,
            "seconds": self.seconds,
            "stages": [stage.to_dict() for stage in self.stages],
        }


class StageSkipped(HardenedError):
    """Raised inside a stage when it does not apply to this model or data."""


@dataclass
class AuditContext:
    """What every stage can use; ``shared`` passes results between stages."""

    model: nn.Module
    splits: Splits
    test: Dataset
    budget: AuditBudget
    seed: int
    figures_dir: Path
    device: torch.device
    shared: dict[str, Any] = field(default_factory=dict)

    def figure(self, name: str) -> Path:
        return self.figures_dir / f"{name}.png"


StageFunction = Callable[[AuditContext], tuple[dict[str, Any], dict[str, str]]]


# --------------------------------------------------------------------------- stages


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    """A table the HTML report renders as is: title, column names, rows of cells."""
    return {"title": title, "columns": columns, "rows": rows}


def _stage_clean(ctx: AuditContext) -> tuple[dict[str, Any], dict[str, str]]:
    result = calibration(ctx.model, ctx.test.x, ctx.test.y)
    path = plot_reliability(result, ctx.figure("reliability"))
    table = _table("Clean performance", ["test images", "accuracy", "expected calibration error"],
                   [[result.n, _pct(result.accuracy), _pct(result.ece)]])
    return {"accuracy": result.accuracy, "ece": result.ece, "n": result.n, "calibration": result.to_dict(),
            "tables": [table]}, {"Reliability diagram": path.name}


def _sweeps(ctx: AuditContext, norm: str, eps: tuple[float, ...]) -> list[SweepResult]:
    x, y = ctx.test.x[: ctx.budget.n_eval], ctx.test.y[: ctx.budget.n_eval]
    one_step = "fgsm" if norm == "linf" else "fgm"
    return [
        robust_accuracy_sweep(ctx.model, x, y, eps_values=eps, attack=one_step, norm=norm),
        robust_accuracy_sweep(ctx.model, x, y, eps_values=eps, attack="pgd", norm=norm,
                              steps=ctx.budget.pgd_steps, seed=ctx.seed),
    ]


def _stage_robustness(ctx: AuditContext) -> tuple[dict[str, Any], dict[str, str]]:
    budget = ctx.budget
    linf = _sweeps(ctx, "linf", budget.eps_linf)
    l2 = _sweeps(ctx, "l2", budget.eps_l2)
    ctx.shared["pgd_linf"], ctx.shared["pgd_l2"] = linf[1], l2[1]
    x, y = ctx.test.x[: budget.n_minimal], ctx.test.y[: budget.n_minimal]
    eps_max = max(budget.eps_linf) * 2
    minimal = minimal_eps(ctx.model, x, y, eps_max=eps_max, attack="pgd", norm="linf",
                          steps=budget.bisection_steps, seed=ctx.seed)
    figures = {
        "Robust accuracy, Linf": plot_sweeps(linf, ctx.figure("robust_linf"), "Robust accuracy against Linf eps").name,
        "Robust accuracy, L2": plot_sweeps(l2, ctx.figure("robust_l2"), "Robust accuracy against L2 eps").name,
        "Minimal Linf perturbations": plot_minimal_eps(minimal.eps, "linf", ctx.figure("minimal_linf"), eps_max, minimal.median()).name,
    }
    finite = [e for e in minimal.eps if math.isfinite(e)]
    tables = [
        _table(f"Accuracy under attack, {norm} ({len(sweeps[0].eps) and sweeps[0].n} images, PGD-{budget.pgd_steps})",
               ["eps", *[s.attack.upper() for s in sweeps]],
               [[f"{e:g}", *[_pct(s.robust_accuracy[i]) for s in sweeps]] for i, e in enumerate(sweeps[0].eps)])
        for norm, sweeps in (("Linf", linf), ("L2", l2))
    ]
    tables.append(_table(
        f"Minimal Linf perturbation ({len(minimal.eps)} images, bisection to {eps_max / 2**budget.bisection_steps:.2g})",
        ["median", "fooled within eps ≤ " + f"{eps_max:g}"],
        [[f"{minimal.median():.3g}", _pct(len(finite) / max(len(minimal.eps), 1))]],
    ))
    return {
        "tables": tables,
        "sweeps": [s.to_dict() for s in linf + l2],
        "minimal_linf": minimal.to_dict(),
        "minimal_linf_median": minimal.median(),
        "minimal_linf_fooled_fraction": len(finite) / max(len(minimal.eps), 1),
        "headline": {
            "linf_eps": budget.headline_linf,
            "linf_accuracy": dict(zip(linf[1].eps, linf[1].robust_accuracy, strict=True))[budget.headline_linf],
            "linf_max_eps": max(budget.eps_linf),
            "linf_max_accuracy": linf[1].robust_accuracy[-1],
            "l2_eps": budget.headline_l2,
            "l2_accuracy": dict(zip(l2[1].eps, l2[1].robust_accuracy, strict=True))[budget.headline_l2],
        },
    }, figures


def _stage_sanity(ctx: AuditContext) -> tuple[dict[str, Any], dict[str, str]]:
    if "pgd_linf" not in ctx.shared:
        raise StageSkipped("needs the robustness stage's PGD sweeps, which did not run")
    budget = ctx.budget
    x, y = ctx.test.x[: budget.n_eval], ctx.test.y[: budget.n_eval]
    checks = []
    for norm, headline in (("linf", budget.headline_linf), ("l2", budget.headline_l2)):
        checks += run_sanity_checks(
            ctx.model, x, y, ctx.shared[f"pgd_{norm}"], eps=headline, steps=budget.pgd_steps, seed=ctx.seed,
            strong_steps_factor=budget.strong_steps_factor, strong_restarts=budget.strong_restarts,
            unbounded_steps=2 * budget.pgd_steps,
        )
    table = _table("Gradient-masking checks", ["check", "result", "what it means"],
                   [[c.name, "pass" if c.passed else "flagged", c.explanation] for c in checks])
    return {"checks": [c.to_dict() for c in checks], "passed": sum(c.passed for c in checks),
            "total": len(checks), "tables": [table]}, {}


def _stage_gallery(ctx: AuditContext) -> tuple[dict[str, Any], dict[str, str]]:
    from hardened.attacks import PGD

    budget = ctx.budget
    logits = predict_logits(ctx.model, ctx.test.x[:200])
    correct = (logits.argmax(1).cpu() == ctx.test.y[:200]).nonzero().squeeze(1)[: budget.n_gallery]
    if len(correct) == 0:
        raise StageSkipped("no correctly classified test image to show")
    x, y = ctx.test.x[correct], ctx.test.y[correct]
    eps = budget.headline_linf * 2
    result = PGD(eps=eps, steps=budget.pgd_steps, seed=ctx.seed, early_stop=False)(ctx.model, x, y)
    probs = predict_logits(ctx.model, x).softmax(1)
    classes = ctx.test.classes
    rows = {"original": x, "adversarial": result.x_adv, "perturbation": result.x_adv - x}
    titles = {
        "original": [f"{classes[int(p)]} {100 * float(c):.0f}%" for p, c in zip(probs.argmax(1), probs.max(1).values, strict=True)],
        "adversarial": [f"{classes[int(p)]} {100 * float(c):.0f}%" for p, c in zip(result.pred_adv, result.confidence_adv, strict=True)],
        "perturbation": [f"±{eps:g}"] * len(x),
    }
    from hardened.explain import explain_images

    relevance_clean = explain_images(ctx.model, x, target=y, method="lrp", seed=ctx.seed).relevance
    relevance_adv = explain_images(ctx.model, result.x_adv, target=result.pred_adv, method="lrp", seed=ctx.seed).relevance
    rows |= {"LRP (original)": relevance_clean, "LRP (adversarial)": relevance_adv}
    titles |= {
        "LRP (original)": [f"for {classes[int(t)]}" for t in y],
        "LRP (adversarial)": [f"for {classes[int(t)]}" for t in result.pred_adv],
    }
    diverging = [name for name in rows if name not in ("original", "adversarial")]
    path = plot_gallery(rows, titles, ctx.figure("gallery"), diverging=diverging)
    return {
        "eps": eps, "norm": "linf", "indices": correct.tolist(),
        "success": result.success.tolist(), "rows": list(rows),
    }, {f"Examples at Linf eps={eps:g}": path.name}


def _stage_explain_attacks(ctx: AuditContext) -> tuple[dict[str, Any], dict[str, str]]:
    from hardened.evaluate.compare import DEFAULT_BUDGETS, compare_attacks, default_attack_suite
    from hardened.report.plots import plot_success_curves

    budget = ctx.budget
    x, y = ctx.test.x[: budget.n_guided], ctx.test.y[: budget.n_guided]
    eps = max(budget.eps_linf)
    pixels = int(x[0].numel())
    max_pixels = max(4, min(100, pixels // 8))  # 98 of MNIST's 784 pixels
    steps = 2 * budget.pgd_steps
    suite = default_attack_suite(eps=eps, steps=steps, step_size=2.5 * eps / steps, seed=ctx.seed,
                                 max_pixels=max_pixels, pixels_per_step=max(1, max_pixels // 25))
    comparison = compare_attacks(ctx.model, x, y, suite)
    figures = {}
    for norm, label in (("l0", "L0"), ("l2", "L2"), ("linf", "Linf")):
        path = plot_success_curves(comparison.curves(norm), ctx.figure(f"guided_{norm}"),
                                   f"Attack success against {label} norm")
        figures[f"Success rate against {label} norm"] = path.name
    table = comparison.table()
    rows = []
    for run in comparison.runs:
        medians = run.median_norms()
        rows.append([
            run.label, _pct(run.success_rate),
            *[_pct(table[run.label][norm][f"{b:g}"]) for norm in ("l0", "l2") for b in DEFAULT_BUDGETS[norm][1:3]],
            *[("n/a" if medians[k] is None else f"{medians[k]:.3g}") for k in ("l0", "l2", "linf")],
            f"{run.gradient_count / max(run.n, 1):.1f}",
        ])
    columns = ["attack", "success",
               *[f"≤ {b:g} {norm.upper()}" for norm in ("l0", "l2") for b in DEFAULT_BUDGETS[norm][1:3]],
               "median L0", "median L2", "median Linf", "gradients/image"]
    by_label = {r.label: r for r in comparison.runs}
    summary = ""
    if "I-FGSM" in by_label and "LRP-grad" in by_label:
        ifgsm, guided = by_label["I-FGSM"], by_label["LRP-grad"]
        l2_i, l2_g = ifgsm.median_norms()["l2"], guided.median_norms()["l2"]
        summary = (
            f"Explanation-guided LRP-grad fools {100 * guided.success_rate:.0f}% of the correctly classified images "
            f"(median L2 {l2_g:.2f})" if l2_g is not None else
            f"Explanation-guided LRP-grad fools {100 * guided.success_rate:.0f}% of the correctly classified images"
        ) + (
            f" against {100 * ifgsm.success_rate:.0f}% for I-FGSM (median L2 {l2_i:.2f})."
            if l2_i is not None else f" against {100 * ifgsm.success_rate:.0f}% for I-FGSM."
        )
    return {
        "summary": summary,
        "comparison": comparison.to_dict(),
        "tables": [_table(f"Attacks on {comparison.n} correctly classified images (Linf budget {eps:g} for the "
                          "gradient attacks)", columns, rows)],
    }, figures


def _stage_certify(ctx: AuditContext) -> tuple[dict[str, Any], dict[str, str]]:
    from hardened.certify import certify_dataset, certify_ibp, plot_certified_accuracy, summarize

    budget = ctx.budget
    x, y = ctx.test.x[: budget.n_certify], ctx.test.y[: budget.n_certify]
    run = certify_dataset(ctx.model, x, y, sigma=budget.smoothing_sigma, n0=100, n=budget.smoothing_n,
                          alpha=0.001, seed=ctx.seed)
    summary = summarize(run.records, name=f"sigma={budget.smoothing_sigma:g}")
    path = plot_certified_accuracy([(f"randomized smoothing, sigma={budget.smoothing_sigma:g}", run.records)],
                                   ctx.figure("certified"), "Certified accuracy against L2 radius")
    tables = [_table(
        f"Randomized smoothing on {summary.num_samples} images (sigma {budget.smoothing_sigma:g}, n={budget.smoothing_n:,}, "
        "alpha 0.001)",
        ["L2 radius", *[f"{r:g}" for r in summary.radii[:8]]],
        [["certified accuracy", *[_pct(a) for a in summary.certified_accuracy[:8]]]],
    ), _table("Smoothing summary", ["correctly certified", "average radius (correct)", "abstained"],
              [[summary.correct_certified, "n/a" if summary.average_radius_correct is None
                else f"{summary.average_radius_correct:.3f}", _pct(summary.abstention_rate)]])]
    data: dict[str, Any] = {"smoothing": summary.to_dict()}
    notes = []
    try:
        ibp = certify_ibp(ctx.model, ctx.test.x[: budget.n_eval], ctx.test.y[: budget.n_eval], eps=budget.ibp_eps)
        rate = float(ibp.certified.float().mean())
        data["ibp"] = {"eps": budget.ibp_eps, "norm": "linf", "certified_fraction": rate, "n": len(ibp.certified)}
        tables.append(_table("Interval bound propagation", ["Linf eps", "images", "certified"],
                             [[f"{budget.ibp_eps:g}", len(ibp.certified), _pct(rate)]]))
        ibp_text = f" IBP proves {100 * rate:.0f}% of the images robust at Linf eps={budget.ibp_eps:g}."
    except HardenedError as error:
        data["ibp"] = {"skipped": str(error)}
        notes.append(f"IBP skipped: {error}")
        ibp_text = ""
    radius = summary.average_radius_correct
    data["summary"] = (
        f"Randomized smoothing (sigma {budget.smoothing_sigma:g}, n={budget.smoothing_n:,}) certifies "
        f"{summary.correct_certified} of {summary.num_samples} images correctly"
        + (f" with an average L2 radius of {radius:.2f}." if radius is not None else ".") + ibp_text
    )
    data["tables"] = tables
    data["notes"] = notes
    return data, {"Certified accuracy (randomized smoothing)": path.name}


GUARD_SCORES = ("softmax", "energy", "mahalanobis", "vae")
GUARD_PROBES = ("noise", "inverted", "natural")


def _stage_guard(ctx: AuditContext) -> tuple[dict[str, Any], dict[str, str]]:
    from hardened.guard import GuardedClassifier, make_score
    from hardened.guard.adaptive import attack_guard
    from hardened.guard.evaluation import evaluate_guard
    from hardened.guard.probes import load_probe
    from hardened.report.plots import plot_score_histograms

    budget = ctx.budget
    train = ctx.splits.train.to(ctx.device)
    n_fit = min(budget.n_guard_fit, len(train) * 3 // 4)
    fit_data, held_out = train.head(n_fit), train.subset(slice(n_fit, n_fit + max(len(train) - n_fit, 0)))
    if len(held_out) < 20:
        raise StageSkipped(f"too few training images ({len(train)}) to fit and calibrate a guard")
    id_x = ctx.test.x[: budget.n_guard_eval]
    probes = {name: load_probe(name, id_x, len(id_x), seed=ctx.seed).to(ctx.device) for name in GUARD_PROBES}
    evaluations = {}
    guards = {}
    for name in GUARD_SCORES:
        options: dict[str, Any] = {
            "vae": {"epochs": budget.guard_epochs, "seed": ctx.seed},
            "mahalanobis": {"layers": "all"},
        }.get(name, {})
        score = make_score(name, None if name == "vae" else ctx.model, **options).fit(fit_data)
        guard = GuardedClassifier(ctx.model, score)
        guard.calibrate(held_out.x, fpr=0.05)
        guards[name] = guard
        evaluations[name] = evaluate_guard(guard, id_x, probes, id_name=ctx.test.name)
    mean_auroc = {n: sum(r.auroc for r in e.ood) / len(e.ood) for n, e in evaluations.items()}
    best = max(mean_auroc, key=lambda n: mean_auroc[n])
    best_eval = evaluations[best]
    x, y = ctx.test.x[: budget.n_guided], ctx.test.y[: budget.n_guided]
    adaptive = attack_guard(guards[best], x, y, eps=budget.headline_linf * 2, steps=budget.pgd_steps, seed=ctx.seed)
    path = plot_score_histograms(best_eval, ctx.figure("guard_scores"))
    score_rows = [
        [name, f"{e.threshold:.4g}", _pct(e.id_fpr),
         *[f"{_pct(r.fnr)} / {r.auroc:.3f}" for r in e.ood], f"{mean_auroc[name]:.3f}"]
        for name, e in evaluations.items()
    ]
    over_rows = [[r.name, *[_pct(v) for v in r.overconfident.values()]] for r in best_eval.ood]
    levels = list(best_eval.ood[0].overconfident) if best_eval.ood else []
    attack_rows = [[a.attack, _pct(a.success_rate), _pct(a.detection_rate if a.detection_rate == a.detection_rate else None),
                    _pct(a.evasion_rate)] for a in adaptive.attacks]
    tables = [
        _table("Reliability scores: threshold at 5% false positives on held-out training images; "
               "per probe false-negative rate / AUROC",
               ["score", "threshold", "test FPR", *GUARD_PROBES, "mean AUROC"], score_rows),
        _table("Overconfidence of the bare classifier on out-of-distribution probes (share above confidence)",
               ["probe", *[f"> {lv}" for lv in levels]], over_rows),
        _table(f"Attacks on the guarded classifier ({best} score, Linf eps {adaptive.eps:g}, {adaptive.n} images)",
               ["attack", "label changed", "detected by the guard", "adversarial and accepted"], attack_rows),
    ]
    worst_fnr = max(r.fnr for r in best_eval.ood)
    evasion = {a.attack: a.evasion_rate for a in adaptive.attacks}
    summary = (
        f"The best guard ({best} score, 5% false positives) lets through at most {100 * worst_fnr:.1f}% of the "
        f"out-of-distribution probes; under an adaptive attack that also keeps the score low, "
        f"{100 * max(evasion.values()):.0f}% of the images become adversarial and accepted."
    )
    return {
        "summary": summary,
        "best_score": best,
        "evaluations": {n: e.to_dict() for n, e in evaluations.items()},
        "adaptive_attack": adaptive.to_dict(),
        "tables": tables,
    }, {f"Score distributions ({best})": path.name}


STAGES: tuple[tuple[str, str, StageFunction, float], ...] = (
    ("clean", "Clean accuracy and calibration", _stage_clean, 1.0),
    ("robustness", "Robustness against gradient attacks", _stage_robustness, 6.0),
    ("explain_attacks", "Explanation-guided attacks", _stage_explain_attacks, 3.0),
    ("gallery", "Example gallery", _stage_gallery, 1.0),
    ("certify", "Certified robustness", _stage_certify, 2.0),
    ("guard", "Guard against unreliable inputs", _stage_guard, 3.0),
    ("sanity", "Sanity checks for gradient masking", _stage_sanity, 5.0),
)


# --------------------------------------------------------------------------- pipeline


def check_output_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Refuse an existing, non-empty folder that is not a previous audit (so nothing is clobbered)."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} exists and is a file; give a folder for the report")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "audit.json").is_file() and not (folder / "stages").is_dir():
        raise ConfigError(
            f"--out {folder} exists and is not a previous audit (no audit.json); choose a new or empty "
            "folder so that nothing in it is overwritten"
        )
    return folder


def check_budget(budget: str | AuditBudget) -> AuditBudget:
    """The named budget (or a custom ``AuditBudget`` as is); an unknown name is a ConfigError."""
    if isinstance(budget, AuditBudget):
        return budget
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}: use one of {', '.join(BUDGETS)}")
    return BUDGETS[budget]


def _model_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _stage_key(model_digest: str, data: Dataset, budget: AuditBudget, seed: int, name: str) -> str:
    text = json.dumps([AUDIT_SCHEMA_VERSION, model_digest, data.name, len(data), asdict(budget), seed, name])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cached(path: Path, key: str, figures_dir: Path) -> StageResult | None:
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("key") != key or stored.get("result", {}).get("status") != "ok":
        return None
    result = StageResult(**stored["result"])
    if not all((figures_dir / name).is_file() for name in result.figures.values()):
        return None
    return result


def _verdict(stages: dict[str, StageResult]) -> str:
    parts = []
    clean = stages.get("clean")
    if clean and clean.status == "ok":
        parts.append(f"The model classifies {100 * clean.data['accuracy']:.1f}% of the test images correctly "
                     f"(expected calibration error {100 * clean.data['ece']:.1f}%).")
    robust = stages.get("robustness")
    if robust and robust.status == "ok":
        h = robust.data["headline"]
        parts.append(
            f"Under PGD attack its accuracy falls to {100 * h['linf_accuracy']:.1f}% at Linf eps={h['linf_eps']:g}, "
            f"{100 * h['linf_max_accuracy']:.1f}% at eps={h['linf_max_eps']:g}, and {100 * h['l2_accuracy']:.1f}% at "
            f"L2 eps={h['l2_eps']:g}; half of the images are fooled by a Linf change of "
            f"{robust.data['minimal_linf_median']:.3g} or less."
        )
    for name in ("explain_attacks", "certify", "guard"):
        stage = stages.get(name)
        if stage and stage.status == "ok" and stage.data.get("summary"):
            parts.append(stage.data["summary"])
    sanity = stages.get("sanity")
    if sanity and sanity.status == "ok":
        failed = [c["name"] for c in sanity.data["checks"] if not c["passed"]]
        parts.append(
            f"All {sanity.data['total']} gradient-masking checks pass, so these attack numbers can be trusted."
            if not failed
            else f"{len(failed)} of {sanity.data['total']} gradient-masking checks are flagged ({', '.join(failed)}): "
            "treat the robust accuracies above as upper bounds."
        )
    not_ok = [s.title for s in stages.values() if s.status != "ok"]
    if not_ok:
        parts.append(f"Not measured: {', '.join(not_ok)} (see their sections).")
    return " ".join(parts)


def run_audit(
    model: nn.Module,
    splits: Splits,
    *,
    out_dir: str | os.PathLike[str],
    budget: str | AuditBudget = "quick",
    seed: int = 0,
    model_name: str = "model",
    progress: bool = False,
    stages: tuple[tuple[str, str, StageFunction, float], ...] | None = None,
) -> AuditResult:
    """Audit ``model`` on ``splits`` and write ``index.html``, ``audit.json`` and PNGs to ``out_dir``.

    The model is never modified; its train/eval mode is restored by every stage.
    """
    plan = check_budget(budget)
    folder = check_output_dir(out_dir)
    test = splits.test
    if len(test) == 0:
        raise InputError(f"{test.name} has no test images to audit")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    figures_dir = folder / "figures"
    stage_dir = folder / "stages"
    figures_dir.mkdir(parents=True, exist_ok=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    ctx = AuditContext(model, splits, test.to(device), plan, seed, figures_dir, device)
    digest = _model_digest(model)
    chosen = stages if stages is not None else all_stages()
    results: dict[str, StageResult] = {}
    start = time.perf_counter()
    total = sum(weight for *_, weight in chosen)
    with progress_bar(total, "audit", progress) as bar:
        for name, title, function, weight in chosen:
            bar.describe(f"audit: {title.lower()}")
            key = _stage_key(digest, test, plan, seed, name)
            cache = stage_dir / f"{name}.json"
            cached = _cached(cache, key, figures_dir)
            if cached is not None:
                results[name] = cached
                _restore_shared(ctx, cached)
                bar.advance(weight)
                continue
            results[name] = _run_stage(ctx, name, title, function)
            write_json(cache, {"key": key, "result": results[name].to_dict()})
            bar.advance(weight)
    result = AuditResult(
        schema_version=AUDIT_SCHEMA_VERSION, model=model_name, data=splits.test.name, budget=plan.name,
        seed=seed, verdict=_verdict(results), stages=tuple(results.values()),
        seconds=time.perf_counter() - start,
    )
    from hardened.report.html import render_audit_html

    write_json(folder / "audit.json", result.to_dict())
    from hardened._util.atomic import write_text

    write_text(folder / "index.html", render_audit_html(result, figures_dir))
    return result


def _restore_shared(ctx: AuditContext, stage: StageResult) -> None:
    """Rebuild what later stages need from a cached stage."""
    if stage.name == "robustness":
        for sweep in stage.data["sweeps"]:
            if sweep["attack"] == "pgd":
                ctx.shared[f"pgd_{sweep['norm']}"] = SweepResult.from_dict(sweep)


def _run_stage(ctx: AuditContext, name: str, title: str, function: StageFunction) -> StageResult:
    start = time.perf_counter()
    modes = [(m, m.training) for m in ctx.model.modules()]
    try:
        data, figures = function(ctx)
        status, message = "ok", ""
    except StageSkipped as error:
        data, figures, status, message = {}, {}, "skipped", str(error)
    except HardenedError as error:
        data, figures, status, message = {}, {}, "skipped", f"{type(error).__name__}: {error}"
    except Exception as error:  # a bug in one stage must not lose the rest of the audit
        last = traceback.extract_tb(error.__traceback__)[-1]
        data, figures, status = {}, {}, "failed"
        message = f"{type(error).__name__}: {error} (at {Path(last.filename).name}:{last.lineno})"
    finally:
        for module, mode in modes:
            module.training = mode
    return StageResult(name, title, status, time.perf_counter() - start, data, figures, message)


def all_stages() -> tuple[tuple[str, str, StageFunction, float], ...]:
    """The stages of a full audit, in report order."""
    return STAGES



def default_model_path(seed: int = 0) -> Path:
    """Where the default audit model lives: ``$HARDENED_CACHE_DIR`` or ``~/.cache/hardened``."""
    base = os.environ.get("HARDENED_CACHE_DIR")
    root = Path(base).expanduser() if base else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hardened"
    return root / "models" / f"lenet-mnist-5k-seed{seed}.safetensors"


def default_model(splits: Splits, seed: int = 0, progress: bool = False, epochs: int = 4) -> tuple[nn.Module, Path]:
    """A ``lenet`` trained on ``splits.train`` (mnist-5k), reused from the user cache when present."""
    from hardened.models import arch_kwargs_for, build_model, load_model, save_model
    from hardened.train import TrainConfig, train

    path = default_model_path(seed)
    if path.is_file():
        try:
            return load_model(path).model, path
        except HardenedError:
            pass  # a corrupt cache entry is retrained below and replaced atomically
    kwargs = arch_kwargs_for(splits.train)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = build_model("lenet", **kwargs)
    torch.random.set_rng_state(generator_state)
    record = train(model, splits.train, config=TrainConfig(epochs=epochs, seed=seed),
                   test_data=splits.test, progress=progress)
    save_model(model, path, arch="lenet", arch_kwargs=kwargs, input_shape=splits.train.input_shape,
               classes=splits.train.classes, training={**record.to_dict(), "data": splits.train.name})
    return model.eval(), path
