"""The robustness section of an outputs-only model (no gradients): score-based and transfer attacks.

Per norm and eps: the cascade of the preset's gradient-free members (Square, Andriushchenko et
al. 2020, arXiv:1912.00049; the quick preset has none, so Square with ``SQUARE_QUERIES``) on the
model's scores, and MI-FGSM (Dong et al. 2018, arXiv:1710.06081) crafted on a white-box
surrogate and sent to the model (Papernot et al. 2016). A point counts as robust when neither
broke it (the per-sample worst case; an upper bound). The forward-only masking checks
(randomness, probability outputs) run; the zero-gradient check cannot. The minimal Linf
perturbation is bisected with Square. Every image sent to the model is counted.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from hardened._util.batching import predict_logits
from hardened.attacks import ATTACKS
from hardened.audit.access import SQUARE_QUERIES, substitute_note
from hardened.audit.stage import StageContext, StageOutput
from hardened.audit.stages.robustness import RobustnessBudget, RobustnessSummary
from hardened.audit.tables import Table, pct
from hardened.evaluate.cascade import CascadeStep, CascadeSweep, cascade_sweep, resolve_steps
from hardened.evaluate.masking import probability_check, randomness_check
from hardened.evaluate.sweeps import SweepResult, minimal_eps
from hardened.evaluate.transfer import craft_transfer

__all__ = ["SQUARE_QUERIES", "score_based_robustness"]

MINIMAL_QUERIES = 100  # per image and bisection round
MINIMAL_STEPS = 7  # bisection rounds (FMN, the minimal stage's attack, needs gradients)
TRANSFER_ATTACK = "mifgsm"


def _members(preset: str) -> tuple[CascadeStep, ...]:
    """The preset's gradient-free members, or Square with ``SQUARE_QUERIES``."""
    free = tuple(s for s in resolve_steps(preset) if not ATTACKS.get(s.attack).needs_gradients)
    return free or (CascadeStep("square", {"queries": SQUARE_QUERIES}),)


def _transfer_broken(ctx: StageContext[Any], x: Tensor, y: Tensor, eps: float, norm: str, steps: int) -> Tensor:
    """bool (N,): the points whose MI-FGSM example, crafted on the surrogate, fools the model."""
    assert ctx.surrogate is not None
    x_adv = craft_transfer(ctx.surrogate, x, y, eps=eps, attack=TRANSFER_ATTACK, norm=norm, steps=steps,
                           step_size=eps / steps, early_stop=False, seed=ctx.seed)
    return (predict_logits(ctx.model, x_adv).argmax(1).to(y.device) != y).cpu()


def _sweeps(ctx: StageContext[Any], x: Tensor, y: Tensor, norm: str, eps_values: tuple[float, ...],
            members: tuple[CascadeStep, ...], steps: int) -> tuple[CascadeSweep, list[SweepResult], list[list[Any]]]:
    """The score-based cascade, the transfer and worst-case sweeps, and per-eps table rows."""
    state = None if ctx.work_dir is None else ctx.work_dir / "cascade" / norm
    cascade = cascade_sweep(ctx.model, x, y, eps_values=eps_values, norm=norm, preset=members, masking="off",
                            seed=ctx.seed, state_dir=state, batch_size=ctx.budget.cascade_batch)
    clean = (predict_logits(ctx.model, x).argmax(1).cpu() == y.cpu())
    transfer, worst, rows = [float(clean.float().mean())], [float(clean.float().mean())], []
    results = iter(cascade.results)
    for eps in cascade.sweep.eps[1:]:
        robust = next(results).robust.cpu()
        if ctx.surrogate is not None:
            broken = _transfer_broken(ctx, x, y, eps, norm, steps)
            transfer.append(float((clean & ~broken).float().mean()))
            robust = robust & ~broken
        worst.append(float(robust.float().mean()))
    n = int(len(x))
    sweeps = [cascade.sweep]
    if ctx.surrogate is not None:
        sweeps.append(SweepResult(f"transfer:{TRANSFER_ATTACK}", norm, cascade.sweep.eps, transfer, n, 0.0,
                                  {"steps": steps, "source": "surrogate"}))
    sweeps.append(SweepResult("worst case", norm, cascade.sweep.eps, worst, n, cascade.sweep.seconds))
    for i, eps in enumerate(cascade.sweep.eps):
        rows.append([f"{eps:g}", pct(cascade.sweep.robust_accuracy[i]),
                     pct(transfer[i]) if ctx.surrogate is not None else "n/a", pct(worst[i])])
    return cascade, sweeps, rows


def score_based_robustness(ctx: StageContext[RobustnessBudget]) -> StageOutput:
    """The robustness section for ``ctx.access.outputs_only`` (see the module docstring)."""
    from hardened.report.audit_plots import plot_minimal_eps
    from hardened.report.plots import plot_sweeps

    budget = ctx.budget
    steps = budget.pgd_steps
    members = _members(budget.cascade_preset)
    x, y = ctx.test.x[: budget.n_eval], ctx.test.y[: budget.n_eval]
    cascades: dict[str, CascadeSweep] = {}
    sweeps: dict[str, list[SweepResult]] = {}
    rows: dict[str, list[list[Any]]] = {}
    for norm, eps in (("linf", budget.eps_linf), ("l2", budget.eps_l2)):
        cascades[norm], sweeps[norm], rows[norm] = _sweeps(ctx, x, y, norm, eps, members, steps)
    probe = x[: 64]
    checks = [randomness_check(ctx.model, probe), probability_check(ctx.model, probe)]
    masking = [{"name": c.name, "fired": c.fired, "fired_at": ["outputs"] if c.fired else [], "answer": c.answer,
                "meaning": c.meaning, "numbers": c.numbers} for c in checks]
    xm, ym = ctx.test.x[: budget.n_minimal], ctx.test.y[: budget.n_minimal]
    eps_max = max(budget.eps_linf) * 2
    minimal = minimal_eps(ctx.model, xm, ym, eps_max=eps_max, attack="square", norm="linf",
                          steps=MINIMAL_STEPS, queries=MINIMAL_QUERIES, seed=ctx.seed)
    fooled = len([e for e in minimal.eps if math.isfinite(e)]) / max(len(minimal.eps), 1)
    labels = ", ".join(m.label for m in members)
    transfer = "" if ctx.surrogate is None else " and transfer from the surrogate model"
    surrogate = "no surrogate (transfer not run)" if ctx.surrogate is None else f"{TRANSFER_ATTACK} ({steps} steps) on the surrogate"
    figures = {
        f"Robust accuracy, {label} (upper bounds)": plot_sweeps(sweeps[norm], ctx.figure(f"robust_{norm}"),
                                                                f"Robust accuracy against {label} eps")
        for norm, label in (("linf", "Linf"), ("l2", "L2"))
    }
    figures["Minimal Linf perturbations"] = plot_minimal_eps(minimal.eps, "linf", ctx.figure("minimal_linf"), eps_max,
                                                             minimal.median())
    tables = [
        Table.of(f"Accuracy under attack, {label} ({len(x)} images; upper bounds): score-based cascade ({labels}), "
                 f"transfer ({surrogate}), and the per-image worst case",
                 ["eps", "score-based", "transfer", "worst case"], rows[norm])
        for norm, label in (("linf", "Linf"), ("l2", "L2"))
    ]
    tables += [
        Table.of(f"Which attack broke the points, {label} (queries: images sent to the model)",
                 ["eps", "robust (score-based)", "attack", "attacked", "broke", "queries"],
                 [[f"{r.eps:g}", pct(r.robust_accuracy), c.label, c.attacked, c.broken, c.queries]
                  for r in cascades[norm].results for c in r.contributions])
        for norm, label in (("linf", "Linf"), ("l2", "L2"))
    ]
    tables.append(Table.of("Masking checks on the outputs (the zero-gradient check needs gradients)",
                           ["check", "result", "what it means"],
                           [[m["name"], "fired" if m["fired"] else "pass", m["meaning"]] for m in masking]))
    tables.append(Table.of(
        f"Minimal Linf perturbation ({len(minimal.eps)} images, Square bisection with {MINIMAL_QUERIES} queries "
        f"per round, to {eps_max / 2**MINIMAL_STEPS:.2g})",
        ["median", f"fooled within eps ≤ {eps_max:g}"], [[f"{minimal.median():.3g}", pct(fooled)]]))
    notes = [
        substitute_note("Gradient attacks (FGSM, APGD) and the zero-gradient check", ctx.access.lrp or "",
                        f"the score-based cascade ({labels}){transfer} runs instead"),
        "Every robust accuracy above is an upper bound: the share of points that no attack broke. Without "
        "gradients the attacks are weaker than white-box ones, so the true robust accuracy may be much lower.",
    ]
    if ctx.surrogate is None:
        notes.append("No surrogate model was given (--surrogate MODEL, with the same input shape and classes), "
                     "so the transfer attack did not run.")
    fired = tuple(str(c.name) for c in checks if c.fired)
    worst = {norm: dict(zip(s[-1].eps, s[-1].robust_accuracy, strict=True)) for norm, s in sweeps.items()}
    summary = RobustnessSummary(
        linf_eps=budget.headline_linf, linf_accuracy=worst["linf"][budget.headline_linf],
        linf_max_eps=max(budget.eps_linf), linf_max_accuracy=worst["linf"][max(budget.eps_linf)],
        l2_eps=budget.headline_l2, l2_accuracy=worst["l2"][budget.headline_l2],
        minimal_linf_median=minimal.median(), preset=f"score-based ({labels}){'' if ctx.surrogate is None else ' and transfer'}",
        masking_fired=fired,
        countermeasures=(),
    )
    return StageOutput(summary=summary, tables=tuple(tables), figures=figures, notes=tuple(notes), data={
        "sweeps": [s.to_dict() for s in sweeps["linf"] + sweeps["l2"]],
        "preset": budget.cascade_preset,
        "members": [m.label for m in members],
        "outputs_only": True,
        "transfer": None if ctx.surrogate is None else {"attack": TRANSFER_ATTACK, "steps": steps},
        "cascades": {norm: [r.to_dict() for r in c.results] for norm, c in cascades.items()},
        "masking": masking,
        "countermeasures": [],
        "resumed": sum(r.resumed for c in cascades.values() for r in c.results),
        "minimal_linf": minimal.to_dict(),
        "minimal_linf_attack": f"square(queries={MINIMAL_QUERIES})",
        "minimal_linf_fooled_fraction": fooled,
    })

