"""Consistency of a shard folder's manifest with itself and with the split record.

Each check is a small function returning one line per problem; none opens an
HDF5 file, so readers (training, embedding) can run :func:`manifest_problems`
before they trust a manifest, and :func:`flatprep.validate.validate_output`
runs them beside its file checks.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from .exceptions import ShardFormatError
from .splits import SPLITS_TSV, read_split_record


def _padded(n_frames: int, clip: int) -> int:
    return -(-n_frames // clip) * clip


def duplicated_rows(rows: list[dict]) -> list[str]:
    """A run listed more than once in manifest.tsv (its clips would be read twice)."""
    counts = Counter(row["run"] for row in rows)
    return [f"manifest.tsv: run {run} listed {n} times" for run, n in sorted(counts.items()) if n > 1]


def shards_listed_once(description: dict) -> list[str]:
    """A shard listed more than once in manifest.json."""
    counts = Counter(entry.get("file") for entry in description.get("shards", []))
    return [f"manifest.json: shard {name} listed {n} times" for name, n in sorted(counts.items()) if n > 1]


def shard_counts(rows: list[dict], description: dict) -> list[str]:
    """Each shard's ``n_runs`` and ``n_frames`` in manifest.json against the rows that point to it."""
    clip = int(description["clip_frames"])
    runs, frames = defaultdict(int), defaultdict(int)
    for row in rows:
        runs[row["shard"]] += 1
        frames[row["shard"]] = max(frames[row["shard"]], _padded(int(row["offset"]) + int(row["frames"]), clip))
    lines = []
    for entry in description.get("shards", []):
        name = entry.get("file")
        if int(entry.get("n_runs", -1)) != runs[name]:
            lines.append(f"manifest.json: shard {name} has n_runs {entry.get('n_runs')}, manifest.tsv lists "
                         f"{runs[name]} run(s) in it")
        if int(entry.get("n_frames", -1)) != frames[name]:
            lines.append(f"manifest.json: shard {name} has n_frames {entry.get('n_frames')}, its runs in "
                         f"manifest.tsv fill {frames[name]} (whole clips)")
    return lines


def run_rows(rows: list[dict], clip: int) -> list[str]:
    """Each row's clip count against its frames, and runs overlapping within a shard."""
    lines, spans = [], defaultdict(list)
    for row in rows:
        frames, clips = int(row["frames"]), int(row["clips"])
        if clips != frames // clip:
            lines.append(f"manifest.tsv: run {row['run']} has {clips} clips for {frames} frames "
                         f"(expected {frames // clip} of {clip})")
        spans[row["shard"]].append((int(row["offset"]), int(row["offset"]) + frames, row["run"]))
    for shard, ranges in sorted(spans.items()):
        ranges.sort()
        for (_, end, first), (start, _, second) in zip(ranges, ranges[1:]):
            if start < end and first != second:
                lines.append(f"manifest.tsv: runs {first} and {second} overlap in {shard} (frames {start}..{end})")
    return lines


def splits_against_record(rows: list[dict], description: dict, shard_dir: str | Path) -> list[str]:
    """Each row's split against ``splits.tsv`` (the split record kept across regroups)."""
    shard_dir = Path(shard_dir)
    try:
        record = read_split_record(shard_dir)
    except ShardFormatError as err:
        return [str(err)]
    if record is None:
        # Manifests from before split records have none; a newer one must have it.
        return ([f"{shard_dir / SPLITS_TSV}: missing (the manifest was written with a split record); "
                 "rerun the group level"] if "retired_shards" in description else [])
    lines = []
    for row in rows:
        recorded = record.assignment.get(row["subject"])
        if recorded is None:
            lines.append(f"manifest.tsv: run {row['run']}: subject {row['subject']} is not in {SPLITS_TSV}")
        elif recorded[0] != row["split"]:
            lines.append(f"manifest.tsv: run {row['run']} is labelled {row['split']}, {SPLITS_TSV} puts subject "
                         f"{row['subject']} in {recorded[0]}")
    return lines


def manifest_problems(shard_dir: str | Path, rows: list[dict], description: dict) -> list[str]:
    """Every problem of a manifest that needs no HDF5 file opened: duplicated rows or shards, counts,
    overlapping runs, splits against ``splits.tsv``."""
    return [*duplicated_rows(rows), *shards_listed_once(description), *shard_counts(rows, description),
            *run_rows(rows, int(description["clip_frames"])), *splits_against_record(rows, description, shard_dir)]
