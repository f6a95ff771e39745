"""Summaries of certification runs: certified accuracy against radius, counts, average radii,
tables (JSON-ready dicts and markdown) and curves.

Certified accuracy at radius r is the fraction of samples whose smoothed prediction is correct
and certified with radius >= r (Cohen et al. 2019, Fig. 1 and Table 1).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hardened.certify.runs import SampleRecord
from hardened.errors import ConfigError

__all__ = [
    "CertifySummary",
    "check_radii",
    "summarize",
    "default_radii",
    "certified_accuracy",
    "summary_markdown",
    "comparison_table",
    "comparison_markdown",
    "plot_certified_accuracy",
]

RADIUS_STEP = 0.25


def certified_accuracy(records: Sequence[SampleRecord], radius: float) -> float:
    """Fraction of ``records`` correct and certified at ``radius`` (0.0 for no records)."""
    if not records:
        return 0.0
    return sum(1 for r in records if r.correct and r.radius >= radius) / len(records)


def default_radii(max_radius: float, step: float = RADIUS_STEP, at_least: float = 1.0) -> tuple[float, ...]:
    """0, step, 2·step, ... up to ``max(max_radius, at_least)`` rounded up to the step."""
    top = max(float(max_radius), at_least)
    count = int(math.ceil(top / step - 1e-9))
    return tuple(round(k * step, 10) for k in range(count + 1))


def check_radii(radii: Sequence[float]) -> list[float]:
    """Radii for a certified-accuracy table: finite and >= 0 (a radius is a distance)."""
    values = [float(r) for r in radii]
    bad = [r for r in values if not math.isfinite(r) or r < 0]
    if bad:
        raise ConfigError(f"radii must be finite and >= 0 (they are L2 distances), got {bad}")
    return values


@dataclass(frozen=True)
class CertifySummary:
    """Summary of a smoothing run.

    Attributes:
        name: a label (e.g. the model).
        num_samples: samples certified.
        radii, certified_accuracy: the table (fractions, same length).
        correct_certified: samples certified with the correct class (at any radius > 0).
        average_radius_correct: mean radius over the correctly certified samples.
        average_radius_all: mean over all samples of radius·[correct] (ACR, Zhai et al. 2020).
        abstention_rate: fraction of samples where the certificate abstained.
        seconds_per_sample: mean wall-clock seconds per sample.
        settings: the run's settings (sigma, n0, n, alpha, seed ...).
    """

    name: str
    num_samples: int
    radii: tuple[float, ...]
    certified_accuracy: tuple[float, ...]
    correct_certified: int
    average_radius_correct: float | None
    average_radius_all: float
    abstention_rate: float
    seconds_per_sample: float
    max_radius: float
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_samples": self.num_samples,
            "table": [{"radius": r, "certified_accuracy": a}
                      for r, a in zip(self.radii, self.certified_accuracy, strict=True)],
            "correct_certified": self.correct_certified,
            "average_radius_correct": self.average_radius_correct,
            "average_radius_all": self.average_radius_all,
            "abstention_rate": self.abstention_rate,
            "seconds_per_sample": self.seconds_per_sample,
            "max_radius": self.max_radius,
            "settings": self.settings,
        }


def summarize(
    records: Sequence[SampleRecord],
    *,
    name: str = "",
    radii: Sequence[float] | None = None,
    settings: dict[str, Any] | None = None,
) -> CertifySummary:
    """Summarise per-sample records (radii default: 0, 0.25, ... up to the largest radius)."""
    records = list(records)
    correct = [r for r in records if r.correct]
    max_radius = max((r.radius for r in records), default=0.0)
    grid = tuple(check_radii(radii)) if radii is not None else default_radii(max_radius)
    total = len(records)
    return CertifySummary(
        name=name,
        num_samples=total,
        radii=grid,
        certified_accuracy=tuple(certified_accuracy(records, r) for r in grid),
        correct_certified=len(correct),
        average_radius_correct=(sum(r.radius for r in correct) / len(correct)) if correct else None,
        average_radius_all=(sum(r.radius for r in correct) / total) if total else 0.0,
        abstention_rate=(sum(1 for r in records if r.abstained) / total) if total else 0.0,
        seconds_per_sample=(sum(r.seconds for r in records) / total) if total else 0.0,
        max_radius=max_radius,
        settings=dict(settings or {}),
    )


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _radius_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def summary_markdown(summary: CertifySummary) -> str:
    """A markdown table of certified accuracy against radius plus the headline numbers."""
    s = summary.settings
    lines = [
        f"# Certified accuracy: {summary.name or 'model'}",
        "",
        f"sigma = {s.get('sigma')}, n0 = {s.get('n0')}, n = {s.get('n')}, alpha = {s.get('alpha')}, "
        f"{summary.num_samples} samples",
        "",
        "| radius (L2) | certified accuracy |",
        "|---:|---:|",
        *[f"| {r:g} | {_pct(a)} |" for r, a in zip(summary.radii, summary.certified_accuracy, strict=True)],
        "",
        f"- correctly certified: {summary.correct_certified} of {summary.num_samples}",
        f"- average certified radius over correctly certified samples: "
        f"{_radius_text(summary.average_radius_correct)}",
        f"- average certified radius over all samples (ACR): {summary.average_radius_all:.3f}",
        f"- abstention rate: {_pct(summary.abstention_rate)}",
        f"- seconds per sample: {summary.seconds_per_sample:.2f}",
        "",
    ]
    return "\n".join(lines)


def comparison_table(summaries: Sequence[CertifySummary], radii: Sequence[float] | None = None) -> dict[str, Any]:
    """Side-by-side table of several runs on a common radius grid (JSON-ready)."""
    top = max((s.max_radius for s in summaries), default=0.0)
    grid = tuple(float(r) for r in radii) if radii is not None else default_radii(top)
    rows = []
    for s in summaries:
        by_radius = dict(zip(s.radii, s.certified_accuracy, strict=True))
        accuracy = [by_radius.get(r) for r in grid]
        rows.append({
            "name": s.name,
            "num_samples": s.num_samples,
            "correct_certified": s.correct_certified,
            "average_radius_correct": s.average_radius_correct,
            "average_radius_all": s.average_radius_all,
            "abstention_rate": s.abstention_rate,
            "certified_accuracy": accuracy,
            "settings": s.settings,
        })
    return {"radii": list(grid), "models": rows}


def comparison_markdown(table: dict[str, Any]) -> str:
    """Markdown of ``comparison_table``: one row per model, one column per radius."""
    radii = table["radii"]
    head = ["model", "samples", "correctly certified", "avg radius (correct)", "ACR", "abstain",
            *[f"r={r:g}" for r in radii]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table["models"]:
        cells = [
            row["name"], str(row["num_samples"]), str(row["correct_certified"]),
            _radius_text(row["average_radius_correct"]), f"{row['average_radius_all']:.3f}",
            _pct(row["abstention_rate"]),
            *["–" if a is None else _pct(a) for a in row["certified_accuracy"]],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_certified_accuracy(
    curves: Sequence[tuple[str, Sequence[SampleRecord]]],
    path: str | os.PathLike[str],
    title: str | None = None,
) -> Path:
    """Certified accuracy against L2 radius as step curves, one per (name, records) pair."""
    import matplotlib.pyplot as plt

    from hardened.report.plots import save_figure

    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    top = max((r.radius for _, records in curves for r in records), default=0.0)
    end = max(top * 1.05, 0.5)
    for name, records in curves:
        radii = sorted({0.0, end, *(r.radius for r in records if r.correct)})
        values = [100 * certified_accuracy(records, r) for r in radii]
        axis.step(radii, values, where="pre", label=name)
    axis.set_xlabel("L2 radius")
    axis.set_ylabel("certified accuracy (%)")
    axis.set_xlim(0, end)
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    if curves:
        axis.legend()
    axis.set_title(title or "Certified accuracy against radius")
    return save_figure(figure, path)
