"""glibc's allocator settings for repeated CPU passes: keep freed tensor memory instead of handing
it back to the kernel after every pass.

Why: with glibc's defaults a CPU forward pass allocates its activations (a 32-image LeNet's
first convolution output is 442 KB), frees them, and glibc trims the heap top or unmaps the
block, so the next pass page-faults the same memory back in, by an amount that depends on the
process's heap layout. ``benchmarks/allocator.py`` (6 fresh processes per setting, one thread,
2-core machine): a 32-image LeNet forward 4.50 ms median (4.20-4.59 ms, 781 minor page faults
per pass) with glibc's defaults against 3.27 ms (3.21-3.32, none) with ``M_TRIM_THRESHOLD``
256 MiB and ``M_MMAP_THRESHOLD`` 32 MiB; a 128-image forward and backward 30.1 ms (26.4-37.4)
against 26.6 ms (26.4-26.9). Setting only the trim threshold (``MALLOC_TRIM_THRESHOLD_``)
is worse than the default (6.7 ms): it turns off glibc's sliding mmap threshold, so every
block over 128 KB is mapped and unmapped on each pass; both are set together here.

The cost: up to 256 MiB of freed memory stays with the process, and blocks up to 32 MiB come
from the heap. ``hardened`` commands call ``keep_freed_memory`` at start; a library user may
call it too. It does nothing off glibc, when the user set ``MALLOC_TRIM_THRESHOLD_`` /
``MALLOC_MMAP_THRESHOLD_`` themselves, or with ``HARDENED_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

TRIM_THRESHOLD = 256 * 1024 * 1024
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems (a larger value is refused)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers, from glibc's malloc.h
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> str:
    """Set glibc's trim and mmap thresholds (see the module docstring); returns what was done,
    in words, for logs and benchmark records."""
    if os.environ.get("HARDENED_MALLOC", "").lower() == "default":
        return "glibc defaults (HARDENED_MALLOC=default)"
    if any(name in os.environ for name in _USER_SETTINGS):
        return "the user's malloc settings (from the environment)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the platform's allocator (not glibc)"
    try:
        libc = ctypes.CDLL(None)
        done = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and \
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return "glibc defaults (mallopt is not available)"
    if not done:
        return "glibc defaults (mallopt refused the thresholds)"
    return f"glibc keeps freed memory (trim threshold {TRIM_THRESHOLD >> 20} MiB, mmap threshold {MMAP_THRESHOLD >> 20} MiB)"
