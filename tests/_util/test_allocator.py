"""keep_freed_memory: freed CPU tensor memory stays with the process (no page faults on reuse)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from hardened._util.allocator import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# mallopt to the most eager trimming (every block over 128 KB mapped and unmapped), count the
# page faults of a repeated allocate-touch-free pattern, then keep_freed_memory and count again
_PROBE = """
import ctypes, resource, torch
from hardened._util.allocator import keep_freed_memory
libc = ctypes.CDLL(None)
assert libc.mallopt(-3, 128 * 1024) == 1 and libc.mallopt(-1, 0) == 1
def faults():
    def once():
        blocks = [torch.empty(262144).fill_(1.0) for _ in range(3)]
        del blocks
    once()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        once()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
eager = faults()
print(keep_freed_memory())
print(eager, faults())
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("HARDENED_MALLOC", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], env=_clean_env(), capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("glibc keeps freed memory")
    eager, kept = map(float, out[1].split())
    assert eager > 100  # the probe does fault when glibc gives memory back: 3 MB per round is 768 pages
    assert kept < 1


def test_opt_out_and_user_settings_are_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARDENED_MALLOC", "default")
    assert keep_freed_memory() == "glibc defaults (HARDENED_MALLOC=default)"
    monkeypatch.delenv("HARDENED_MALLOC")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert "user's malloc settings" in keep_freed_memory()


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_the_command_line_sets_it() -> None:
    probe = ("import sys; import hardened._util.allocator as a; "
             "calls = []; a.keep_freed_memory = lambda: calls.append(1) or 'x'; "
             "from hardened.cli.main import main; sys.argv = ['hardened', '--help']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\nprint(len(calls))")
    out = subprocess.run([sys.executable, "-c", probe], env=_clean_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "1"
