"""Rendering of a cascade sweep for ``hardened evaluate``: accuracy per eps, each attack's
marginal contribution and cost, and the gradient-masking findings with what they mean."""

from __future__ import annotations

from rich.table import Table

from hardened.cli._common import out
from hardened.evaluate.cascade import CascadeSweep


def print_cascade(result: CascadeSweep, title: str) -> None:
    """Three tables: accuracy per eps; per-eps, per-attack contributions; masking findings."""
    sweep = result.sweep
    accuracy = Table(title=title)
    accuracy.add_column("eps", justify="right")
    accuracy.add_column("accuracy", justify="right")
    for value, acc in zip(sweep.eps, sweep.robust_accuracy, strict=True):
        accuracy.add_row(f"{value:g}", f"{100 * acc:.1f}%" + ("" if value == 0 else " (upper bound)"))
    out.print(accuracy)
    if not result.results:
        return
    contributions = Table(title="Points broken by each attack (only points still robust are attacked)")
    for column in ("eps", "attack", "attacked", "broken", "forwards", "backwards", "queries", "seconds"):
        contributions.add_column(column, justify="left" if column == "attack" else "right")
    for cascade in result.results:
        for c in cascade.contributions:
            contributions.add_row(f"{cascade.eps:g}", c.label, str(c.attacked), str(c.broken), str(c.forwards),
                                  str(c.backwards), str(c.queries), f"{c.seconds:.1f}")
    out.print(contributions)
    last = result.results[-1]
    findings = Table(title=f"Gradient-masking checks (eps={last.eps:g})")
    for column in ("check", "fired", "answer", "what it means"):
        findings.add_column(column)
    for finding in last.findings:
        findings.add_row(finding.name, "yes" if finding.fired else "no", finding.answer or "-", finding.meaning)
    out.print(findings)
    if last.countermeasures:
        out.print("Gradient attacks ran with: " + "; ".join(last.countermeasures) + ".")
