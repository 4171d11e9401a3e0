"""Training shards: pack per-run flat maps into a few large HDF5 files plus a manifest.

See ``docs/formats.md`` for the layout. In short: each shard holds the frames
of whole runs one after the other in ``/frames`` (n_frames, n_pixels),
chunked one clip per chunk, every run starting at a multiple of the clip
length; ``manifest.tsv`` lists every run with its shard, offset, subject and
split; ``manifest.json`` records the options and each shard's checksum.

The plan (which run goes to which shard, which subject to which split) is a
pure function of the runs and the options, so the same inputs always give
the same shards and splits.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Literal, get_args
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import write_text
from .cache import file_digest
from .config import check_fields, rule
from .exceptions import RunFileError, ShardFormatError, ShardOptionsError
from .h5 import create_h5, open_h5, read_run_attrs, validate_run
from .splits import assign_splits  # noqa: F401  (re-exported: the split rule lives in splits.py)
from .tables import read_participants, read_tsv, write_tsv

FORMAT = "flatprep-shard"
MANIFEST_FORMAT = "flatprep-manifest"
FORMAT_VERSION = 1
#: Shard file -> sha256 of the shards a group level has written so far; removed once the manifest is written.
JOURNAL = "journal.json"
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["run", "shard", "offset", "frames", "clips", "subject", "session", "task", "acquisition",
                    "run_number", "space", "tr", "first_frame_s", "split", "group", "source", "source_sha256"]
#: Columns added after the first manifests: read when present, not required.
_OPTIONAL_COLUMNS = ("first_frame_s",)
Compression = Literal["none", "blosc-lz4"]
COMPRESSIONS = get_args(Compression)
_GRID_KEYS_DROPPED = ("space", "method", "operator_key")


@dataclass(frozen=True)
class RunEntry:
    """One complete per-run flat-map file.

    Attributes
    ----------
    label : str
        e.g. ``sub-01_task-rest_space-fsLR``.
    source : str
        Path relative to the output folder.
    source_sha256 : str
    n_frames : int
    tr : float
        Repetition time after cleaning, s.
    entities : dict
        subject, session, task, acquisition, run, space.
    first_frame_s : float
        Time of the first stored frame from the scan's first volume (dropped volumes), s.
    """

    label: str
    source: str
    source_sha256: str
    n_frames: int
    tr: float
    entities: dict = field(hash=False)
    first_frame_s: float = 0.0


@dataclass(frozen=True)
class ShardOptions:
    """How runs are packed and split.

    Attributes
    ----------
    target_bytes : int
        Shards are filled with whole runs up to about this size (default 1 GB).
    clip_frames : int
        Frames per clip and per HDF5 chunk.
    compression : str
        ``"none"`` or ``"blosc-lz4"`` (hdf5plugin).
    split_ratios : tuple of float
        Fractions of subjects (or groups) in train, val, test.
    split_seed : int
        Key of the per-subject hash that places each subject (:mod:`flatprep.splits`).
    group_column : str or None
        participants.tsv column whose value keeps related subjects (e.g. a family id) in one split.
    """

    target_bytes: int = field(default=1_000_000_000, metadata=rule("an int >= 1", lambda v: v >= 1))
    clip_frames: int = field(default=16, metadata=rule("an int >= 1", lambda v: v >= 1))
    compression: Compression = "none"
    split_ratios: tuple[float, float, float] = field(default=(0.8, 0.1, 0.1), metadata=rule(
        "three non-negative fractions (train, val, test) summing to 1",
        lambda r: min(r) >= 0 and math.isclose(sum(r), 1.0, abs_tol=1e-6)))
    split_seed: int = 0
    group_column: str | None = None

    def __post_init__(self):
        check_fields(self, ShardOptionsError)


# --------------------------------------------------------------------------- collecting runs


def read_hashed(path: Path) -> tuple[bytes, str]:
    """A file's bytes and their sha256, from one read: what is checked is what is hashed.

    Raises OSError when the file cannot be read.
    """
    data = Path(path).read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def collect_runs(output_dir: str | Path) -> tuple[list[RunEntry], dict, list[str]]:
    """Complete per-run files under ``output_dir``, their common grid, and problems.

    Each file is read once, one at a time: its bytes are hashed (the
    ``source_sha256`` that :func:`write_shard` checks again) and checked against
    the content checksum stored in them, from memory.

    Returns
    -------
    runs : list of RunEntry, sorted by label
    grid : dict
        The grid attributes shared by every run (without space/method/operator key).
    problems : list of str
        One line per file left out (invalid, corrupt, or on another grid).
    """
    output_dir = Path(output_dir)
    runs, problems, grid, grid_source = [], [], None, None
    for path in sorted(output_dir.glob("sub-*/**/func/*_desc-flat_bold.h5")):
        try:
            data, sha256 = read_hashed(path)
        except OSError as err:
            problems.append(f"{path}: cannot be read ({err})")
            continue
        issues = validate_run(path, check_values=False, data=data)
        if issues:
            problems.extend(issues)
            continue
        attrs, run_grid = read_run_attrs(path, data=data)
        common = {k: v for k, v in run_grid.items() if k not in _GRID_KEYS_DROPPED}
        if grid is None:
            grid, grid_source = common, path
        elif common != grid:
            problems.append(f"{path}: grid {common.get('shape')} at {common.get('pixel_size_mm')} mm differs from "
                            f"{grid_source.name} ({grid.get('shape')} at {grid.get('pixel_size_mm')} mm); "
                            "rerun the participant level with one grid")
            continue
        with open_h5(path, data=data) as handle:
            n_frames = int(handle["frames"].shape[0])
        entities = dict(attrs["entities"])
        label = path.name.replace("_desc-flat_bold.h5", "")
        # The first stored frame's time from the scan's first volume (dropped volumes before it): what
        # labelling clips from events needs when only the shards travel.
        first = int(attrs.get("n_dropped") or 0) * float(attrs["tr_in"])
        runs.append(RunEntry(label, path.relative_to(output_dir).as_posix(), sha256, n_frames,
                             float(attrs["tr_out"]), entities, first))
    return runs, grid or {}, problems


# --------------------------------------------------------------------------- splits


def read_groups(participants_tsv: str | Path | None, column: str | None) -> dict[str, str]:
    """subject -> group value from a participants.tsv column (empty if no column)."""
    if column is None:
        return {}
    path = Path(participants_tsv) if participants_tsv else None
    if path is None or not path.exists():
        raise ShardFormatError(f"{path}: participants.tsv needed for --split-group-column {column!r}")
    rows = read_participants(path, error=ShardFormatError)
    first = next(iter(rows.values()), {})
    if rows and column not in first:
        raise ShardFormatError(f"{path}: no column {column!r} (columns: {', '.join(first)})")
    return {subject: row[column] for subject, row in rows.items()}


# --------------------------------------------------------------------------- planning


def _padded(n_frames: int, clip_frames: int) -> int:
    return int(math.ceil(n_frames / clip_frames) * clip_frames)


def plan_shards(runs: list[RunEntry], n_pixels: int, options: ShardOptions) -> list[list[RunEntry]]:
    """Group whole runs into shards of about ``target_bytes`` (runs in label order)."""
    frame_bytes = 2 * n_pixels
    shards, current, size = [], [], 0
    for run in sorted(runs, key=lambda r: r.label):
        run_bytes = _padded(run.n_frames, options.clip_frames) * frame_bytes
        if current and size + run_bytes > options.target_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(run)
        size += run_bytes
    if current:
        shards.append(current)
    return shards


def shard_name(index: int) -> str:
    return f"shard-{index:05d}_flatclips.h5"


def shard_key(runs: list[RunEntry], options: ShardOptions) -> str:
    """Hash of a shard's content: its runs' checksums and the packing options."""
    text = json.dumps({"runs": [(r.label, r.source_sha256) for r in runs], "clip_frames": options.clip_frames,
                       "compression": options.compression, "version": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- writing


def _compression_kwargs(compression: str) -> dict:
    if compression == "blosc-lz4":
        import hdf5plugin

        return dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    return {}


def existing_shard_matches(path: Path, key: str, recorded_sha256: str | None) -> bool | str:
    """Whether the shard at ``path`` can be kept as it is.

    Returns
    -------
    True
        It was written for the same content key and its bytes still have the
        sha256 recorded for it when it was written (``recorded_sha256``, from
        manifest.json or the group level's journal).
    False
        Missing, or written for other runs or options (rewrite it).
    str
        One line saying why the file cannot be trusted (rewrite it and report this).
    """
    if not path.exists():
        return False
    try:
        with open_h5(path, error=ShardFormatError) as handle:
            if handle.attrs.get("content_key") != key or "frames" not in handle:
                return False
    except ShardFormatError as err:
        return str(err)
    if recorded_sha256 is None:
        return f"{path}: no checksum was recorded when it was written, so the file cannot be verified"
    if file_digest(path) != recorded_sha256:
        return f"{path}: sha256 differs from the one recorded when it was written (the file changed or is corrupt)"
    return True


def _run_frames(path: Path, sha256: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames and mask of a per-run file that still has the checksum it was collected with.

    The file is read once: the bytes that are hashed are the bytes that are
    packed (no second read that could see another file, and no memo of digests
    that stops helping beyond a few hundred runs or in another process).
    """
    try:
        data, digest = read_hashed(path)
    except OSError as err:
        raise RunFileError(f"{path}: cannot be read ({err})") from err
    if digest != sha256:
        raise ShardFormatError(f"{path}: changed since it was checked (sha256 differs); rerun the group level")
    with open_h5(path, data=data) as handle:
        try:
            return handle["frames"][()], handle["grid/mask"][()]
        except OSError as err:
            raise RunFileError(f"{path}: data cannot be read ({err})") from err


def write_shard(path: str | Path, runs: list[RunEntry], output_dir: str | Path, grid: dict,
                options: ShardOptions, *, index: int) -> dict:
    """Write one shard atomically; return its manifest entry and the runs' offsets.

    Each run's file must still have the sha256 it was collected with. A failed
    write (e.g. a full disk) raises :class:`~flatprep.exceptions.OutputWriteError`
    naming the shard and leaves nothing behind.

    Returns
    -------
    dict
        ``file``, ``sha256``, ``n_runs``, ``n_frames``, ``bytes``, ``offsets`` (label -> first frame).
    """
    path, output_dir = Path(path), Path(output_dir)
    clip = options.clip_frames
    offsets, total = {}, 0
    for run in runs:
        offsets[run.label] = total
        total += _padded(run.n_frames, clip)
    n_pixels = int(grid["n_valid_pixels"])
    with create_h5(path) as handle:
        frames = handle.create_dataset("frames", shape=(total, n_pixels), dtype=np.float16,
                                       chunks=(clip, n_pixels), fillvalue=0, **_compression_kwargs(options.compression))
        mask = None
        for run in runs:
            data, run_mask = _run_frames(output_dir / run.source, run.source_sha256)
            mask = run_mask if mask is None else mask
            if data.shape != (run.n_frames, n_pixels):
                raise ShardFormatError(f"{run.source}: frames of shape {data.shape}, expected "
                                       f"({run.n_frames}, {n_pixels}); the file changed while packing")
            frames[offsets[run.label]:offsets[run.label] + run.n_frames] = data
        handle.create_group("grid").create_dataset("mask", data=mask)
        handle.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "flatprep_version": __version__, "shard": index,
            "clip_frames": clip, "compression": options.compression, "n_runs": len(runs),
            "grid": json.dumps(grid, sort_keys=True), "content_key": shard_key(runs, options),
        })
    return {"file": path.name, "sha256": file_digest(path), "n_runs": len(runs), "n_frames": total,
            "bytes": path.stat().st_size, "offsets": offsets}


def manifest_rows(shards: list[list[RunEntry]], infos: list[dict], splits: dict, options: ShardOptions) -> list[dict]:
    """One manifest row per run."""
    rows = []
    for runs, info in zip(shards, infos):
        for run in runs:
            e = run.entities
            split, group = splits[e["subject"]]
            rows.append({
                "run": run.label, "shard": info["file"], "offset": info["offsets"][run.label],
                "frames": run.n_frames, "clips": run.n_frames // options.clip_frames, "subject": e["subject"],
                "session": e.get("session"), "task": e.get("task"), "acquisition": e.get("acquisition"),
                "run_number": e.get("run"), "space": e.get("space"), "tr": run.tr,
                "first_frame_s": run.first_frame_s, "split": split,
                "group": group, "source": run.source, "source_sha256": run.source_sha256,
            })
    return rows


def _manifest_cell(value) -> str:
    # str(), not format_cell: TRs and offsets keep their full repr so they read back exactly.
    return "n/a" if value is None else str(value)


#: Manifest columns that hold BIDS entities of the run (``run_number`` is the ``run`` entity).
ENTITY_COLUMNS = {"subject": "subject", "session": "session", "task": "task", "acquisition": "acquisition",
                  "run_number": "run", "space": "space"}


def encode_mask(mask: np.ndarray) -> dict:
    """A (H, W) bool mask as JSON: its shape and row-major run lengths, starting with a False run."""
    flat = np.asarray(mask, dtype=bool).ravel()
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    lengths = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        lengths = [0] + lengths
    return {"shape": list(np.shape(mask)), "runs": lengths}


def decode_mask(encoded: dict, source: str | Path = "manifest.json") -> np.ndarray:
    """Inverse of :func:`encode_mask`: (H, W) bool ndarray; a bad entry raises ShardFormatError."""
    try:
        shape = tuple(int(n) for n in encoded["shape"])
        lengths = np.asarray(encoded["runs"], dtype=np.int64)
        if len(shape) != 2 or (lengths < 0).any() or lengths.sum() != shape[0] * shape[1]:
            raise ValueError(f"run lengths sum to {int(lengths.sum())} for shape {shape}")
    except (KeyError, TypeError, ValueError) as err:
        raise ShardFormatError(f"{source}: mask is not a valid run-length encoding ({err}); "
                               "regenerate the shards") from err
    values = np.arange(lengths.size) % 2 == 1
    return np.repeat(values, lengths).reshape(shape)


def shard_folder(root: str | Path) -> Path:
    """The shards folder of ``root``: ``root/shards``, or ``root`` itself when it holds manifest.json."""
    root = Path(root)
    return root if (root / "manifest.json").is_file() and not (root / "shards").is_dir() else root / "shards"


def manifest_extras(output_dir: str | Path, runs: list[RunEntry]) -> dict:
    """The grid mask and the cleaning request of the packed runs: ``mask`` and ``clean_request``
    keyword arguments for :func:`write_manifest` (taken from the first run; the runs share one grid)."""
    from .h5 import open_h5

    if not runs:
        return {}
    path = Path(output_dir) / runs[0].source
    attrs, _ = read_run_attrs(path)
    with open_h5(path, error=ShardFormatError) as handle:
        mask = handle["grid/mask"][()].astype(bool)
    return {"mask": mask, "clean_request": attrs.get("clean_request")}


def write_manifest(shard_dir: str | Path, rows: list[dict], infos: list[dict], grid: dict,
                   options: ShardOptions, *, mask: np.ndarray | None = None,
                   clean_request: dict | None = None, extra: dict | None = None) -> tuple[Path, Path]:
    """Write manifest.tsv and manifest.json atomically.

    manifest.json describes the shards fully, so a copied ``shards/`` folder
    is all training, embedding and probing need: clip length, grid description
    and ``mask`` (:func:`encode_mask`), the cleaning request (how new scans must
    be cleaned to match), the entity columns and the format version. ``extra``
    adds keys (the group level's run selection, retired shards, split sizes).
    """
    shard_dir = Path(shard_dir)
    tsv = write_tsv(shard_dir / "manifest.tsv", rows, MANIFEST_COLUMNS, fmt=_manifest_cell)
    description = {
        "format": MANIFEST_FORMAT, "format_version": FORMAT_VERSION, "flatprep_version": __version__,
        "clip_frames": options.clip_frames, "compression": options.compression, "grid": grid,
        "mask": None if mask is None else encode_mask(mask), "clean_request": clean_request,
        "columns": MANIFEST_COLUMNS, "entity_columns": ENTITY_COLUMNS,
        "splits": {"ratios": dict(zip(SPLITS, options.split_ratios)), "seed": options.split_seed,
                   "group_column": options.group_column},
        "shards": [{k: v for k, v in info.items() if k not in ("offsets", "note", "reused")} for info in infos],
        **(extra or {}),
    }
    js = write_text(shard_dir / "manifest.json", json.dumps(description, indent=2, sort_keys=True) + "\n")
    return tsv, js


def read_manifest(shard_dir: str | Path) -> tuple[list[dict], dict]:
    """manifest.tsv rows (strings, ``n/a`` as None) and manifest.json."""
    shard_dir = Path(shard_dir)
    tsv, js = shard_dir / "manifest.tsv", shard_dir / "manifest.json"
    for path in (tsv, js):
        if not path.exists():
            raise ShardFormatError(f"{path}: missing; run the group level first")
    try:
        description = json.loads(js.read_text())
    except json.JSONDecodeError as err:
        raise ShardFormatError(f"{js}: not valid JSON ({err})") from err
    required = [c for c in MANIFEST_COLUMNS if c not in _OPTIONAL_COLUMNS]
    return read_tsv(tsv, required=required, error=ShardFormatError), description


def summary_by_split(rows: list[dict]) -> dict:
    """Runs, subjects, frames and hours of data per split."""
    out = {}
    for split in SPLITS:
        chosen = [r for r in rows if r["split"] == split]
        seconds = sum(int(r["frames"]) * float(r["tr"]) for r in chosen)
        out[split] = {"runs": len(chosen), "subjects": len({r["subject"] for r in chosen}),
                      "frames": sum(int(r["frames"]) for r in chosen), "hours": round(seconds / 3600, 3)}
    return out

