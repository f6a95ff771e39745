"""The report's tables: a title, column names and rows of cells the HTML renders as they are."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Table", "pct"]


@dataclass(frozen=True)
class Table:
    """One table of a stage's section; cells are numbers or short strings."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    @classmethod
    def of(cls, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
        return cls(title, tuple(columns), tuple(tuple(row) for row in rows))

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": list(self.columns), "rows": [list(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Table:
        return cls.of(data["title"], data["columns"], data["rows"])


def pct(value: float | None) -> str:
    """``0.123 -> '12.3%'``; ``None`` or NaN -> ``'n/a'``."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"
