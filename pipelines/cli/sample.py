"""flatprep-sample: write simulated sample subjects (raw BIDS + fMRIPrep-style surface BOLD).

Usage::

    flatprep-sample OUT_DIR [--subjects N] [--sessions S] [--runs R] [--tasks rest,motor]
                    [--spaces fsaverage5,fsaverage6,fsLR,fsnative,MNI152NLin6Asym] [--layout bids|hcp]
                    [--duration SECONDS] [--seed K] [--overwrite]

Same seed, same bytes. The generator is :func:`flatprep.sample.write_sample_dataset`;
the signal model is :mod:`flatprep.sample.simulate`.

Examples::

    flatprep-sample sample/
    flatprep-sample sample/ --subjects 8 --tasks rest,motor --spaces fsLR --duration 300
    flatprep-sample hcp/ --layout hcp --subjects 2
"""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from pathlib import Path

from .common import command, verbosity
from .logs import configure_logging
from .help import make_parser
from .validators import integer, positive_float


def _comma_list(value: str) -> tuple[str, ...]:
    """Split "a,b" into ("a", "b"); the library checks the names (exit code 2 on unknown ones)."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _build_parser() -> argparse.ArgumentParser:
    from flatprep.sample import (
        DEFAULT_DURATION,
        DEFAULT_N_SUBJECTS,
        DEFAULT_SPACES,
        DEFAULT_TASKS,
        KNOWN_TASKS,
        LAYOUTS,
        SAMPLE_SPACES,
    )

    parser = make_parser("flatprep-sample", __doc__)
    check = {name: partial(integer, parser, f"--{name}", minimum=minimum)
             for name, minimum in (("subjects", 1), ("sessions", 1), ("runs", 1), ("seed", 0))}
    check["duration"] = partial(positive_float, parser, "--duration", unit="seconds")
    parser.add_argument("out_dir", type=Path, help="dataset folder (new or empty)")
    dataset = parser.add_argument_group("dataset")
    dataset.add_argument("--subjects", type=check["subjects"], default=DEFAULT_N_SUBJECTS, help="participants")
    dataset.add_argument("--sessions", type=check["sessions"], default=1, help="sessions per participant")
    dataset.add_argument("--runs", type=check["runs"], default=1, help="runs per task and session")
    dataset.add_argument("--tasks", type=_comma_list, default=",".join(DEFAULT_TASKS),
                         help=f"comma-separated, from {','.join(KNOWN_TASKS)}")
    dataset.add_argument("--spaces", type=_comma_list, default=None,
                         help=f"comma-separated, from {','.join(SAMPLE_SPACES)} (default: {','.join(DEFAULT_SPACES)}; "
                              "fsLR for --layout hcp)")
    dataset.add_argument("--layout", choices=LAYOUTS, default="bids",
                         help="BIDS + fMRIPrep-style derivatives, or an HCP-pipelines release")
    dataset.add_argument("--duration", type=check["duration"], default=DEFAULT_DURATION,
                         help="seconds per run")
    dataset.add_argument("--seed", type=check["seed"], default=0, help="random seed (same seed, same bytes)")
    output = parser.add_argument_group("output")
    output.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    return parser


def _print_progress(report) -> None:
    print(f"{report.subject} ({report.index + 1}/{report.n_subjects}): {report.n_files} files, "
          f"{report.n_bytes / 1e6:.1f} MB in {report.seconds:.1f} s", flush=True)


@command
def main(argv: list[str] | None = None) -> int:
    """Run ``flatprep-sample``; returns the exit code (2 for bad arguments)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbosity(args), default=logging.WARNING)
    if args.out_dir.is_dir() and any(args.out_dir.iterdir()) and not args.overwrite:
        parser.error(f"{args.out_dir}: folder is not empty; choose an empty or new folder, or pass --overwrite "
                     "to replace the sample files in it")
    from flatprep.sample import SampleError, write_sample_dataset

    try:
        result = write_sample_dataset(
            args.out_dir, n_subjects=args.subjects, n_sessions=args.sessions, n_runs=args.runs,
            tasks=args.tasks, spaces=args.spaces, duration=args.duration, seed=args.seed,
            overwrite=args.overwrite, progress=None if args.quiet else _print_progress, layout=args.layout,
        )
    except SampleError as err:  # every SampleError is about the options given
        parser.error(str(err))
    if args.quiet:
        return 0
    print(f"wrote {len(result.files)} files, {result.n_bytes / 1e6:.1f} MB in {result.seconds:.1f} s "
          f"to {result.root}")
    print(f"ground truth: {result.ground_truth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
