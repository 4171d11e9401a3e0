"""Keep the memory a run freed for the next run of the same process (glibc only).

A run allocates its big arrays afresh: the input (312 MB for a 1,200-frame
fs_LR run), the cleaned frames, the projection's blocks. glibc serves each
array above its mmap threshold (at most 32 MB) from a new mapping and unmaps
it when it is freed, so the kernel faults in, zeroes and (with transparent
huge pages) compacts that memory again for every array of every run. On the
benchmark machine that was 0.6-1 s of a 3 s HCP run (``benchmarks/prep.py``).

:func:`retain_freed_memory` raises glibc's mmap and trim thresholds so that
big arrays come from the heap and freed heap memory stays mapped: the next
array reuses pages that are already there. Peak memory is unchanged (a run
holds the same arrays); the process keeps its peak mapped until it exits.
Values computed are not affected in any way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

#: mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Arrays up to this size come from the heap, and this much freed memory may stay mapped.
DEFAULT_LIMIT = 2**30


def retain_freed_memory(*, limit: int = DEFAULT_LIMIT) -> bool:
    """Let this process reuse freed memory for big arrays instead of mapping it afresh.

    Parameters
    ----------
    limit : int, default=2**30 (1 GiB)
        Allocations below this many bytes come from the heap, and up to this
        many freed bytes stay mapped for reuse.

    Returns
    -------
    bool
        True when glibc accepted both settings; False elsewhere (not Linux,
        another C library), where nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: keep their default
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = int(min(limit, 2**31 - 1))
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
