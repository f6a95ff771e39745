"""The audit's results: one ``StageResult`` per stage and the ``AuditResult`` around them.

``AuditResult.to_dict()`` is ``audit.json`` (schema ``AUDIT_SCHEMA_VERSION``); each stage's
``to_dict()`` is also what its cache file in ``stages/`` stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hardened.audit.stage import Summary
from hardened.audit.tables import Table

__all__ = ["AUDIT_SCHEMA_VERSION", "STATUSES", "AuditResult", "StageResult"]

AUDIT_SCHEMA_VERSION = 2
STATUSES = ("ok", "skipped", "failed")


@dataclass(frozen=True)
class StageResult:
    """The outcome of one stage: ``ok``, ``skipped`` (cannot apply) or ``failed`` (an error,
    with its ``traceback``)."""

    name: str
    title: str
    status: str
    seconds: float
    summary: Summary | None = None
    tables: tuple[Table, ...] = ()
    figures: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "seconds": self.seconds,
            "message": self.message,
            "traceback": self.traceback,
            "summary": None if self.summary is None else self.summary.to_dict(),
            "tables": [t.to_dict() for t in self.tables],
            "notes": list(self.notes),
            "figures": dict(self.figures),
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], summary_type: type[Summary] | None) -> StageResult:
        """Rebuild a stored result; its summary is read as ``summary_type``."""
        summary = data.get("summary")
        return cls(
            name=data["name"], title=data["title"], status=data["status"], seconds=data["seconds"],
            summary=None if summary is None or summary_type is None else summary_type.from_dict(summary),
            tables=tuple(Table.from_dict(t) for t in data.get("tables", [])),
            figures=dict(data.get("figures", {})), notes=tuple(data.get("notes", [])),
            data=dict(data.get("data", {})), message=data.get("message", ""),
            traceback=data.get("traceback"),
        )


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
    access: dict[str, Any] = field(default_factory=dict)  # ModelAccess.to_dict(): what the model allows
    queries: int | None = None  # images sent to an outputs-only model (None: a white-box audit)

    @property
    def complete(self) -> bool:
        return all(stage.status == "ok" for stage in self.stages)

    @property
    def failed(self) -> bool:
        """Whether some stage raised an unexpected error (a bug, not a stage that cannot apply)."""
        return any(stage.status == "failed" for stage in self.stages)

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
            "access": dict(self.access),
            "queries": self.queries,
            "stages": [stage.to_dict() for stage in self.stages],
        }
