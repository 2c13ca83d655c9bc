"""Heap settings for long CPU runs: keep freed tensor memory in the process instead of returning it to the OS.

On the CPU, PyTorch allocates through the C library's `malloc`. With glibc's defaults, a block of a
few MiB (one batch of images, one activation map) is served by `mmap` or from the heap's top, which
is trimmed back to the OS once freed, so every training step and attack iteration faults the same
pages in again and the kernel zeroes them. Raising the mmap threshold to glibc's maximum (32 MiB on
64-bit) and switching trimming off keeps those pages mapped, as jemalloc and tcmalloc (the
allocators PyTorch's CPU tuning guide recommends) do by design (the gain is measured by
`tests/benchmarks/test_speed.py::test_allocator_tuning`). Only speed and the resident set change; no
number does. `RRB_MALLOC=system` keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import functools
import os

from benchmark.core.errors import BenchmarkError

#: mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): blocks above it are still mapped
MMAP_THRESHOLD = 32 * 1024 * 1024
#: no trimming in practice (mallopt takes an int); freed memory stays for the next step
TRIM_THRESHOLD = 2**31 - 1
#: grow the heap in steps of this much, so a growing run asks the kernel less often
TOP_PAD = 64 * 1024 * 1024


def uses_glibc() -> bool:
    """True when the process runs on GNU libc, whose `mallopt` parameters these are."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a POSIX C library that names itself
        return False


@functools.cache
def tune_allocator() -> bool:
    """Apply the settings once per process; True when they are in force (glibc, not opted out with RRB_MALLOC)."""
    choice = os.environ.get("RRB_MALLOC", "tuned")
    if choice not in ("tuned", "system"):
        raise BenchmarkError(f"RRB_MALLOC={choice!r} is not a choice; set it to 'tuned' (the default) or 'system'")
    if choice == "system" or not uses_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; all three or none matter, so the result is their conjunction
    return all(mallopt(param, value) == 1 for param, value in
               ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
