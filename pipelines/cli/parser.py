"""``flatprep``: project fMRIPrep / HCP BOLD onto one cortical flat map, write HDF5 and QC reports (BIDS App).

Examples::

    flatprep bids/ out/ participant --participant-label 01 02 --nprocs 4
    flatprep bids/ out/ participant -d fmriprep=/data/fmriprep --space fsLR --confounds motion
    flatprep hcp-release/ out/ participant --hcp-registration MSMAll
    flatprep bids/ out/ group --split-ratios .8 .1 .1 --compression blosc-lz4
"""

from __future__ import annotations

import argparse
import json
import os
import re
from functools import partial
from pathlib import Path

from flatprep.flatmap import DEFAULT_PIXEL_SIZE

from .help import make_parser
from .validators import add_folder_argument, existing_dir, existing_file, integer, memory_size, positive_float, walltime

SPACES = ("fsaverage5", "fsaverage6", "fsaverage", "fsLR", "fsnative", "MNI152NLin6Asym", "MNI152NLin2009cAsym")
SCHEDULERS = ("in-process", "local", "slurm")
# A Dask scheduler address: [protocol://]host:port.
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|inproc|ucx|ws|wss)://)?[\w.\-\[\]:]+:\d+$")


def _derivative(parser, value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep:
        name, path = Path(value).name, value
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        parser.error(f"derivatives folder does not exist: {path}")
    return name, folder


def _scheduler(parser, value: str) -> str:
    if value not in SCHEDULERS and not _ADDRESS.match(value):
        parser.error(f"--scheduler must be one of {', '.join(SCHEDULERS)} or a Dask scheduler address "
                     f"(tcp://HOST:PORT), got {value!r}")
    return value


def _writable_folder(parser, option: str, path: Path) -> None:
    """Refuse a folder that is a file, sits under a file, or cannot be created or written."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == path else f"is inside {folder}, which is a file"
                parser.error(f"{option} {path} {what}; give a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                parser.error(f"{option} {path} is not writable (no write permission on {folder})")
            return


def _exclude_rule(parser, value: str) -> str:
    from flatprep.exceptions import ShardOptionsError
    from flatprep.exclusion import parse_rule

    try:
        return str(parse_rule(value))
    except ShardOptionsError as err:
        parser.error(str(err))


def _add_group_level_options(parser) -> None:
    """The options of the group level (training shards)."""
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
    group.add_argument("--strict", action="store_true",
                       help="exit 1 when a split that --split-ratios asks for ends up empty (default: a warning)")
    group.add_argument("--resplit", action="store_true",
                       help="reassign every subject by the rule, replacing shards/splits.tsv (needed to change "
                            "--split-ratios, --split-seed or --split-group-column of an existing dataset)")
    group.add_argument("--exclude", nargs="+", metavar="RULE", type=partial(_exclude_rule, parser), default=[],
                       help="leave out runs by recorded QC, before splits: e.g. 'mean_fd>0.5' 'tsnr<20' "
                            "(metrics: mean_fd, max_fd, tsnr, censored_fraction; operators <, <=, >, >=)")
    group.add_argument("--wait", action="store_true",
                       help="wait for another group level on the same output folder to finish (default: exit 2)")


def _build_parser() -> argparse.ArgumentParser:
    parser = make_parser("flatprep", __doc__)
    add_folder_argument(parser, "bids_dir", "the raw BIDS dataset, a derivative dataset (an fMRIPrep output folder), "
                                            "or an HCP-pipelines release (subject folders)")
    parser.add_argument("output_dir", type=Path, help="where the flatprep derivative dataset is written")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="participant: flatten each run; group: pack the runs into training shards")

    bids = parser.add_argument_group("BIDS filters")
    bids.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                      help="subjects to process, with or without 'sub-' (default: all)")
    bids.add_argument("--session-label", "--session_label", nargs="+", metavar="LABEL",
                      help="sessions to process (default: all)")
    bids.add_argument("-t", "--task", nargs="+", metavar="TASK", help="tasks to process (default: all)")
    bids.add_argument("--space", choices=SPACES,
                      help="input space (default: the best each run has: fsaverage, fsaverage6, fsLR, fsaverage5, "
                           "fsnative, then the MNI volumes MNI152NLin6Asym, MNI152NLin2009cAsym: surfaces win "
                           "when both exist); at the group level, the space packed when a run was flattened "
                           "from several")
    bids.add_argument("-d", "--derivatives", nargs="+", type=partial(_derivative, parser), metavar="NAME=PATH",
                      help="derivative folders with surface BOLD (default: every folder in BIDS_DIR/derivatives); "
                           "where two hold the same run, the first named wins; with a derivative BIDS_DIR, "
                           "raw=PATH names the raw dataset")
    bids.add_argument("--bids-raw", "--bids_raw", type=partial(existing_dir, parser, "--bids-raw"), metavar="PATH",
                      help="the raw dataset of a derivative BIDS_DIR (optional: its sidecars and events apply)")
    bids.add_argument("--bids-filter-file", "--bids_filter_file", type=partial(existing_file, parser, "--bids-filter-file"),
                      metavar="FILE", help="JSON of extra pybids filters for the BOLD query")

    layout = parser.add_argument_group("input layout")
    layout.add_argument("--input-layout", "--input_layout", choices=["auto", "bids", "hcp"], default="auto",
                        help="BIDS + fMRIPrep derivatives, or an HCP-pipelines release (auto: detected)")
    layout.add_argument("--hcp-registration", choices=["MSMAll", "MSMSulc"], default="MSMAll",
                        help="HCP surface registration: *_Atlas_MSMAll.dtseries.nii or *_Atlas.dtseries.nii")
    layout.add_argument("--hcp-fix", choices=["none", "hp2000", "hp0"], default="none",
                        help="read the ICA-FIX cleaned HCP variant (*_hp2000_clean / *_hp0_clean); "
                             "default: minimally preprocessed")

    clean = parser.add_argument_group("cleaning")
    clean.add_argument("--tr", type=partial(positive_float, parser, "--tr", unit="seconds"), default=1.0,
                       help="target repetition time in seconds (anti-aliased resampling)")
    clean.add_argument("--tr-in", "--tr_in", type=partial(positive_float, parser, "--tr-in", unit="seconds"),
                       metavar="SECONDS",
                       help="input TR of every run, instead of the sidecars' RepetitionTime and the headers' "
                            "(which must lie in 0.1-10 s)")
    clean.add_argument("--confounds", choices=["none", "motion", "motion+derivatives"], default="none",
                       help="confounds regressed from the fMRIPrep confounds table")
    clean.add_argument("--detrend", choices=["linear", "highpass", "none"], default="linear",
                       help="drift removal before resampling")
    clean.add_argument("--dummy-scans", "--dummy_scans", type=partial(integer, parser, "--dummy-scans", minimum=0),
                       help="non-steady-state volumes to drop (default: from fMRIPrep's "
                            "non_steady_state_outlier columns, else 0)")

    flat = parser.add_argument_group("flat map")
    flat.add_argument("--pixel-size", type=partial(positive_float, parser, "--pixel-size", unit="mm"), default=DEFAULT_PIXEL_SIZE,
                      help="pixel edge in mm (1.2 gives the 224 x 560 reference grid)")
    flat.add_argument("--patch-size", type=partial(integer, parser, "--patch-size"), default=16, help="grid dimensions are multiples of it")
    flat.add_argument("--method", choices=["linear", "nearest"], default="linear",
                      help="projection weights (barycentric or nearest vertex)")

    perf = parser.add_argument_group("performance and Dask")
    perf.add_argument("-w", "--work-dir", type=Path,
                      help="Nipype work folder; each job works in its own subfolder (default: OUTPUT_DIR/.work, "
                           "removed per run on success)")
    perf.add_argument("--nprocs", type=partial(integer, parser, "--nprocs"), default=1, help="runs processed at once")
    perf.add_argument("--scheduler", default=None, type=partial(_scheduler, parser),
                      metavar="{in-process,local,slurm,ADDRESS}",
                      help="where runs execute (default: in-process for --nprocs 1, else local)")
    perf.add_argument("--slurm-partition", "--slurm-queue", dest="slurm_queue", metavar="PARTITION",
                      help="SLURM partition of the worker jobs (--scheduler slurm; default: the cluster's)")
    perf.add_argument("--slurm-account", help="SLURM account (--scheduler slurm)")
    perf.add_argument("--slurm-walltime", type=partial(walltime, parser, "--slurm-walltime"), default="01:00:00",
                      help="time limit of each worker job ([D-]HH:MM:SS); a job runs many runs one after another")
    perf.add_argument("--slurm-memory", type=partial(memory_size, parser, "--slurm-memory"), default="4GB",
                      help="memory of each worker job; a run that needs more fails, reported by name")

    _add_group_level_options(parser)

    out = parser.add_argument_group("outputs and reruns")
    out.add_argument("--force", action="store_true", help="redo runs (or shards) whose output is already complete")
    out.add_argument("--stop-on-first-crash", action="store_true", help="stop at the first failed run")
    out.add_argument("--no-figures", action="store_true", help="skip QC figures and reports")
    out.add_argument("--keep-work", action="store_true", help="keep each run's Nipype work folder")
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
    _writable_folder(parser, "output folder", args.output_dir)
    args.work_dir = (args.work_dir or args.output_dir / ".work").expanduser().resolve()
    _writable_folder(parser, "work folder", args.work_dir)
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
