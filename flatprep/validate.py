"""Check a flatprep output folder: per-run files, shards and manifest agree.

:func:`validate_output` returns one line per problem (an empty list means the
folder is consistent). It checks that every file opens, that shapes and grids
agree, that checksums match (each shard's sha256 against manifest.json, each
per-run file's data against the content checksum stored in it), that no
subject (or group) appears in two splits, that nothing listed is missing,
that nothing present is unlisted (shards retired by the last regroup aside),
that no temporary file of an interrupted write is left behind, and the
manifest's own consistency (:mod:`flatprep.manifest_checks`: duplicated rows
or shards, counts, split labels against ``splits.tsv``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .atomic import temporary_files
from .cache import file_digest
from .exceptions import ShardFormatError
from .h5 import open_h5, validate_run
from .manifest_checks import manifest_problems
from .shards import FORMAT, JOURNAL, read_hashed, read_manifest


def _check_shard(path: Path, entry: dict, description: dict) -> tuple[list[str], np.ndarray | None, int]:
    """Problems of one shard file, its mask and its frame count."""
    problems = []
    if file_digest(path) != entry.get("sha256"):
        problems.append(f"{path}: sha256 differs from manifest.json (the file changed or is corrupt)")
    try:
        with open_h5(path, error=ShardFormatError) as handle:
            if handle.attrs.get("format") != FORMAT:
                return problems + [f"{path}: not a flatprep shard (format {handle.attrs.get('format')!r})"], None, 0
            frames, mask = handle["frames"], handle["grid/mask"][()].astype(bool)
            n_pixels = int(description["grid"]["n_valid_pixels"])
            if frames.shape[1] != n_pixels or int(mask.sum()) != n_pixels:
                problems.append(f"{path}: /frames has {frames.shape[1]} pixels and the mask {int(mask.sum())}, "
                                f"the manifest grid has {n_pixels}")
            if int(handle.attrs.get("clip_frames", -1)) != int(description["clip_frames"]):
                problems.append(f"{path}: clip_frames {handle.attrs.get('clip_frames')} differs from the manifest "
                                f"({description['clip_frames']})")
            # Reading every chunk proves the data decompresses and is finite.
            step = int(description["clip_frames"]) * 64
            for start in range(0, frames.shape[0], step):
                if not np.isfinite(frames[start:start + step]).all():
                    problems.append(f"{path}: NaN or Inf in frames {start}..{start + step}")
                    break
            return problems, mask, int(frames.shape[0])
    except ShardFormatError as err:  # unreadable, or it reaches outside itself
        return problems + [f"{path}: cannot be read ({str(err).removeprefix(f'{path}: ')})"], None, 0
    except (OSError, KeyError, ValueError) as err:
        return problems + [f"{path}: cannot be read ({err})"], None, 0


def _check_listed_run(source: Path, recorded_sha256: str) -> list[str]:
    """Problems of a per-run file that manifest.tsv lists, from one read of it: its bytes are hashed
    and its structure and content checksum checked from memory (one disk read per run, not two)."""
    try:
        data, digest = read_hashed(source)
    except OSError as err:
        return [f"{source}: cannot be read ({err})"]
    changed = digest != recorded_sha256
    found = [f"{source}: sha256 differs from manifest.tsv (changed since the group level)"] if changed else []
    return found + validate_run(source, check_values=False, data=data)


def _leftovers(output_dir: Path) -> list[str]:
    """Temporary files of interrupted writes (the Nipype work folder aside) and sidecars without their run file."""
    lines = [f"{path}: temporary file of an interrupted write (a killed run, or a job still writing); "
             "the next flatprep run removes it" for path in temporary_files(output_dir, skip=(".work",))]
    for sidecar in sorted(output_dir.glob("sub-*/**/func/*_desc-flat_bold.json")):
        if not sidecar.with_suffix(".h5").exists():
            lines.append(f"{sidecar}: sidecar without its .h5 (an interrupted run); rerun the participant level")
    return lines


def _unfinished(shard_dir: Path) -> list[str]:
    """A journal beside a manifest: a later group level wrote shards and did not publish them."""
    if not (shard_dir / JOURNAL).exists():
        return []
    return [f"{shard_dir / JOURNAL}: a group level started writing shards and did not finish; the manifest still "
            "describes the previous shard set; rerun the group level"]


def _journal_files(shard_dir: Path) -> set[str]:
    """Shard files named in the journal of an unfinished group level (empty without one)."""
    try:
        return set(json.loads((shard_dir / JOURNAL).read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def _stored_length(path: Path, entry: dict, n_frames: int) -> list[str]:
    """The shard's /frames length against its ``n_frames`` in manifest.json."""
    if int(entry.get("n_frames", -1)) == n_frames:
        return []
    return [f"{path}: /frames has {n_frames} frames, manifest.json says n_frames {entry.get('n_frames')}"]


def _run_files(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("sub-*/**/func/*_desc-flat_bold.h5"))


def validate_output(output_dir: str | Path) -> list[str]:
    """Every problem found in ``output_dir`` (a flatprep derivative with shards).

    Without a manifest (the group level has not run), the per-run files and
    temporaries are still checked.
    """
    output_dir = Path(output_dir)
    shard_dir = output_dir / "shards"
    try:
        rows, description = read_manifest(shard_dir)
    except ShardFormatError as err:
        checked = [line for path in _run_files(output_dir) for line in validate_run(path, check_values=False)]
        unfinished = [f"{shard_dir / JOURNAL}: a group level started writing shards and did not finish; rerun it "
                      "(it keeps the shards it can verify)"] if (shard_dir / JOURNAL).exists() else []
        return [str(err), *unfinished, *checked, *_leftovers(output_dir)]
    problems: list[str] = manifest_problems(shard_dir, rows, description) + _unfinished(shard_dir)
    listed_shards = {s["file"]: s for s in description.get("shards", [])}
    retired = {s.get("file") for s in description.get("retired_shards", [])}
    retired |= _journal_files(shard_dir)  # written by an unfinished regroup: reported once, by _unfinished
    clip = int(description["clip_frames"])
    masks, lengths = {}, {}
    for name, entry in sorted(listed_shards.items()):
        path = shard_dir / name
        if not path.exists():
            problems.append(f"{path}: listed in manifest.json but missing")
            continue
        found, mask, n_frames = _check_shard(path, entry, description)
        problems += found
        if mask is not None:
            masks[name], lengths[name] = mask, n_frames
            problems += _stored_length(path, entry, n_frames)
    if masks:
        first_name, first = next(iter(masks.items()))
        for name, mask in masks.items():
            if mask.shape != first.shape or not np.array_equal(mask, first):
                problems.append(f"{shard_dir / name}: grid mask differs from {first_name}")
    for path in sorted(shard_dir.glob("*.h5")):
        if path.name not in listed_shards and path.name not in retired:
            problems.append(f"{path}: shard present but not listed in manifest.json")

    listed_sources = set()
    for row in rows:
        label = row["run"]
        if row["shard"] not in listed_shards:
            problems.append(f"manifest.tsv: run {label} points to shard {row['shard']}, which manifest.json does not list")
        offset, frames = int(row["offset"]), int(row["frames"])
        if offset % clip:
            problems.append(f"manifest.tsv: run {label} starts at frame {offset}, not a multiple of {clip}")
        if row["shard"] in lengths and offset + frames > lengths[row["shard"]]:
            problems.append(f"manifest.tsv: run {label} ends at frame {offset + frames}, beyond the "
                            f"{lengths[row['shard']]} frames of {row['shard']}")
        source = output_dir / row["source"]
        listed_sources.add(source.resolve())
        if not source.exists():
            problems.append(f"{source}: listed in manifest.tsv (run {label}) but missing")
            continue
        problems += _check_listed_run(source, row["source_sha256"])
    problems += split_problems(rows)
    # Runs the group level left out by rule (another space, a duplicate, --exclude) are accounted for.
    listed_sources |= {(output_dir / e["source"]).resolve()
                       for e in (description.get("selection") or {}).get("left_out", [])}
    for path in _run_files(output_dir):
        if path.resolve() not in listed_sources:
            problems.append(f"{path}: per-run file present but not listed in manifest.tsv (rerun the group level)")
            problems += validate_run(path, check_values=False)
    return problems + _leftovers(output_dir)


def split_problems(rows: list[dict]) -> list[str]:
    """manifest.tsv rows whose subject (or group) appears in several splits: one line each.

    Opens no file, so ``flatprep-train`` runs it (with
    :func:`flatprep.manifest_checks.manifest_problems`) before every start.
    """
    split_of, group_split = defaultdict(set), defaultdict(set)
    for row in rows:
        split_of[row["subject"]].add(row["split"])
        group_split[row["group"]].add(row["split"])
    problems = [f"manifest.tsv: subject {subject} appears in several splits ({', '.join(sorted(splits))})"
                for subject, splits in sorted(split_of.items()) if len(splits) > 1]
    return problems + [f"manifest.tsv: group {group} appears in several splits ({', '.join(sorted(splits))})"
                       for group, splits in sorted(group_split.items())
                       if len(splits) > 1 and not group.startswith("sub-")]
