"""Path containment: a name read from a data file may only point inside its folder."""

from __future__ import annotations

from pathlib import Path

__all__ = ["inside"]


def inside(folder: Path, name: str) -> Path | None:
    """``folder/name`` resolved, or None when it lies outside ``folder`` (``..``, an absolute
    path, a symbolic link pointing out) or is ``folder`` itself."""
    root = folder.resolve()
    path = (root / name).resolve()
    return path if path.is_relative_to(root) and path != root else None
