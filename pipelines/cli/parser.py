"""The ``flatprep`` command line (BIDS-Apps convention)."""

from __future__ import annotations

import argparse
import json
import os
from functools import partial
from pathlib import Path

from flatprep import __version__

from .validators import existing_dir, existing_file, integer, memory_size, positive_float, walltime

SPACES = ("fsaverage5", "fsaverage6", "fsaverage", "fsLR")


def _derivative(parser, value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep:
        name, path = Path(value).name, value
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        parser.error(f"derivatives folder does not exist: {path}")
    return name, folder


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flatprep",
        description="Project surface-sampled BOLD (fMRIPrep fsaverage / fs_LR derivatives) onto one cortical "
                    "flat map and write it as HDF5, with QC reports.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=partial(existing_dir, parser, "bids_dir"), help="the raw BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="where the flatprep derivative dataset is written")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="participant: flatten each run; group: pack the runs into training shards")
    parser.add_argument("--version", action="version", version=f"flatprep {__version__}")

    bids = parser.add_argument_group("BIDS filters")
    bids.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                      help="subjects to process, with or without 'sub-' (default: all)")
    bids.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL",
                      help="sessions to process (default: all)")
    bids.add_argument("-t", "--task", nargs="+", metavar="TASK", help="tasks to process (default: all)")
    bids.add_argument("--space", choices=SPACES,
                      help="input space (default: the best each run has: fsaverage, fsaverage6, fsLR, fsaverage5)")
    bids.add_argument("-d", "--derivatives", nargs="+", type=partial(_derivative, parser), metavar="NAME=PATH",
                      help="derivative folders with surface BOLD (default: every folder in BIDS_DIR/derivatives)")
    bids.add_argument("--bids-filter-file", "--bids_filter_file", type=partial(existing_file, parser, "--bids-filter-file"),
                      metavar="FILE", help="JSON of extra pybids filters for the BOLD query")

    clean = parser.add_argument_group("cleaning")
    clean.add_argument("--tr", type=partial(positive_float, parser, "--tr", unit="seconds"), default=1.0,
                       help="target repetition time in seconds (anti-aliased resampling)")
    clean.add_argument("--confounds", choices=["none", "motion", "motion+derivatives"], default="none",
                       help="confounds regressed from the fMRIPrep confounds table")
    clean.add_argument("--detrend", choices=["linear", "highpass", "none"], default="linear",
                       help="drift removal before resampling")
    clean.add_argument("--dummy-scans", "--dummy_scans", type=partial(integer, parser, "--dummy-scans", minimum=0),
                       help="non-steady-state volumes to drop (default: from fMRIPrep's "
                            "non_steady_state_outlier columns, else 0)")

    flat = parser.add_argument_group("flat map")
    flat.add_argument("--pixel-size", type=partial(positive_float, parser, "--pixel-size", unit="mm"), default=1.2,
                      help="pixel edge in mm (1.2 gives the 224 x 560 reference grid)")
    flat.add_argument("--patch-size", type=partial(integer, parser, "--patch-size"), default=16, help="grid dimensions are multiples of it")
    flat.add_argument("--method", choices=["linear", "nearest"], default="linear",
                      help="projection weights (barycentric or nearest vertex)")

    perf = parser.add_argument_group("performance and Dask")
    perf.add_argument("-w", "--work-dir", type=Path,
                      help="Nipype work folder (default: OUTPUT_DIR/.work, removed per run on success)")
    perf.add_argument("--nprocs", type=partial(integer, parser, "--nprocs"), default=1, help="runs processed at once")
    perf.add_argument("--scheduler", default=None, metavar="{in-process,local,slurm,ADDRESS}",
                      help="where runs execute (default: in-process for --nprocs 1, else local)")
    perf.add_argument("--slurm-partition", "--slurm-queue", dest="slurm_queue", metavar="PARTITION",
                      help="SLURM partition of the worker jobs (--scheduler slurm; default: the cluster's)")
    perf.add_argument("--slurm-account", help="SLURM account (--scheduler slurm)")
    perf.add_argument("--slurm-walltime", type=partial(walltime, parser, "--slurm-walltime"), default="01:00:00",
                      help="time limit of each worker job ([D-]HH:MM:SS); a job runs many runs one after another")
    perf.add_argument("--slurm-memory", type=partial(memory_size, parser, "--slurm-memory"), default="4GB",
                      help="memory of each worker job; a run that needs more fails, reported by name")

    group = parser.add_argument_group("group level (training shards)")
    group.add_argument("--shard-size", type=partial(positive_float, parser, "--shard-size", unit="GB"), default=1.0,
                       help="target size of each shard in GB (whole runs per shard)")
    group.add_argument("--clip-frames", type=partial(integer, parser, "--clip-frames"), default=16,
                       help="frames per training clip and per HDF5 chunk")
    group.add_argument("--compression", choices=["none", "blosc-lz4"], default="none",
                       help="shard compression (Blosc-LZ4 via hdf5plugin)")
    group.add_argument("--split-ratios", nargs=3, type=float, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"),
                       help="fractions of subjects in each split")
    group.add_argument("--split-seed", type=partial(integer, parser, "--split-seed", minimum=0), default=0,
                       help="seed of the subject split")
    group.add_argument("--split-group-column", metavar="COLUMN",
                       help="participants.tsv column that keeps related subjects in one split (e.g. family id)")

    out = parser.add_argument_group("outputs and reruns")
    out.add_argument("--force", action="store_true", help="redo runs (or shards) whose output is already complete")
    out.add_argument("--stop-on-first-crash", action="store_true", help="stop at the first failed run")
    out.add_argument("--no-figures", action="store_true", help="skip QC figures and reports")
    out.add_argument("--keep-work", action="store_true", help="keep each run's Nipype work folder")
    out.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    return parser


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check the arguments; usage errors exit with code 2."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    args.output_dir = args.output_dir.expanduser().resolve()
    if args.output_dir == args.bids_dir:
        parser.error(f"output folder {args.output_dir} is the input BIDS folder; "
                     f"use e.g. {args.bids_dir / 'derivatives' / 'flatprep'}")
    if _inside(args.bids_dir, args.output_dir):
        parser.error(f"output folder {args.output_dir} contains the input BIDS folder {args.bids_dir}")
    if _inside(args.output_dir, args.bids_dir) and not _inside(args.output_dir, args.bids_dir / "derivatives"):
        parser.error(f"output folder {args.output_dir} is inside the input BIDS folder {args.bids_dir}; "
                     f"put it under {args.bids_dir / 'derivatives'} or outside the dataset")
    args.work_dir = (args.work_dir or args.output_dir / ".work").expanduser().resolve()
    if _inside(args.work_dir, args.bids_dir) and not _inside(args.work_dir, args.bids_dir / "derivatives"):
        parser.error(f"work folder {args.work_dir} is inside the input BIDS folder {args.bids_dir}")
    args.scheduler = args.scheduler or ("in-process" if args.nprocs == 1 else "local")
    args.bids_filters = {}
    if args.bids_filter_file:
        try:
            args.bids_filters = json.loads(args.bids_filter_file.read_text())
        except json.JSONDecodeError as err:
            parser.error(f"{args.bids_filter_file}: not valid JSON ({err})")
        if not isinstance(args.bids_filters, dict):
            parser.error(f"{args.bids_filter_file}: expected a JSON object of pybids filters")
    args.derivatives = dict(args.derivatives) if args.derivatives else None
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    return args
