"""One progress-bar helper for the whole library (rich), quiet when output is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["ProgressTask", "progress_bar"]


class ProgressTask(Protocol):
    def advance(self, amount: float = 1.0) -> None: ...
    def describe(self, text: str) -> None: ...


class _Silent:
    def advance(self, amount: float = 1.0) -> None:
        pass

    def describe(self, text: str) -> None:
        pass


class _RichTask:
    def __init__(self, progress: Progress, task_id: int) -> None:
        self._progress = progress
        self._task_id = task_id

    def advance(self, amount: float = 1.0) -> None:
        self._progress.advance(self._task_id, amount)  # type: ignore[arg-type]

    def describe(self, text: str) -> None:
        self._progress.update(self._task_id, description=text)  # type: ignore[arg-type]


@contextmanager
def progress_bar(
    total: float | None, description: str, enabled: bool | None = True
) -> Iterator[ProgressTask]:
    """A rich progress bar with elapsed and remaining time.

    ``enabled=None`` or ``True`` shows it only when stderr is a terminal; ``False`` never does.
    """
    show = bool(enabled) and sys.stderr.isatty()
    if not show:
        yield _Silent()
        return
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task_id = progress.add_task(description, total=total)
        yield _RichTask(progress, task_id)
