"""Entry point of ``flatprep BIDS_DIR OUTPUT_DIR participant``.

Exit codes: 0 when every run is done, redone or complete (verified), 1 when
any run failed, 2 for usage errors and unusable inputs, 130 / 143 when
stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

from flatprep.exceptions import BIDSInputError

from .common import command, verbosity


@command
def main(argv: list[str] | None = None) -> int:
    from .logs import configure_logging
    from .parser import parse_args

    args = parse_args(argv)
    configure_logging(verbosity(args))
    if args.analysis_level == "group":
        return run_group_level(args)
    log = logging.getLogger("flatprep")

    from flatprep.clean import CleanOptions
    from flatprep.exceptions import FlatprepError

    from ..outputs import write_dataset_description
    from ..runner import Settings, job_work_dir

    try:
        clean_options = CleanOptions(
            target_tr=args.tr, confounds_strategy=args.confounds,
            detrend=args.detrend, dummy_scans=args.dummy_scans,
            dtype="float32",
        )
        log.info("finding runs in %s", args.bids_dir)  # pybids indexes the dataset first: seconds for large ones
        specs = _discover(args)
    except FlatprepError as err:
        log.error("%s", err)
        return 2
    log.info("%d run(s) found in %s", len(specs), args.bids_dir)
    work_dir = job_work_dir(args.work_dir)  # jobs sharing OUTPUT_DIR never share a work folder
    settings = Settings(
        output_dir=str(args.output_dir), work_dir=str(work_dir), clean_options=clean_options.to_dict(),
        pixel_size=args.pixel_size, patch_size=args.patch_size, method=args.method, force=args.force,
        keep_work=args.keep_work, with_figures=not args.no_figures, tr_in=args.tr_in,
    )
    try:
        write_dataset_description(args.output_dir, sources=dict(specs[0].dataset_names))
    except OSError as err:
        log.error("%s: cannot write the output folder (%s)", err.filename or args.output_dir,
                  err.strerror or err, exc_info=args.verbose > 0)
        return 2
    return _run_participants(specs, settings, args, argv)


def _run_participants(specs: list, settings, args, argv: list[str] | None) -> int:
    """Process the runs, write runs.tsv and the reports (which show the command line ``argv``), and end with
    what happened and where."""
    from flatprep.exceptions import Interrupted, OutputWriteError

    from ..runner import FAILED, remove_empty_work, run_all, write_summaries

    log = logging.getLogger("flatprep")
    stopped = None
    try:
        results = run_all(specs, settings, scheduler=args.scheduler, nprocs=args.nprocs,
                          slurm=_slurm_options(args), stop_on_first_crash=args.stop_on_first_crash)
    except Interrupted as stop:
        stopped, results = stop, stop.results
    try:
        table = write_summaries(results, settings.output_dir,
                                command=shlex.join(["flatprep", *(sys.argv[1:] if argv is None else argv)]))
    except OutputWriteError as err:  # e.g. the disk is full: the runs' own lines were logged above
        log.error("%s", err)
        return 1
    remove_empty_work(settings.work_dir)  # every run cleaned up after itself (a failed one keeps its crash file)
    for line in participant_ending(results, args.output_dir, table):
        log.info("%s", line)
    for result in results:
        if result.status == FAILED:
            log.error("FAILED %s: %s%s", result.label, result.error, f"; {result.note}" if result.note else "")
    if stopped is not None:
        stopped.summary = "rerun the same command to finish the interrupted runs (finished runs are kept)"
        raise stopped
    return 1 if any(r.status == FAILED for r in results) else 0


def participant_ending(results: list, output_dir: Path, table: Path) -> list[str]:
    """The closing lines of the participant level: counts by status (why runs were redone) and the outputs."""
    from ..runner import STATUSES

    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    lines = ["participant level: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s != "interrupted")]
    lines += [f"redone {r.label}: {r.note}" for r in results if r.status == "redone"]
    subjects = sorted({r.entities.get("subject") for r in results if r.entities.get("subject")})
    reports = [output_dir / f"sub-{s}.html" for s in subjects if (output_dir / f"sub-{s}.html").exists()]
    lines.append(f"runs table: {table}")
    if reports:
        lines.append("reports: " + ", ".join(str(p) for p in reports))
    lines.append(f"run files: {output_dir}/sub-*/**/func/*_desc-flat_bold.h5")
    return lines


def _discover(args) -> list:
    """Run specs from a BIDS dataset or an HCP-pipelines release (``--input-layout``)."""
    from ..bids import discover_runs
    from ..hcp import detect_layout, discover_hcp_runs

    filters = {"participant_labels": args.participant_label, "tasks": args.task, "space": args.space}
    bids_only = {"-d/--derivatives": args.derivatives, "--session-label": args.session_label,
                 "--bids-filter-file": args.bids_filters, "--bids-raw": args.bids_raw}
    if detect_layout(args.bids_dir, args.input_layout) == "hcp":
        given = [flag for flag, value in bids_only.items() if value]
        if given:
            raise BIDSInputError(f"{args.bids_dir}: an HCP release takes no {', '.join(given)} (BIDS input "
                                 "only: it has no derivatives folders, sessions or entities); "
                                 "use --participant-label and --task")
        return discover_hcp_runs(args.bids_dir, registration=args.hcp_registration, fix=args.hcp_fix, **filters)
    return discover_runs(args.bids_dir, derivatives=args.derivatives, session_labels=args.session_label,
                         bids_filters=args.bids_filters, bids_raw=args.bids_raw, **filters)


def _slurm_options(args) -> dict:
    """The worker-job options of ``--scheduler slurm`` (job logs go to the work folder)."""
    return {"queue": args.slurm_queue, "account": args.slurm_account, "walltime": args.slurm_walltime,
            "memory": args.slurm_memory, "log_directory": str(args.work_dir / "slurm-logs")}


def run_group_level(args) -> int:
    """``flatprep BIDS_DIR OUTPUT_DIR group``: shards, manifest, splits, group QC."""
    log = logging.getLogger("flatprep")
    from flatprep.exceptions import Interrupted, LockError, OutputWriteError
    from flatprep.shards import ShardOptions

    from ..group import run_group

    try:
        options = ShardOptions(target_bytes=int(args.shard_size * 1e9), clip_frames=args.clip_frames,
                               compression=args.compression, split_ratios=tuple(args.split_ratios),
                               split_seed=args.split_seed, group_column=args.split_group_column)
        result = run_group(args.output_dir, bids_dir=args.bids_dir, options=options, scheduler=args.scheduler,
                           nprocs=args.nprocs, force=args.force, with_figures=not args.no_figures,
                           slurm=_slurm_options(args), wait=args.wait,
                           selection={"space": args.space, "exclude": args.exclude, "resplit": args.resplit})
    except LockError as err:
        log.error("%s", err)
        return 2
    except OutputWriteError as err:
        log.error("%s", err)
        return 1
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    except Interrupted as stop:
        stop.summary = ("no new manifest written (a published one stays as it was); rerun the same command to "
                        "finish (the shards it finished are verified and kept)")
        raise
    for line in group_ending(result, args.output_dir):
        log.info("%s", line)
    problems = {"failed": "shard(s) could not be written (each named above); no manifest written",
                "refused": "per-run file(s) refused and not packed (each named above); "
                           "rerun the participant level for them"}
    for key, problem in problems.items():
        if result[key]:
            log.error("%d %s", len(result[key]), problem)
    empty_split = bool(result.get("outcomes") and result["outcomes"].warnings)
    if args.strict and empty_split:
        log.error("--strict: a requested split is empty (see the warning above)")
    return 1 if result["failed"] or result["refused"] or (args.strict and empty_split) else 0


def group_ending(result: dict, output_dir: Path) -> list[str]:
    """The closing lines of the group level: splits, shards written and kept, and where the outputs are."""
    if result["failed"]:
        return [f"group level: {len(result['shards']) - len(result['failed'])} shard(s) written, "
                f"{len(result['failed'])} failed"]
    lines = [f"{split:<5}: {c['subjects']} subjects, {c['runs']} runs, {c['frames']} frames, {c['hours']:.2f} h"
             for split, c in result["splits"].items()]
    written = len(result["shards"]) - result["reused"]
    lines.append(f"group level: {written} shard(s) written, {result['reused']} complete (verified) and kept, "
                 f"{len(result['problems'])} run(s) left out")
    lines.append(f"shards: {output_dir / 'shards'}; manifest: {output_dir / 'shards' / 'manifest.tsv'}")
    if (output_dir / "group.html").exists():
        lines.append(f"report: {output_dir / 'group.html'}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
