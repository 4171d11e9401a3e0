"""Keep the memory a run freed for the next run of the same process (glibc only).

A run allocates and frees many arrays of tens of megabytes (cleaning chunks,
projected blocks, HDF5 and figure buffers). glibc serves each allocation above
its mmap threshold from a new mapping and unmaps it when it is freed (the
threshold adapts, up to 32 MB), so the kernel faults in, zeroes and (with
transparent huge pages) compacts that memory again and again. On the
benchmark machine, a participant process spent 10-25 % of its CPU time there
(``benchmarks/prep.py``).

:func:`retain_freed_memory` raises glibc's mmap and trim thresholds to
``limit`` (128 MB): allocations below it come from the heap, whose freed
memory stays mapped and is reused. The run's largest arrays (the input and
the cleaned frames, often above 128 MB) still get their own mapping, returned
when freed: kept in the heap they fragmented it and raised the peak from 0.68
to 0.87 GB over repeated HCP runs, for no speed gain. Values computed are not
affected in any way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

#: mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Arrays below this size come from the heap, and this much freed memory may stay mapped.
DEFAULT_LIMIT = 2**27


def retain_freed_memory(*, limit: int = DEFAULT_LIMIT) -> bool:
    """Let this process reuse freed memory for big arrays instead of mapping it afresh.

    Parameters
    ----------
    limit : int, default=2**27 (128 MiB)
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
