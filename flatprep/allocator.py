"""Keep the memory a run freed for the next run of the same process (glibc only).

A run allocates and frees many arrays of tens of megabytes (cleaning chunks,
projected blocks, HDF5 and figure buffers). glibc serves each allocation above
its mmap threshold from a new mapping and unmaps it when it is freed (the
threshold adapts, up to 32 MB), so the kernel faults in, zeroes and (with
transparent huge pages) compacts that memory again and again: on the
benchmark machine, 5-10 % of a participant process's CPU time
(``benchmarks/prep.py``).

:func:`retain_freed_memory` sets glibc's mmap threshold to 128 MB and its
trim threshold to 1 GB: allocations below 128 MB come from the heap, whose
freed memory stays mapped and is reused by the next run. The run's largest
arrays (the input and the cleaned frames, often above 128 MB) still get their
own mapping, returned when freed: kept in the heap, they fragmented it and
raised the peak from 0.68 to 0.87 GB over repeated HCP runs (as it is, the
peak grows by at most the heap's share: fsaverage6 runs 0.43 -> 0.51 GB).
Values computed are not affected in any way.
"""

from __future__ import annotations

import ctypes
import functools
import sys

__all__ = ["retain_freed_memory"]

#: mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Allocations below this size come from the heap (glibc's mmap threshold).
DEFAULT_LARGEST = 2**27
#: Freed heap memory kept mapped for reuse (glibc's trim threshold).
DEFAULT_KEEP = 2**30


def retain_freed_memory(*, largest: int = DEFAULT_LARGEST, keep: int = DEFAULT_KEEP) -> bool:
    """Let this process reuse freed memory for big arrays instead of mapping it afresh.

    Parameters
    ----------
    largest : int, default=2**27 (128 MiB)
        Allocations below this many bytes come from the heap.
    keep : int, default=2**30 (1 GiB)
        Up to this many freed bytes at the top of the heap stay mapped for reuse.

    Returns
    -------
    bool
        True when glibc accepted both settings; False elsewhere (not Linux,
        another C library), where nothing changes.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    largest, keep = (int(min(value, 2**31 - 1)) for value in (largest, keep))
    return bool(mallopt(_M_MMAP_THRESHOLD, largest)) and bool(mallopt(_M_TRIM_THRESHOLD, keep))


@functools.lru_cache(maxsize=1)
def _mallopt():
    """glibc's ``mallopt`` from the running process (no library search, no subprocess), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter itself uses
    except (OSError, AttributeError):  # a C library without mallopt: keep its default
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
