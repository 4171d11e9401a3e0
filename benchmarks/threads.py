"""What one fixed BLAS thread costs the cleaning (flatprep.threads).

``clean_bold`` runs under one BLAS thread so that its bytes do not depend on
the machine's thread settings. This times it on an HCP-shaped run (1,200
frames at TR 0.72 s onto TR 1 s, 64,984 cortex columns, motion regression)
against the same function with the caller's pool of ``--threads`` threads (the
code before the pin: ``clean_bold.__wrapped__``), interleaved, in the same
run, and prints CPU and wall seconds of each and their ratios. It also says
whether the two outputs are byte-identical (with more than one thread they
usually are not: that is why the pin exists).

Usage: python benchmarks/threads.py [--frames 1200] [--columns 64984] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--columns", type=int, default=64984)
    parser.add_argument("--threads", type=int, default=2, help="the caller's pool in the reference")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits

    from flatprep.clean import clean_bold
    from flatprep.prepare import FLAT_PRODUCT_DTYPE

    rng = np.random.default_rng(0)
    t = np.arange(args.frames)
    data = (1000 + 0.01 * t[:, None] + rng.normal(0, 10, (args.frames, args.columns))).astype(np.float32)
    motion = {name: rng.normal(0, 0.1, args.frames) for name in ("trans_x", "trans_y", "trans_z",
                                                                   "rot_x", "rot_y", "rot_z")}
    kwargs = dict(confounds=motion, confounds_strategy="motion", product_dtype=FLAT_PRODUCT_DTYPE)
    runs = {"fixed (1 thread)": [], f"caller's pool ({args.threads} threads)": []}
    outputs = {}
    clean_bold(data[:, :512], 0.72, **kwargs)  # warm the resampling-matrix cache and the imports
    for _ in range(args.repeats):
        outputs["fixed"], wall, cpu = _timed(clean_bold, data, 0.72, **kwargs)
        runs["fixed (1 thread)"].append((wall, cpu))
        with threadpool_limits(limits=args.threads):
            outputs["pool"], wall, cpu = _timed(clean_bold.__wrapped__, data, 0.72, **kwargs)
        runs[f"caller's pool ({args.threads} threads)"].append((wall, cpu))
    print(f"clean_bold, {args.frames} frames x {args.columns} columns, motion regression, TR 0.72 -> 1 s; "
          f"medians of {args.repeats} interleaved runs")
    medians = {}
    for name, times in runs.items():
        wall, cpu = (statistics.median(v) for v in zip(*times))
        medians[name] = (wall, cpu)
        print(f"  {name:<26} wall {wall:6.2f} s   CPU {cpu:6.2f} s")
    (fixed_wall, fixed_cpu), (pool_wall, pool_cpu) = medians.values()
    print(f"  ratio fixed / pool: wall {fixed_wall / pool_wall:.2f}x, CPU {fixed_cpu / pool_cpu:.2f}x")
    same = outputs["fixed"].data.tobytes() == outputs["pool"].data.tobytes()
    differ = np.count_nonzero(outputs["fixed"].data != outputs["pool"].data)
    print(f"  outputs byte-identical: {same} ({differ} of {outputs['fixed'].data.size} float16 values differ)")


if __name__ == "__main__":
    main()
