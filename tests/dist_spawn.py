"""Start 2-rank gloo jobs from the tests, robustly on a loaded machine.

Why: a loaded full-suite run errored all 14 tests on the 2-rank fixture at once, and the old
module re-run with ``-n 2`` at load 22-26 did it again (12 errors): rank 1 of the second job
aborted (SIGABRT, "terminate called without an active exception" from torch's C++ runtime)
while the other xdist worker ran the same two jobs. The old fixture picked ``MASTER_PORT`` by
binding port 0 and closing it (another job could take the port before rank 0 bound it),
SIGTERMed rank 0 of the killed job inside a gloo collective, built the fixture once per xdist
worker (two twin jobs on two cores) and gave a job 120 s (~57 s at load 12). Now the ranks meet
through a store file in the job's folder (no port), every rank ends by itself (rank 0 reports the
dead rank and leaves the group), the job runs once per session (the other workers wait on a file
lock and read its folder) and may take 15 minutes; the exit codes are checked.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from filelock import FileLock

DEADLINE_S = 900.0


def spawn_two(fn: Callable[[int, str, str], None], folder: Path, timeout_s: float = DEADLINE_S) -> list[int]:
    """Run ``fn(rank, store, folder)`` in 2 spawned processes that meet at the file store ``store``
    (``file://...``); their exit codes, in rank order, once both ended. Stops them and fails the
    test after ``timeout_s``."""
    store = folder / f".store-{fn.__name__}"
    store.unlink(missing_ok=True)
    context = mp.start_processes(fn, args=(f"file://{store}", str(folder)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        for process in context.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        if any(p.is_alive() for p in context.processes):
            pytest.fail(f"the 2-rank job {fn.__name__} did not end in {timeout_s:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [int(p.exitcode if p.exitcode is not None else -1) for p in context.processes]


def once_per_session(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``build(folder)`` filled, built once per test session: under pytest-xdist the
    first worker that needs it builds it while the others wait on a file lock, then all read it
    (a failed build leaves no mark, so the next worker tries again and reports its own error)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = factory.mktemp(name)
        build(folder)
        return folder
    root = factory.getbasetemp().parent  # shared by the session's workers
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder
