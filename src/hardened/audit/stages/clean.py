"""Clean accuracy and calibration (expected calibration error, reliability diagram)."""

from __future__ import annotations

from dataclasses import dataclass

from hardened.audit.stage import NoBudget, Stage, StageContext, StageOutput, Summary, register_stage
from hardened.audit.tables import Table, pct
from hardened.evaluate.calibration import calibration
from hardened.report.audit_plots import plot_reliability


@dataclass(frozen=True)
class CleanSummary(Summary):
    accuracy: float
    ece: float

    def sentence(self) -> str:
        return (f"The model classifies {100 * self.accuracy:.1f}% of the test images correctly "
                f"(expected calibration error {100 * self.ece:.1f}%).")


@register_stage
class CleanStage(Stage[NoBudget]):
    """Accuracy and calibration on the whole test split (no budget knob)."""

    name = "clean"
    title = "Clean accuracy and calibration"
    position = 10
    summary_type = CleanSummary
    weight = 1.0

    def run(self, ctx: StageContext[NoBudget]) -> StageOutput:
        result = calibration(ctx.model, ctx.test.x, ctx.test.y, batch_size=ctx.batch_size)
        path = plot_reliability(result, ctx.figure("reliability"))
        table = Table.of("Clean performance", ["test images", "accuracy", "expected calibration error"],
                         [[result.n, pct(result.accuracy), pct(result.ece)]])
        return StageOutput(
            summary=CleanSummary(result.accuracy, result.ece), tables=(table,),
            figures={"Reliability diagram": path},
            data={"accuracy": result.accuracy, "ece": result.ece, "n": result.n, "calibration": result.to_dict()},
        )
