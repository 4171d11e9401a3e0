"""The group level: pack complete per-run flat maps into training shards.

One Dask task per shard (a single writer per file). Shards whose content
(runs and their checksums, packing options) is unchanged are kept as they
are; the manifest, the splits and the group QC page are rewritten.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flatprep.shards import (
    ShardOptions,
    assign_splits,
    collect_runs,
    existing_shard_matches,
    manifest_extras,
    manifest_rows,
    plan_shards,
    read_groups,
    shard_key,
    shard_name,
    summary_by_split,
    write_manifest,
    write_shard,
)

logger = logging.getLogger(__name__)


def _shard_task(path: str, runs: list, output_dir: str, grid: dict, options: ShardOptions, index: int,
                force: bool) -> dict:
    """Write one shard (or reuse it when its content is unchanged)."""
    from flatprep.cache import file_digest

    target = Path(path)
    if not force and existing_shard_matches(target, shard_key(runs, options)):
        offsets, total = {}, 0
        for run in runs:
            offsets[run.label] = total
            total += -(-run.n_frames // options.clip_frames) * options.clip_frames
        return {"file": target.name, "sha256": file_digest(target), "n_runs": len(runs), "n_frames": total,
                "bytes": target.stat().st_size, "offsets": offsets, "reused": True}
    return write_shard(target, runs, output_dir, grid, options, index=index) | {"reused": False}


def run_group(output_dir: str | Path, *, bids_dir: str | Path | None, options: ShardOptions,
              scheduler: str = "in-process", nprocs: int = 1, force: bool = False,
              with_figures: bool = True) -> dict:
    """Build shards, manifest, splits and the group QC page.

    Returns
    -------
    dict
        ``shards`` (list of manifest entries), ``splits`` (summary per split),
        ``problems`` (per-run files left out), ``reused`` (shards kept).
    """
    from .runner import close_client, make_client

    output_dir = Path(output_dir)
    runs, grid, problems = collect_runs(output_dir)
    for line in problems:
        logger.warning("left out: %s", line)
    usable = [r for r in runs if r.n_frames >= options.clip_frames]
    for run in sorted(set(runs) - set(usable), key=lambda r: r.label):
        problems.append(f"{run.source}: {run.n_frames} frames, fewer than one {options.clip_frames}-frame clip")
    if not usable:
        raise FileNotFoundError(f"{output_dir}: no complete per-run flat maps to pack; run the participant level first")
    participants = Path(bids_dir) / "participants.tsv" if bids_dir else None
    groups = read_groups(participants, options.group_column)
    splits = assign_splits(sorted({r.entities["subject"] for r in usable}), options, groups)
    plan = plan_shards(usable, int(grid["n_valid_pixels"]), options)
    shard_dir = output_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    args = [(str(shard_dir / shard_name(i)), runs_i, str(output_dir), grid, options, i, force)
            for i, runs_i in enumerate(plan)]
    client = make_client(scheduler, nprocs)
    infos = []
    try:
        if client is None:
            for n, a in enumerate(args, start=1):
                infos.append(_shard_task(*a))
                logger.info("[%d/%d] %s %s", n, len(args), infos[-1]["file"],
                            "kept" if infos[-1]["reused"] else "written")
        else:
            futures = [client.submit(_shard_task, *a, pure=False) for a in args]
            for n, future in enumerate(futures, start=1):
                infos.append(future.result())
                logger.info("[%d/%d] %s %s", n, len(args), infos[-1]["file"],
                            "kept" if infos[-1]["reused"] else "written")
    finally:
        close_client(client)
    planned = {info["file"] for info in infos}
    for stale in shard_dir.glob("shard-*_flatclips.h5"):
        if stale.name not in planned:
            stale.unlink()  # from an earlier plan; the manifest no longer lists it
    rows = manifest_rows(plan, infos, splits, options)
    write_manifest(shard_dir, rows, infos, grid, options, **manifest_extras(output_dir, usable))
    summary = summary_by_split(rows)
    if with_figures:
        from .outputs import write_group_report

        write_group_report(output_dir, rows, summary, grid, problems)
    return {"shards": infos, "splits": summary, "problems": problems,
            "reused": sum(info["reused"] for info in infos)}
