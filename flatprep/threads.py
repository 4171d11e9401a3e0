"""One thread for the numeric steps whose results must not depend on the machine's thread settings.

A multi-threaded BLAS splits a product's sums among its threads, and how it
splits them depends on the thread count: the same run cleaned with
``OPENBLAS_NUM_THREADS=1`` (as Dask workers and SLURM jobs run) and with two
threads (an in-process run) differed in about 0.3 % of its float16 values, by
up to 11 float16 steps. Under :func:`fixed_threads` every BLAS and OpenMP pool
runs one thread, so a run's bytes depend only on its inputs, the options and
the BLAS kernel (another CPU may round differently: README, "Same result").

Cleaning works on blocks of 512 vertices, which one thread serves as fast as
two (``benchmarks/threads.py`` measures it).
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

#: The thread count under which every numeric step runs.
N_THREADS = 1


@contextmanager
def fixed_threads():
    """Run the enclosed code with one BLAS and OpenMP thread (the pools are restored on exit).

    Torch's intra-op pool is left alone: the encoder's forward pass gives the
    same embeddings with 1, 2 and 4 threads (README, "Same result on every machine").
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=N_THREADS):
        yield


def with_fixed_threads(function):
    """Decorator: call ``function`` under :func:`fixed_threads`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with fixed_threads():
            return function(*args, **kwargs)

    return wrapper
