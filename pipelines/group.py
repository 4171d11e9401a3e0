"""The group level: pack complete per-run flat maps into training shards.

One Dask task per shard (a single writer per file). Every per-run file is
verified against the content checksum stored in it before it is packed (a
corrupt one is refused, with its name). A shard is kept as it is only when its
content (runs and their checksums, packing options) is unchanged and its bytes
still have the sha256 recorded in the previous manifest.json, or in the
journal of a group level that did not finish; otherwise it is rewritten, and a
corrupt one is reported. The manifest, the splits and the group QC page are
rewritten; when a shard cannot be written (e.g. the disk is full) the
published manifest stays as it was.

One group level writes an output folder at a time (``.locks/group.lock``).
A published shard is never replaced by other content: new content gets a new
name (:mod:`flatprep.generations`), so readers of the published manifest keep
reading while a regroup writes, and after it (the previous set is retired,
kept until the next regroup). Runs are selected before splits
(:mod:`flatprep.recipe`: one recipe, one space per acquisition, no
duplicates, ``--exclude`` rules), and splits come from the record
(:mod:`flatprep.splits`).

The journal (``shards/journal.json``, shard file -> sha256) is updated as each
shard is written and removed once the manifest is: after a failed or killed
group level, the rerun verifies and keeps the shards that were finished
instead of writing them all again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flatprep.atomic import remove_stale_temporaries
from flatprep.exceptions import FlatprepError
from flatprep.generations import (allocate_names, published, published_keys, remove_unlisted, retired_entries,
                                  shard_index)
from flatprep.progress import Progress
from flatprep.shards import (
    JOURNAL,
    ShardOptions,
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
from flatprep.splits import SPLITS, resolve_splits, write_split_record

from .group_report import run_outcomes, write_group_report

logger = logging.getLogger(__name__)


def _shard_task(path: str, runs: list, output_dir: str, grid: dict, options: ShardOptions, index: int,
                force: bool, recorded_sha256: str | None) -> dict:
    """Write one shard, or reuse it when its content is unchanged and verified. Never raises.

    Returns the shard's manifest entry plus ``reused`` and ``note`` (why an
    existing file was not trusted), or ``file`` and ``error`` (one line).
    """
    from flatprep.cache import file_digest

    target = Path(path)
    kept = False if force else existing_shard_matches(target, shard_key(runs, options), recorded_sha256)
    if kept is True:
        offsets, total = {}, 0
        for run in runs:
            offsets[run.label] = total
            total += -(-run.n_frames // options.clip_frames) * options.clip_frames
        return {"file": target.name, "sha256": file_digest(target), "n_runs": len(runs), "n_frames": total,
                "bytes": target.stat().st_size, "offsets": offsets, "reused": True, "note": ""}
    note = kept if isinstance(kept, str) else ""
    try:
        return write_shard(target, runs, output_dir, grid, options, index=index) | {"reused": False, "note": note}
    except FlatprepError as err:
        return {"file": target.name, "error": str(err), "note": note}


def _lost_shard(target: Path, reason: str) -> dict:
    """The entry of a shard whose worker died while writing it: an error, its temporaries removed.

    The shard itself is untouched: writes are atomic, so ``target`` is either
    absent or a complete earlier shard that the rerun verifies before keeping.
    """
    for leftover in target.parent.glob(f".{target.name}.*"):
        leftover.unlink(missing_ok=True)
    return {"file": target.name, "error": reason, "note": ""}


def _read_checksums(path: Path, read) -> dict[str, str]:
    """``read(json of path)`` as {str: str}; empty when the file is missing or unusable."""
    try:
        checksums = read(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {k: v for k, v in checksums.items() if isinstance(k, str) and isinstance(v, str)}


def _recorded_checksums(shard_dir: Path) -> dict[str, str]:
    """shard file -> sha256 from the previous manifest.json, overridden by the journal written since."""
    manifest = _read_checksums(shard_dir / "manifest.json",
                               lambda description: {s["file"]: s["sha256"] for s in description["shards"]})
    return manifest | _read_checksums(shard_dir / JOURNAL, dict)


def _write_journal(shard_dir: Path, checksums: dict[str, str]) -> None:
    from flatprep.atomic import write_text

    write_text(shard_dir / JOURNAL, json.dumps(checksums, indent=1, sort_keys=True))


def _start_journal(shard_dir: Path, checksums: dict[str, str]) -> None:
    """Start the journal from the recorded checksums.

    The published manifest stays: no shard it lists is replaced by other bytes
    (new content gets new names, :mod:`flatprep.generations`), so it stays true
    until the new manifest replaces it.
    """
    _write_journal(shard_dir, checksums)


def _shard_done(progress, shard_dir: Path, checksums: dict[str, str], info: dict) -> None:
    """A shard's task has ended: report it, and record it in the journal when it was written or kept
    (a failed one keeps its earlier entry)."""
    _report_shard(progress, info)
    if "error" not in info:
        checksums[info["file"]] = info["sha256"]
        _write_journal(shard_dir, checksums)


def _report_shard(progress, info: dict) -> None:
    if info.get("note"):
        logger.warning("%s; rewriting it", info["note"])
    if "error" in info:
        progress.item(f"{info['file']} failed: {info['error']}", level=logging.ERROR)
    else:
        progress.item(f"{info['file']} {'kept' if info['reused'] else 'written'}")


def _report_outcomes(outcomes) -> None:
    """Log what runs.tsv says was not packed, and the empty splits."""
    if outcomes.failed or outcomes.missing:
        logger.warning("%d run(s) failed at the participant level and %d done but not packed; group.html lists them",
                       len(outcomes.failed), len(outcomes.missing))
    if outcomes.absent_subjects:
        logger.warning("subjects in no split (no packed run): %s", ", ".join(outcomes.absent_subjects))
    for line in outcomes.warnings:
        logger.warning("%s", line)


def run_group(output_dir: str | Path, *, wait: bool = False, **kwargs) -> dict:
    """:func:`_run_group` under the output folder's group-level lock (one writer of shards and manifest).

    Raises
    ------
    LockError
        One line, when another group level holds the lock and ``wait`` is False.
    """
    from flatprep.locks import group_lock

    with group_lock(output_dir, wait=wait):
        return _run_group(output_dir, **kwargs)


def _run_group(output_dir: str | Path, *, bids_dir: str | Path | None, options: ShardOptions,
               scheduler: str = "in-process", nprocs: int = 1, force: bool = False,
               with_figures: bool = True, slurm: dict | None = None, selection: dict | None = None) -> dict:
    """Build shards, manifest, splits and the group QC page.

    ``selection`` holds :func:`_select` options: ``space``, ``exclude`` (rules), ``resplit``.

    Returns
    -------
    dict
        ``shards`` (list of manifest entries), ``splits`` (summary per split),
        ``problems`` (per-run files left out), ``refused`` (the per-run files
        among them that are invalid, corrupt or on another grid), ``failed``
        (one line per shard that could not be written; then the published
        manifest, if any, stays), ``reused`` (shards kept), ``left_out`` (runs
        left out by rule: ``run``, ``source``, ``reason``), ``outcomes`` (runs.tsv's failed and missing runs,
        subjects in no split, empty splits: :class:`~flatprep.pipelines.group_report.RunOutcomes`).
    """
    output_dir = Path(output_dir)
    shard_dir = output_dir / "shards"
    usable, grid, problems, refused, left_out = _runs_to_pack(output_dir, options, selection or {})
    participants = Path(bids_dir) / "participants.tsv" if bids_dir else None
    groups = read_groups(participants, options.group_column)
    splits, split_record, split_report = resolve_splits(
        shard_dir, sorted({r.entities["subject"] for r in usable}), options, groups,
        resplit=(selection or {}).get("resplit", False))
    plan = plan_shards(usable, int(grid["n_valid_pixels"]), options)
    shard_dir.mkdir(parents=True, exist_ok=True)
    recorded = _recorded_checksums(shard_dir)
    _start_journal(shard_dir, recorded)
    previous = published(shard_dir)
    keys = [shard_key(runs_i, options) for runs_i in plan]
    names = allocate_names(keys, previous, published_keys(shard_dir, previous), shard_name)
    args = [(str(shard_dir / name), runs_i, str(output_dir), grid, options, shard_index(name), force,
             recorded.get(name)) for name, runs_i in zip(names, plan)]
    infos = _write_shards(args, shard_dir, recorded, scheduler=scheduler, nprocs=nprocs, slurm=slurm)
    failed = [info["error"] for info in infos if "error" in info]
    if failed:  # the published manifest (if any) stays; the journal keeps what was written
        return {"shards": infos, "splits": {}, "problems": problems, "refused": refused, "failed": failed,
                "reused": sum(info.get("reused", False) for info in infos), "left_out": left_out}
    for info, key in zip(infos, keys):
        info["content_key"] = key
    retired = retired_entries(previous, {info["file"] for info in infos})
    rows = manifest_rows(plan, infos, splits, options)
    write_split_record(shard_dir, split_record, options)
    write_manifest(shard_dir, rows, infos, grid, options, **manifest_extras(output_dir, usable),
                   extra=_manifest_record(selection or {}, left_out, retired, split_report))
    (shard_dir / JOURNAL).unlink(missing_ok=True)  # the manifest records every shard now
    for stale in remove_unlisted(shard_dir, {info["file"] for info in infos} | {r["file"] for r in retired}):
        logger.info("removed %s (retired by an earlier group level)", stale.name)
    for line in split_report:  # sizes per split, then the recorded subjects absent now (a warning)
        logger.log(logging.INFO if line.startswith(SPLITS) else logging.WARNING, "splits: %s", line)
    summary = summary_by_split(rows)
    outcomes = run_outcomes(output_dir, rows, problems, options.split_ratios)
    _report_outcomes(outcomes)
    if with_figures:
        write_group_report(output_dir, rows, summary, grid, outcomes, options.split_ratios)
    return {"shards": infos, "splits": summary, "problems": problems, "refused": refused, "failed": [],
            "reused": sum(info["reused"] for info in infos), "left_out": left_out,
            "outcomes": outcomes}


def _runs_to_pack(output_dir: Path, options: ShardOptions, selection: dict):
    """The complete per-run files to pack and why the others are not: ``(usable, grid, problems, refused, left_out)``.

    ``refused`` lists the files that are invalid, corrupt, on another grid or of another recipe (each logged);
    ``problems`` adds runs too short for one clip and runs left out by rule; ``left_out`` holds the latter as dicts.
    """
    for path in remove_stale_temporaries(output_dir, skip=(".work",)):
        logger.info("removed %s (left by a killed run)", path)
    runs, grid, problems = collect_runs(output_dir)
    refused = list(problems)
    for line in refused:
        logger.error("refused: %s", line)
    usable = [r for r in runs if r.n_frames >= options.clip_frames]
    for run in sorted(set(runs) - set(usable), key=lambda r: r.label):
        problems.append(f"{run.source}: {run.n_frames} frames, fewer than one {options.clip_frames}-frame clip")
    if not usable:
        raise FileNotFoundError(f"{output_dir}: no complete per-run flat maps to pack; run the participant level first")
    usable, left_out, other_recipe = _select(output_dir, usable, selection)
    refused += other_recipe
    problems += other_recipe + [f"{r['source']}: left out, {r['reason']}" for r in left_out]
    return usable, grid, problems, refused, left_out


def _write_shards(args: list[tuple], shard_dir: Path, recorded: dict, *, scheduler: str, nprocs: int,
                  slurm: dict | None) -> list[dict]:
    """Run :func:`_shard_task` for each argument tuple (in process or one Dask task each), journaling each end."""
    from .runner import close_client, make_client

    client = make_client(scheduler, nprocs, slurm)
    progress = Progress(len(args), desc="group", unit="shard", logger=logger)
    infos = []
    try:
        if client is None:
            for a in args:
                infos.append(_shard_task(*a))
                _shard_done(progress, shard_dir, recorded, infos[-1])
        else:
            from .cluster import gather

            futures = {client.submit(_shard_task, *a, pure=False, key=f"write-{Path(a[0]).name}"): i
                       for i, a in enumerate(args)}
            by_index = {}
            for index, info, error in gather(client, futures):
                if error:  # the task itself did not return: its worker died
                    info = _lost_shard(Path(args[index][0]), error)
                by_index[index] = info
                _shard_done(progress, shard_dir, recorded, info)
            infos = [by_index[i] for i in sorted(by_index)]
    finally:
        progress.close()
        close_client(client)
    return infos


def _select(output_dir: Path, runs: list, selection: dict) -> tuple[list, list[dict], list[str]]:
    """Runs to pack, runs left out by rule, and one line per run refused for another recipe (each logged).

    Raises FileNotFoundError when no run is left to pack.
    """
    from flatprep.exclusion import parse_rule
    from flatprep.recipe import select_runs

    rules = [parse_rule(text) for text in selection.get("exclude") or ()]
    chosen = select_runs(output_dir, runs, space=selection.get("space"), rules=rules)
    for line in chosen.refused:
        logger.error("refused: %s", line)
    for entry in chosen.left_out:
        logger.warning("left out %s: %s", entry["run"], entry["reason"])
    if not chosen.kept:
        raise FileNotFoundError(f"{output_dir}: every per-run flat map was refused or left out (each named above); "
                                "nothing to pack")
    return chosen.kept, chosen.left_out, chosen.refused


def _manifest_record(selection: dict, left_out: list[dict], retired: list[dict], split_report: list[str]) -> dict:
    """What manifest.json records besides the shards: the selection rules and their outcome, retired shards."""
    return {"selection": {"space": selection.get("space"), "exclude": list(selection.get("exclude") or ()),
                          "left_out": left_out},
            "retired_shards": retired, "split_sizes": split_report}
