"""Example gallery: originals, PGD adversarials, perturbations and LRP heatmaps of both.

Where LRP cannot apply the heatmaps are gradient×input; an outputs-only model gets Square
(score-based) adversarials and no heatmaps (it has no gradients). A note says which and why."""

from __future__ import annotations

from dataclasses import dataclass

from hardened._util.batching import predict_logits
from hardened.attacks.base import Attack
from hardened.audit.access import SQUARE_QUERIES, substitute_note
from hardened.audit.stage import Stage, StageContext, StageOutput, StageSkipped, register_stage
from hardened.report.audit_plots import plot_gallery

GALLERY_POOL = 200  # the first test images searched for correctly classified ones
FALLBACK = "gradient-x-input"  # the heatmaps where LRP cannot apply


@dataclass(frozen=True)
class GalleryBudget:
    n_gallery: int
    headline_linf: float
    pgd_steps: int


@register_stage
class GalleryStage(Stage[GalleryBudget]):
    """Correctly classified test images attacked at twice the headline Linf eps, with LRP maps."""

    name = "gallery"
    title = "Example gallery"
    position = 40
    budget_type = GalleryBudget
    weight = 1.0

    def run(self, ctx: StageContext[GalleryBudget]) -> StageOutput:
        from hardened.attacks import PGD, make_attack
        from hardened.explain import explain_images

        budget = ctx.budget
        logits = predict_logits(ctx.model, ctx.test.x[:GALLERY_POOL], batch_size=ctx.batch_size)
        correct = (logits.argmax(1).cpu() == ctx.test.y[:GALLERY_POOL]).nonzero().squeeze(1)[: budget.n_gallery]
        if len(correct) == 0:
            raise StageSkipped("no correctly classified test image to show")
        x, y = ctx.test.x[correct], ctx.test.y[correct]
        eps = budget.headline_linf * 2
        access, notes = ctx.access, []
        attack: Attack
        if access.gradients:
            attack = PGD(eps=eps, steps=budget.pgd_steps, seed=ctx.seed, early_stop=False)
        else:
            attack = make_attack("square", eps=eps, norm="linf", queries=SQUARE_QUERIES, seed=ctx.seed)
            notes.append(substitute_note("PGD and heatmaps", access.lrp or "", f"Square (score-based, {SQUARE_QUERIES} "
                                         "queries per image) adversarials shown without heatmaps"))
        result = attack(ctx.model, x, y)
        probs = predict_logits(ctx.model, x, batch_size=ctx.batch_size).softmax(1)
        classes = ctx.test.classes
        rows = {"original": x, "adversarial": result.x_adv, "perturbation": result.x_adv - x}
        titles = {
            "original": [f"{classes[int(p)]} {100 * float(c):.0f}%" for p, c in zip(probs.argmax(1), probs.max(1).values, strict=True)],
            "adversarial": [f"{classes[int(p)]} {100 * float(c):.0f}%" for p, c in zip(result.pred_adv, result.confidence_adv, strict=True)],
            "perturbation": [f"±{eps:g}"] * len(x),
        }
        method = "lrp" if access.lrp is None else FALLBACK
        if access.gradients:
            label = "LRP" if method == "lrp" else "gradient×input"
            if access.lrp is not None:
                notes.append(substitute_note("LRP", access.lrp, "gradient explanations used (gradient×input heatmaps)"))
            relevance_clean = explain_images(ctx.model, x, target=y, method=method, seed=ctx.seed,
                                             batch_size=ctx.batch_size).relevance
            relevance_adv = explain_images(ctx.model, result.x_adv, target=result.pred_adv, method=method,
                                           seed=ctx.seed, batch_size=ctx.batch_size).relevance
            rows |= {f"{label} (original)": relevance_clean, f"{label} (adversarial)": relevance_adv}
            titles |= {
                f"{label} (original)": [f"for {classes[int(t)]}" for t in y],
                f"{label} (adversarial)": [f"for {classes[int(t)]}" for t in result.pred_adv],
            }
        diverging = [name for name in rows if name not in ("original", "adversarial")]
        path = plot_gallery(rows, titles, ctx.figure("gallery"), diverging=diverging)
        return StageOutput(figures={f"Examples at Linf eps={eps:g}": path}, notes=tuple(notes), data={
            "eps": eps, "norm": "linf", "indices": correct.tolist(), "attack": attack.name,
            "explanation": method if access.gradients else None,
            "success": result.success.tolist(), "rows": list(rows),
        })
