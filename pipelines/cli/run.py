"""Entry point of ``flatprep BIDS_DIR OUTPUT_DIR participant``.

Exit codes: 0 when every run is done or skipped, 1 when any run failed,
2 for usage errors and unusable inputs.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from .logs import configure_logging
    from .parser import parse_args

    args = parse_args(argv)
    configure_logging(args.verbose)
    if args.analysis_level == "group":
        return run_group_level(args)
    log = logging.getLogger("flatprep")

    from flatprep.clean import CleanOptions
    from flatprep.exceptions import FlatprepError

    from ..bids import discover_runs
    from ..outputs import write_dataset_description
    from ..runner import Settings, run_all, write_summaries

    try:
        clean_options = CleanOptions(
            target_tr=args.tr, confounds_strategy=args.confounds,
            detrend=None if args.detrend == "none" else args.detrend, dummy_scans=args.dummy_scans,
            dtype="float32",
        )
        specs = discover_runs(args.bids_dir, derivatives=args.derivatives,
                              participant_labels=args.participant_label, session_labels=args.session_label,
                              tasks=args.task, space=args.space, bids_filters=args.bids_filters)
    except FlatprepError as err:
        log.error("%s", err)
        return 2
    log.info("%d run(s) found in %s", len(specs), args.bids_dir)
    settings = Settings(
        output_dir=str(args.output_dir), work_dir=str(args.work_dir), clean_options=clean_options.to_dict(),
        pixel_size=args.pixel_size, patch_size=args.patch_size, method=args.method, force=args.force,
        keep_work=args.keep_work, with_figures=not args.no_figures,
    )
    write_dataset_description(args.output_dir, sources={"raw": str(args.bids_dir)} | {
        name: str(path) for name, path in (specs[0].dataset_names.items()) if name != "raw"})
    results = run_all(specs, settings, scheduler=args.scheduler, nprocs=args.nprocs, slurm=_slurm_options(args),
                      stop_on_first_crash=args.stop_on_first_crash)
    table = write_summaries(results, str(args.output_dir))
    if args.work_dir.is_dir() and not any(args.work_dir.iterdir()):
        args.work_dir.rmdir()  # every run cleaned up after itself
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    log.info("%d done, %d skipped, %d failed; summary in %s", counts["done"], counts["skipped"],
             counts["failed"], table)
    for result in results:
        if result.status == "failed":
            log.error("FAILED %s: %s", result.label, result.error)
    return 1 if counts["failed"] else 0


def _slurm_options(args) -> dict:
    """The worker-job options of ``--scheduler slurm`` (job logs go to the work folder)."""
    return {"queue": args.slurm_queue, "account": args.slurm_account, "walltime": args.slurm_walltime,
            "memory": args.slurm_memory, "log_directory": str(args.work_dir / "slurm-logs")}


def run_group_level(args) -> int:
    """``flatprep BIDS_DIR OUTPUT_DIR group``: shards, manifest, splits, group QC."""
    log = logging.getLogger("flatprep")
    from flatprep.shards import ShardOptions

    from ..group import run_group

    try:
        options = ShardOptions(target_bytes=int(args.shard_size * 1e9), clip_frames=args.clip_frames,
                               compression=args.compression, split_ratios=tuple(args.split_ratios),
                               split_seed=args.split_seed, group_column=args.split_group_column)
        result = run_group(args.output_dir, bids_dir=args.bids_dir, options=options, scheduler=args.scheduler,
                           nprocs=args.nprocs, force=args.force, with_figures=not args.no_figures,
                           slurm=_slurm_options(args))
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    for split, counts in result["splits"].items():
        log.info("%-5s: %d subjects, %d runs, %d frames, %.2f h", split, counts["subjects"], counts["runs"],
                 counts["frames"], counts["hours"])
    log.info("%d shard(s) in %s (%d kept unchanged); manifest in %s", len(result["shards"]),
             args.output_dir / "shards", result["reused"], args.output_dir / "shards" / "manifest.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
