"""Certified robustness: randomized smoothing (Cohen et al. 2019, arXiv:1902.02918) on a subset,
and interval bound propagation (Gowal et al. 2018, arXiv:1810.12715) where the layers allow.

Smoothing needs only the model's outputs, so it runs on every format (an outputs-only model
through its queries); IBP needs the layers (an ``nn.Sequential`` of known ones) and is otherwise
skipped with the reason, the smoothing part standing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hardened.audit.stage import (
    Stage,
    StageContext,
    StageOutput,
    StageSkipped,
    Summary,
    register_stage,
)
from hardened.audit.tables import Table, pct
from hardened.errors import HardenedError

SMOOTHING_N0 = 100  # samples to pick the class
SMOOTHING_ALPHA = 0.001


@dataclass(frozen=True)
class CertifyBudget:
    n_certify: int
    smoothing_n: int
    smoothing_sigma: float
    n_eval: int
    ibp_eps: float


@dataclass(frozen=True)
class CertifySummary(Summary):
    sigma: float
    n: int
    correct_certified: int
    num_samples: int
    average_radius: float | None
    ibp_eps: float
    ibp_certified: float | None  # None: IBP could not bound this model

    def sentence(self) -> str:
        text = (f"Randomized smoothing (sigma {self.sigma:g}, n={self.n:,}) certifies "
                f"{self.correct_certified} of {self.num_samples} images correctly")
        text += f" with an average L2 radius of {self.average_radius:.2f}." if self.average_radius is not None else "."
        if self.ibp_certified is not None:
            text += f" IBP proves {100 * self.ibp_certified:.0f}% of the images robust at Linf eps={self.ibp_eps:g}."
        return text


@register_stage
class CertifyStage(Stage[CertifyBudget]):
    """Smoothing certificates with their certified-accuracy curve, and the IBP certified share."""

    name = "certify"
    title = "Certified robustness"
    position = 50
    budget_type = CertifyBudget
    summary_type = CertifySummary
    weight = 2.0
    sharded = True  # the smoothing certificates are split over the ranks (shards in the work folder)

    def run(self, ctx: StageContext[CertifyBudget]) -> StageOutput:
        from hardened.certify import (
            certify_dataset,
            certify_ibp,
            plot_certified_accuracy,
            summarize,
        )
        from hardened.certify.runs import certify_sharded

        budget = ctx.budget
        x, y = ctx.test.x[: budget.n_certify], ctx.test.y[: budget.n_certify]
        settings: dict[str, Any] = {"sigma": budget.smoothing_sigma, "n0": SMOOTHING_N0, "n": budget.smoothing_n,
                    "alpha": SMOOTHING_ALPHA, "seed": ctx.seed}
        if ctx.work_dir is None:
            run = certify_dataset(ctx.model, x, y, **settings)
        else:  # resumable, and split over the ranks of a torchrun job (rank 0 gets the merged run)
            sharded = certify_sharded(ctx.model, x, y, log_path=ctx.work_dir / "smoothing" / "samples.jsonl", **settings)
            if sharded is None:
                return StageOutput()  # another rank: rank 0 reports
            run = sharded
        summary = summarize(run.records, name=f"sigma={budget.smoothing_sigma:g}")
        path = plot_certified_accuracy([(f"randomized smoothing, sigma={budget.smoothing_sigma:g}", run.records)],
                                       ctx.figure("certified"), "Certified accuracy against L2 radius")
        tables = [Table.of(
            f"Randomized smoothing on {summary.num_samples} images (sigma {budget.smoothing_sigma:g}, "
            f"n={budget.smoothing_n:,}, alpha {SMOOTHING_ALPHA:g})",
            ["L2 radius", *[f"{r:g}" for r in summary.radii[:8]]],
            [["certified accuracy", *[pct(a) for a in summary.certified_accuracy[:8]]]],
        ), Table.of("Smoothing summary", ["correctly certified", "average radius (correct)", "abstained"],
                    [[summary.correct_certified, "n/a" if summary.average_radius_correct is None
                      else f"{summary.average_radius_correct:.3f}", pct(summary.abstention_rate)]])]
        data: dict[str, Any] = {"smoothing": summary.to_dict()}
        notes = []
        if ctx.access.clipped:
            notes.append("The endpoint takes images in [0, 1] only, so the noisy copies are clipped into [0, 1] "
                         "before they are sent: the certificates are those of the smoothed f∘clip (Cohen et al.'s "
                         "guarantee holds for any base classifier).")
        rate: float | None = None
        try:
            if ctx.access.outputs_only:
                raise StageSkipped(f"{ctx.access.lrp}, so its layers cannot be bounded")
            ibp = certify_ibp(ctx.model, ctx.test.x[: budget.n_eval], ctx.test.y[: budget.n_eval], eps=budget.ibp_eps,
                              batch_size=ctx.batch_size)
            rate = float(ibp.certified.float().mean())
            data["ibp"] = {"eps": budget.ibp_eps, "norm": "linf", "certified_fraction": rate, "n": len(ibp.certified)}
            tables.append(Table.of("Interval bound propagation", ["Linf eps", "images", "certified"],
                                   [[f"{budget.ibp_eps:g}", len(ibp.certified), pct(rate)]]))
        except HardenedError as error:  # IBP cannot bound some layers: the smoothing part stands
            data["ibp"] = {"skipped": str(error)}
            notes.append(f"IBP skipped: {error}. The smoothing certificates above stand (they need only outputs).")
        verdict = CertifySummary(budget.smoothing_sigma, budget.smoothing_n, summary.correct_certified,
                                 summary.num_samples, summary.average_radius_correct, budget.ibp_eps, rate)
        return StageOutput(summary=verdict, tables=tuple(tables), notes=tuple(notes), data=data,
                           figures={"Certified accuracy (randomized smoothing)": path})
