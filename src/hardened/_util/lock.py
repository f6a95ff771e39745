"""An OS file lock on an output folder, so that two long jobs never write into the same one.

``lock_output_dir(folder)`` takes an exclusive ``fcntl.flock`` on ``folder/.hardened.lock``
without waiting: a second run (another process) on the same folder fails at once with a
``ConfigError`` naming the holder's process id. The OS drops the lock when the holder exits, even
on ``kill -9``, so a stale lock file never blocks a later run. Re-entrant within one process
(the CLI and the library may both lock the same folder). A job that wrote nothing removes the
lock file (and the folder) it created. Where ``fcntl`` does not exist (Windows) the folder is
not locked.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from hardened.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "lock_output_dir", "locks_output"]

F = TypeVar("F", bound=Callable[..., Any])

LOCK_NAME = ".hardened.lock"

_held: dict[Path, int] = {}  # resolved folder -> depth of lock_output_dir calls in this process
_guard = threading.Lock()


@contextmanager
def lock_output_dir(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block.

    Raises ``ConfigError`` at once when another process holds it.
    """
    root = Path(folder)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output folder {root} is a file; choose a folder for --out")
    created_folder = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the output folder {root}: {error.strerror}") from error
    key = root.resolve()
    with _guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield root
        finally:
            with _guard:
                _held[key] -= 1
        return
    lock_file = key / LOCK_NAME
    created_file = not lock_file.exists()
    entries_before = _entries(key)
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ConfigError(f"cannot write into the output folder {root}: {error.strerror}") from error
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise ConfigError(
                    f"{root} is in use by another hardened run (process {holder}); wait for it to "
                    "finish, or use another output folder"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        with _guard:
            _held[key] = 1
        try:
            yield root
        finally:
            with _guard:
                del _held[key]
            if created_file:
                _tidy(key, entries_before, created_folder)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _entries(folder: Path) -> set[str]:
    """The names directly inside ``folder``."""
    return {entry.name for entry in os.scandir(folder)}


def _tidy(folder: Path, before: set[str], remove_folder: bool) -> None:
    """A job that wrote nothing leaves nothing: drop the lock file (still held) it created when the
    folder holds just what it held before, and the folder too when the job created it."""
    try:
        if _entries(folder) != before | {LOCK_NAME}:
            return
        os.unlink(folder / LOCK_NAME)
        if remove_folder:
            folder.rmdir()
    except OSError:
        pass


def _main_rank() -> bool:
    """False in ranks 1... of a torchrun job: rank 0 alone holds the job's output folder."""
    from hardened.distributed import env_world

    return env_world().is_main


def locks_output(parameter: str = "out_dir") -> Callable[[F], F]:
    """Decorate a command so that it holds ``lock_output_dir`` on its keyword ``parameter`` (on
    rank 0 only, in a torchrun job);
    ``"common.out"`` names the attribute ``out`` of the keyword ``common`` (the CLI's shared options)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def locked(*args: Any, **kwargs: Any) -> Any:
            name, _, attribute = parameter.partition(".")
            folder = kwargs.get(name)
            if attribute and folder is not None:
                folder = getattr(folder, attribute)
            if folder is None or not _main_rank():
                return command(*args, **kwargs)
            with lock_output_dir(folder):
                return command(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
