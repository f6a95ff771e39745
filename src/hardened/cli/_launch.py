"""``--nproc N``: a command re-run in N local processes through torchrun's launcher."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer

from hardened.distributed import env_world, relaunch_with_torchrun

__all__ = ["relaunches"]

F = TypeVar("F", bound=Callable[..., Any])


def relaunches(command: str, passthrough: Sequence[int] = ()) -> Callable[[F], F]:
    """Decorate a command that has an ``nproc`` option: with ``nproc > 1`` outside a torchrun job
    it re-runs the command line in ``nproc`` processes instead of running here, before anything
    else (so the output folder's lock is the ranks' to take). An exit code of ``passthrough``
    from the ranks (the command's own "done, but..." codes) becomes this process's exit code."""

    def decorate(run: F) -> F:
        @functools.wraps(run)
        def launched(*args: Any, **kwargs: Any) -> Any:
            nproc = int(kwargs.get("nproc") or 1)
            if nproc <= 1 or env_world().distributed:
                return run(*args, **kwargs)
            code = relaunch_with_torchrun(nproc, command, passthrough=passthrough)
            if code:
                raise typer.Exit(code=code)
            return None

        return launched  # type: ignore[return-value]

    return decorate
