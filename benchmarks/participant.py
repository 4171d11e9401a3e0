"""Participant-level speed and memory on sample subjects.

1. For fsaverage5 and fs_LR inputs: wall time of ``flatprep ... participant``
   over several runs in one process (start-up included), per 1000 input
   frames, and the process's peak memory (max RSS); runs are processed one
   after the other, so this is the peak of one run (goals: <= 10 s per 1000
   frames per core, peak <= 1.5 GB per run).
2. The speed-up of 2 Dask workers (``--nprocs 2``) over 1 (``--nprocs 1
   --scheduler local``) on the same fs_LR runs, both measured in this run
   (goal: >= 1.7x).

Usage: python benchmarks/participant.py [--subjects 4] [--runs 2] [--duration 300] [--pixel-size 1.2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


_CHILD = ("import resource, sys\n"
          "from flatprep.pipelines.cli.run import main\n"
          "code = main(sys.argv[1:])\n"
          "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
          "sys.exit(code)\n")


def _flatprep(bids: Path, out: Path, *extra: str) -> tuple[float, float]:
    """Run the CLI in a fresh process on an empty output: (wall seconds, that process's peak RSS in GB)."""
    shutil.rmtree(out, ignore_errors=True)  # a rerun would skip complete runs and time nothing
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(bids), str(out), "participant", *extra],
                          check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_kb = int(done.stdout.split("PEAK_KB")[-1].split()[0])
    return wall, peak_kb / 1024**2


def _frames_in(out: Path) -> int:
    with (out / "runs.tsv").open(newline="") as handle:
        return sum(int(row["frames_in"]) for row in csv.DictReader(handle, delimiter="\t") if row["status"] == "done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2, help="runs per task and subject")
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--pixel-size", default="1.2")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()

    from flatprep.sample import write_sample_dataset

    root = args.keep or Path(tempfile.mkdtemp(prefix="flatprep-bench-"))
    bids = root / "bids"
    if not bids.exists():
        write_sample_dataset(bids, n_subjects=args.subjects, n_runs=args.runs, duration=args.duration, seed=0,
                             tasks=("rest", "motor"), spaces=("fsaverage5", "fsLR"))
    grid = ["--pixel-size", args.pixel_size]
    # Build the operators once, so the figures below measure processing, not the one-off build.
    for space in ("fsaverage5", "fsLR"):
        _flatprep(bids, root / "warm", *grid, "--participant-label", "01", "--task", "rest", "--space", space)

    n_runs = 2 * args.subjects * args.runs
    print(f"{n_runs} runs per space ({args.subjects} subjects x {args.runs} x rest, motor), {args.duration:g} s each, "
          f"grid {args.pixel_size} mm, QC figures included, one process")
    single = {}
    for space in ("fsaverage5", "fsLR"):
        out = root / f"nprocs1-{space}"
        wall, peak = _flatprep(bids, out, *grid, "--space", space, "--nprocs", "1")
        frames = _frames_in(out)
        single[space] = wall
        print(f"{space:>10}: {frames} input frames in {wall:.1f} s -> {1000 * wall / frames:.1f} s per 1000 frames "
              f"per core; peak RSS {peak:.2f} GB")
    # Dask workers run single-threaded (distributed sets OMP_NUM_THREADS=1), while the in-process run
    # above may use both cores in BLAS; so the speed-up compares one Dask worker with two.
    one, _ = _flatprep(bids, root / "dask1-fsLR", *grid, "--space", "fsLR", "--nprocs", "1", "--scheduler", "local")
    two, _ = _flatprep(bids, root / "dask2-fsLR", *grid, "--space", "fsLR", "--nprocs", "2")
    print(f"      fsLR: 1 Dask worker {one:.1f} s, 2 Dask workers {two:.1f} s -> speed-up {one / two:.2f}x "
          f"(in-process: {single['fsLR']:.1f} s)")

if __name__ == "__main__":
    main()
