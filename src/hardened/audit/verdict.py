"""The verdict paragraph: each measured stage's summary sentence, then what was not measured."""

from __future__ import annotations

from collections.abc import Iterable

from hardened.audit.result import StageResult

__all__ = ["verdict"]


def verdict(stages: Iterable[StageResult]) -> str:
    """Join the ``ok`` stages' ``summary.sentence()`` in report order; name the stages not
    measured."""
    results = list(stages)
    parts = [s.summary.sentence() for s in results if s.status == "ok" and s.summary is not None]
    not_ok = [s.title for s in results if s.status != "ok"]
    if not_ok:
        parts.append(f"Not measured: {', '.join(not_ok)} (see their sections).")
    return " ".join(parts)
