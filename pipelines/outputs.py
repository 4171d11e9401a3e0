"""Output naming and writing for the derivative dataset.

Every path comes from the patterns in ``bids_specs/flatprep.json`` through
pybids ``build_path``; no file name is typed here. Every write is atomic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from flatprep import __version__
from flatprep.atomic import write_text
from .specs import load_spec

#: Files in the derivative that are not BIDS (HDF5 flat maps, tables, reports).
BIDSIGNORE = ("*.h5", "*.html", "runs.tsv", "shards/", "figures/")


def derivative_path(output_dir, entities: dict) -> Path:
    """Absolute output path for ``entities`` under ``output_dir``."""
    from bids.layout.writing import build_path

    relative = build_path(entities, load_spec("flatprep.json")["default_path_patterns"], strict=False)
    if relative is None:
        raise ValueError(f"no output path pattern fits entities {entities}")
    return Path(output_dir) / relative


def file_stamp(path) -> dict:
    """What identifies a file just written: its path, device, inode, size and modification time (ns).

    A later :func:`same_file` on an unchanged stamp shows that the file is
    still the one written: ``os.replace`` of a rewrite gives a new inode, and
    an in-place change moves the mtime (only a same-size rewrite within one
    tick of the file system's clock, by another writer while this process
    holds the run's lock, would go unseen).
    """
    stat = os.stat(path)
    return {"path": str(path), "dev": stat.st_dev, "ino": stat.st_ino, "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


def same_file(path, stamp: dict | None) -> bool:
    """True when ``path`` is still the file :func:`file_stamp` described in ``stamp``."""
    try:
        return bool(stamp) and file_stamp(path) == stamp
    except OSError:
        return False


def write_json(path: Path, value: dict) -> Path:
    """Write JSON atomically, keys sorted."""
    return write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def write_run_outputs(output_dir, entities: dict, blocks, *, shape: tuple[int, int], mean, std, mask,
                      grid_attrs: dict, stats: dict, sources: list[dict], inputs_key: str, clip_frames: int = 16,
                      events_files: list = ()) -> tuple[Path, Path]:
    """Write a run's JSON sidecar, then its ``*_desc-flat_bold.h5``, both atomically; return both paths.

    The HDF5 comes last, so its presence means the run is complete. Its frames
    come as consecutive float16 row blocks (``blocks``, ``clip_frames`` rows
    each: one chunk per block), stored and checksummed in one pass
    (:func:`flatprep.h5.write_run_blocks`), so the run's (T, n_pixels) frames
    are never held whole.

    Parameters
    ----------
    output_dir : path
        Root of the derivative dataset.
    entities : dict
        BIDS entities of the run.
    blocks : iterable of ndarray, float16, shape (<= clip_frames, n_pixels)
    shape : (n_timepoints, n_pixels)
    mean, std : ndarray, shape (n_pixels,)
        Temporal mean before cleaning and std before z-scoring, on the grid.
    mask : ndarray, bool, shape (height, width)
    grid_attrs : dict
        Grid description with the operator's space, method and key.
    stats : dict
        Cleaning statistics (``interfaces._clean_stats``).
    sources : list of dict
        Input files: path, uri, sha256.
    inputs_key : str
        Hash of inputs and options; a rerun skips a run whose file carries it.
    clip_frames : int, default=16
        Frames per HDF5 chunk.
    events_files : list of path
        HCP ``EVs/*.txt`` whose events are stored with the run.
    """
    from flatprep.h5 import write_run_blocks

    out_file = derivative_path(output_dir, entities | {"desc": "flat", "suffix": "bold", "extension": ".h5"})
    sidecar = out_file.with_suffix(".json")
    extra = {}
    if events_files:
        from flatprep.hcp import events_records, read_hcp_events

        # Onsets in seconds from the first input frame (dropped volumes included).
        extra["events"] = events_records(read_hcp_events(
            events_files, run_seconds=stats["n_timepoints_in"] * stats["tr_in"]))
    write_json(sidecar, {
        "RepetitionTime": stats["tr_out"],
        "OriginalRepetitionTime": stats["tr_in"],
        "Sources": [s["uri"] for s in sources],
        "FlatGrid": grid_attrs,
        "NumberOfFrames": int(shape[0]),
        "NonSteadyStateVolumesDropped": stats["n_dropped"],
        "ZeroVarianceVertices": stats["n_zero_variance"],
        "Cleaning": stats["clean_options"],
        "StorageDType": "float16",
        **({"VolumeSampling": stats["volume_sampling"]} if "volume_sampling" in stats else {}),
    })
    write_run_blocks(
        out_file, blocks, shape=shape, mean=mean, std=std, mask=mask, clip_frames=clip_frames,
        attrs={
            "tr_in": stats["tr_in"], "tr_out": stats["tr_out"], "n_timepoints_in": stats["n_timepoints_in"],
            "n_dropped": stats["n_dropped"], "n_zero_variance": stats["n_zero_variance"],
            "entities": entities, "sources": sources,
            "clean_options": stats["clean_options"], "clean_request": stats["clean_request"],
            "inputs_key": inputs_key, **extra,
        },
        grid_attrs=grid_attrs,
    )
    return out_file, sidecar


def write_dataset_description(output_dir, *, sources: dict[str, str]) -> Path:
    """``dataset_description.json`` (DatasetType derivative, GeneratedBy, SourceDatasets) and ``.bidsignore``."""
    output_dir = Path(output_dir)
    description = load_spec("dataset_description.json")
    for entry in description["GeneratedBy"]:
        entry["Version"] = __version__
    description["SourceDatasets"] = [{"URL": Path(p).resolve().as_uri(), "Name": name}
                                     for name, p in sources.items()]
    write_text(output_dir / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")
    return write_json(output_dir / "dataset_description.json", description)


def bids_uri(path: str | Path, dataset_names: dict[str, str]) -> str:
    """``bids:<dataset>:<relative path>`` for a file inside a named dataset, else a file URI."""
    path = Path(path).resolve()
    for name, root in sorted(dataset_names.items(), key=lambda kv: -len(kv[1])):
        try:
            return f"bids:{name}:{path.relative_to(Path(root).resolve()).as_posix()}"
        except ValueError:
            continue
    return path.as_uri()


#: QC figures of a run: (desc, suffix, caption), in report order.
FIGURES = (
    ("mean", "flatmap", "Mean before cleaning (tissue contrast)"),
    ("tsnr", "flatmap", "Temporal SNR (mean / std of the cleaned signal)"),
    ("coverage", "mask", "Pixels where the input carried signal (green) and where it had none (grey underlay)"),
    ("frames", "flatmap", "Three z-scored frames"),
    ("carpet", "carpet", "Carpet plot (z-scored pixels against time)"),
    ("motion", "motion", "Motion from the confounds (dropped volumes shaded)"),
    ("ribbon", "flatmap", "Ribbon coverage of a volume run: fraction of each pixel's weight from in-mask voxels"),
)
#: Figures drawn only when they carry information: coverage only where it is below 100 %.
OPTIONAL_FIGURES = ("coverage",)


def figure_path(output_dir, entities: dict, desc: str, suffix: str) -> Path:
    """Where a run's QC figure goes (``sub-X/figures/...``)."""
    return derivative_path(output_dir, entities | {"desc": desc, "suffix": suffix, "extension": ".png"})


def run_figure_paths(output_dir, entities: dict, *, with_motion: bool = True,
                     with_ribbon: bool = False) -> list[Path]:
    """Every QC figure a complete run has (the motion trace only with confounds, ribbon coverage only for
    volumes; not the :data:`OPTIONAL_FIGURES`, which depend on the data)."""
    skipped = set(OPTIONAL_FIGURES) | ({"motion"} if not with_motion else set())
    skipped |= {"ribbon"} if not with_ribbon else set()
    return [figure_path(output_dir, entities, desc, suffix) for desc, suffix, _ in FIGURES if desc not in skipped]


def existing_figures(output_dir, entities: dict) -> list[tuple[str, str]]:
    """(caption, path relative to output_dir) of the run's figures that exist.

    A caption ends with the figure's own "Description" (its colour scale,
    times shown, trace colours), read from the PNG's text chunks.
    """
    from flatprep.render import read_png_text

    found = []
    for desc, suffix, caption in FIGURES:
        path = figure_path(output_dir, entities, desc, suffix)
        if path.exists():
            detail = read_png_text(path).get("Description")
            found.append((f"{caption}. {detail}" if detail else caption,
                          path.relative_to(Path(output_dir)).as_posix()))
    return found


def _run_label(entities: dict) -> str:
    """``sub-01 task-rest run-1 space-fsLR``: a run's entities as a figure title."""
    short = {"subject": "sub", "session": "ses", "acquisition": "acq", "direction": "dir", "space": "space",
             "density": "den", "resolution": "res"}
    order = ("subject", "session", "task", "acquisition", "ceagent", "reconstruction", "direction", "run", "echo",
             "space", "density", "resolution")  # BIDS file-name order; other entities follow
    ranked = sorted(entities, key=lambda k: order.index(k) if k in order else len(order))
    return " ".join(f"{short.get(k, k)}-{entities[k]}" for k in ranked)


def run_figures(output_dir, entities: dict, flat_file, confounds_file=None, *,
                ribbon_coverage=None) -> tuple[list, dict]:
    """Write one run's QC figures; return (caption, relative path) pairs and a QC summary.

    ``ribbon_coverage`` ((n_pixels,) in 0..1, volume runs) adds the ribbon coverage map.
    The coverage map is drawn only where some valid pixel had no signal (a
    stale one from an earlier run is removed otherwise).
    """
    from flatprep.clean import temporal_snr
    from flatprep.flatmap import grid_from_description
    from flatprep.h5 import open_h5, read_run_attrs
    from flatprep.io import read_confounds
    from flatprep.landmarks import grid_landmarks
    from flatprep.qc import (carpet_pixels, motion_summary, run_quality, save_carpet_png, save_flatmap_png,
                             save_frames_png, save_motion_png)

    attrs, grid_attrs = read_run_attrs(flat_file)
    grid = grid_from_description(grid_attrs)
    pixel_hemi = np.asarray(grid.pixel_hemi)
    marks = grid_landmarks(grid)
    network = None if marks is None else marks.network
    rows = carpet_pixels(pixel_hemi, network=network)
    with open_h5(flat_file) as handle:
        shown, frames, carpet = _figure_frames(handle["frames"], rows)
        mean, std = handle["mean"][()], handle["std"][()]
    signal = std > 0
    tr = float(attrs["tr_out"])
    label = _run_label(entities)
    path = {desc: figure_path(output_dir, entities, desc, suffix) for desc, suffix, _ in FIGURES}
    save_flatmap_png(grid, mean, path["mean"], title=f"{label}: temporal mean before cleaning", cmap="gray",
                     colorbar_label="signal (input units)", signal=signal)
    save_flatmap_png(grid, temporal_snr(mean, std), path["tsnr"], title=f"{label}: temporal SNR", cmap="viridis",
                     vmin=0, colorbar_label="tSNR (mean / SD)", signal=signal)
    if signal.all():
        path["coverage"].unlink(missing_ok=True)
    else:
        save_flatmap_png(grid, np.ones(grid.n_pixels), path["coverage"], cmap="Greens", vmin=0, vmax=1.5,
                         title=f"{label}: signal in {signal.mean():.1%} of valid pixels (green), none in the rest "
                               "(grey)", signal=signal, colorbar=False)
    save_frames_png(grid, frames, path["frames"], times=[float(t * tr) for t in shown])
    save_carpet_png(carpet, path["carpet"], tr=tr, pixel_hemi=pixel_hemi[rows],
                    network=None if network is None else network[rows], n_rows=len(rows))
    summary = run_quality(mean, std)
    if confounds_file:
        confounds = read_confounds(confounds_file)
        save_motion_png(confounds, path["motion"], tr=float(attrs["tr_in"]), n_dropped=int(attrs["n_dropped"]))
        summary |= motion_summary(confounds)
    if ribbon_coverage is not None:
        save_flatmap_png(grid, ribbon_coverage, path["ribbon"], title=f"{label}: ribbon coverage", cmap="magma",
                         vmin=0, vmax=1, colorbar_label="in-mask fraction")
        summary["ribbon_coverage_median"] = float(np.median(ribbon_coverage))
    return existing_figures(output_dir, entities), summary


def _figure_frames(dataset, columns: np.ndarray, *, n_shown: int = 3, block: int = 64):
    """What the figures read of a run's (T, n_pixels) frames, ``block`` frames at a time into one buffer.

    Returns the indices of ``n_shown`` evenly spaced frames, those frames
    ((n_shown, n_pixels)) and the carpet columns ((T, len(columns))), all
    float16: the whole run is never held (137 MB for 864 frames at 1.2 mm).
    """
    n_frames, n_pixels = dataset.shape
    shown = np.linspace(0, n_frames - 1, n_shown).astype(int)
    frames = np.empty((n_shown, n_pixels), np.float16)
    carpet = np.empty((n_frames, len(columns)), np.float16)
    buffer = np.empty((min(block, n_frames), n_pixels), np.float16)
    for start in range(0, n_frames, block):
        stop = min(start + block, n_frames)
        piece = buffer[: stop - start]
        dataset.read_direct(piece, np.s_[start:stop])
        carpet[start:stop] = piece[:, columns]
        for index, frame in enumerate(shown):
            if start <= frame < stop:
                frames[index] = piece[frame - start]
    return shown, frames, carpet

