"""Atomic, durable file writes: a temporary file in the same folder, fsync, ``os.replace``.

The file is fsynced before the rename and its folder before and after it, so neither a crash
nor a power loss leaves an empty or half-written file under the target's name. Temporary files
are named ``.<target>~<pid>~<random>.tmp``; one left behind by a killed writer (its process is
gone) is removed on the next write of the same target.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hardened.errors import ConfigError

__all__ = [
    "atomic_path", "write_bytes", "write_text", "write_json", "append_jsonl", "fsync_dir",
    "remove_stale_temporaries", "check_writable",
]

_active: set[str] = set()  # temporary files this process is writing now
_active_lock = threading.Lock()


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename or a new file) to disk; a no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete temporary files of ``target`` whose writer is gone; return them.

    Matches this module's ``.<name>~<pid>~...tmp`` (the pid is checked) and the older
    ``.<name>.XXXXXXXX[.ext].tmp`` of ``tempfile.mkstemp``.
    """
    ours = re.compile(re.escape(f".{target.name}~") + r"(\d+)~[A-Za-z0-9_]+(\.[A-Za-z0-9]+)?\.tmp")
    legacy = re.compile(re.escape(f".{target.name}.") + r"[A-Za-z0-9_]{8}(\.[A-Za-z0-9]+)?\.tmp")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        match = ours.fullmatch(entry.name)
        if match is not None:
            with _active_lock:
                busy = os.path.abspath(entry.path) in _active
            pid = int(match.group(1))
            if busy or (pid != os.getpid() and _alive(pid)):
                continue
        elif legacy.fullmatch(entry.name) is None:
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    A reader never sees a half-written file: either the old content or the new one.
    ``suffix`` keeps writers that infer the format from the extension (e.g. PNG) happy.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}~{os.getpid()}~", suffix=suffix + ".tmp", dir=target.parent
    )
    os.close(fd)
    tmp_name = os.path.abspath(tmp_name)
    with _active_lock:
        _active.add(tmp_name)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync_file(tmp)
        fsync_dir(target.parent)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        with _active_lock:
            _active.discard(tmp_name)
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(path: str | os.PathLike[str], writer: Callable[[Path], object]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write bytes."""
    return _write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write UTF-8 text."""
    return _write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write an object as indented JSON."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON record as a line and flush it to disk (crash-safe line-wise logs)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    created = not target.exists()
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        fsync_dir(target.parent)


def check_writable(path: str | os.PathLike[str], *, folder: bool, what: str = "output") -> Path:
    """Check, before any long work, that ``path`` (a folder when ``folder``, else a file) can be
    written; create nothing. A ``ConfigError`` names the part in the way.

    The nearest existing ancestor must be a folder in which a probe file can be created (and is
    removed at once): that is what the writes later need, and it also holds for root, where
    ``os.access`` says yes to read-only file systems.
    """
    target = Path(path)
    if target.exists():
        if folder and not target.is_dir():
            raise ConfigError(f"{what} {target} is a file, not a folder; give a folder")
        if not folder and target.is_dir():
            raise ConfigError(f"{what} {target} is a folder; give a file name inside it")
    ancestor = target if folder and target.is_dir() else target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{what} {target}: {ancestor} is a file, so nothing can be written below it; "
                          "choose another location")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hardened-probe.", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"{what} {target}: cannot write in {ancestor} ({error.strerror or error}); "
                          "choose a writable location") from error
    return target
