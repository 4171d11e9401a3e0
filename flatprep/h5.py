"""The per-run flat-map HDF5 file: writer, reader and validation.

Layout (format ``flatprep-run``, version 1)::

    /frames        (n_timepoints, n_pixels) float16   z-scored BOLD on the valid pixels,
                                                    chunked one clip of frames per chunk
    /mean          (n_pixels,) float32              temporal mean before cleaning (tissue contrast)
    /std           (n_pixels,) float32              temporal std of the cleaned signal before z-scoring
    /grid/mask     (height, width) uint8            valid pixels (row-major order of /frames)
    attributes     format, format_version, flatprep_version, tr_in, tr_out,
                   n_timepoints_in, n_dropped, n_zero_variance, entities (JSON),
                   sources (JSON: path, sha256), clean_options (JSON), clean_request (JSON), inputs_key
    /grid attrs    template, template_space, template_fingerprint, pixel_size_mm,
                   bbox_mm, shape, space, method, operator_key

Files are written with ``libver=("earliest", "v114")`` (readable by HDF5 1.14)
to a temporary name in the output folder, then renamed: a reader never sees
a partial file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import atomic_path
from .exceptions import RunFileError

FORMAT = "flatprep-run"
FORMAT_VERSION = 1
LIBVER = ("earliest", "v114")
_REQUIRED_ATTRS = ("format", "format_version", "flatprep_version", "tr_in", "tr_out", "entities",
                   "sources", "clean_options", "inputs_key")
_REQUIRED_GRID_ATTRS = ("template", "template_fingerprint", "pixel_size_mm", "bbox_mm", "shape", "space",
                        "operator_key")


def open_h5(path: str | os.PathLike, *, error: type[Exception] = RunFileError, **kwargs):
    """Open an HDF5 file that flatprep reads, refusing anything that reaches outside it.

    Per-run files, shards and embeddings come from users and other machines. An
    external link or a virtual dataset would make h5py read another file
    (possibly one the user never meant to share), so such files are refused
    with one line naming the file and the object. ``kwargs`` go to ``h5py.File``.

    Returns
    -------
    h5py.File, open read-only; the caller closes it.

    Raises
    ------
    error
        The file cannot be opened, or it holds an external link or a virtual dataset.
    """
    import h5py

    path = Path(path)
    try:
        handle = h5py.File(path, "r", **kwargs)
    except OSError as err:
        raise error(f"{path}: not a readable HDF5 file ({err})") from err
    try:
        _refuse_outside_references(handle, path, error)
    except BaseException:
        handle.close()
        raise
    return handle


def _refuse_outside_references(group, path: Path, error: type[Exception]) -> None:
    import h5py

    for name in group:
        link = group.get(name, getlink=True)
        where = f"{group.name.rstrip('/')}/{name}"
        if isinstance(link, h5py.ExternalLink):
            raise error(f"{path}: {where} is an external link to {link.filename}:{link.path}; "
                        "flatprep reads only self-contained HDF5 files")
        if isinstance(link, h5py.SoftLink):
            continue  # stays inside this file; its target is checked where it lives
        item = group[name]
        if isinstance(item, h5py.Group):
            _refuse_outside_references(item, path, error)
        elif isinstance(item, h5py.Dataset) and item.is_virtual:
            raise error(f"{path}: {where} is a virtual dataset that reads other files; "
                        "flatprep reads only self-contained HDF5 files")


@dataclass(frozen=True)
class RunData:
    """Contents of a per-run file.

    Attributes
    ----------
    frames : ndarray, float16, shape (n_timepoints, n_pixels)
    mean, std : ndarray, float32, shape (n_pixels,)
    mask : ndarray, bool, shape (height, width)
    attrs : dict
        Root attributes, JSON ones decoded.
    grid : dict
        Grid attributes.
    """

    frames: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    mask: np.ndarray
    attrs: dict
    grid: dict


def to_float16(array: np.ndarray, *, source: str = "") -> np.ndarray:
    """Cast to float16, refusing values that would overflow to inf.

    Parameters
    ----------
    array : array, any float dtype
    source : str
        Named in the error message.

    Returns
    -------
    ndarray, float16, C order (new array, or ``array`` itself when it is
    already C-ordered float16)
    """
    array = np.asarray(array)
    # Largest |value| from the two extremes: no (n_timepoints, n_pixels) temporary.
    peak = float(max(np.nanmax(array), -np.nanmin(array))) if array.size else 0.0
    limit = float(np.finfo(np.float16).max)
    if not np.isfinite(peak) or peak > limit:
        raise RunFileError(f"{source}: values up to {peak:g} do not fit float16 (max {limit:g}); "
                           "z-score the data before storing it")
    return np.ascontiguousarray(array, dtype=np.float16)


def _encode(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value


def write_run(
    path: str | os.PathLike,
    *,
    frames: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    mask: np.ndarray,
    attrs: dict,
    grid_attrs: dict,
    clip_frames: int = 16,
) -> Path:
    """Write a per-run file atomically.

    Parameters
    ----------
    path : path
        Destination ``*_desc-flat_bold.h5``.
    frames : array, float16, shape (n_timepoints, n_pixels)
    mean, std : array, shape (n_pixels,)
    mask : array, bool, shape (height, width), with n_pixels True values
    attrs : dict
        Root attributes (dicts and lists are stored as JSON strings).
    grid_attrs : dict
        Attributes of ``/grid``.
    clip_frames : int, default=16
        Frames per chunk.
    """
    import h5py

    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.float16:
        raise RunFileError(f"{path}: frames must be float16, got {frames.dtype}")
    if frames.ndim != 2 or frames.shape[1] != int(np.count_nonzero(mask)):
        raise RunFileError(f"{path}: frames of shape {frames.shape} do not match the mask's "
                           f"{int(np.count_nonzero(mask))} valid pixels")
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver=LIBVER) as handle:
        chunk = (max(1, min(clip_frames, frames.shape[0])), frames.shape[1])
        dset = handle.create_dataset("frames", data=frames, chunks=chunk)
        dset.attrs["dims"] = json.dumps(["time", "pixel"])
        handle.create_dataset("mean", data=np.asarray(mean, dtype=np.float32))
        handle.create_dataset("std", data=np.asarray(std, dtype=np.float32))
        grid = handle.create_group("grid")
        grid.create_dataset("mask", data=np.asarray(mask, dtype=np.uint8))
        for key, value in grid_attrs.items():
            grid.attrs[key] = _encode(value)
        base = {"format": FORMAT, "format_version": FORMAT_VERSION, "flatprep_version": __version__}
        for key, value in (base | attrs).items():
            handle.attrs[key] = _encode(value)
    return path


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_run_attrs(path: str | os.PathLike) -> tuple[dict, dict]:
    """Root and grid attributes of a per-run file, without reading the frames."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            attrs = {k: _decode(v) for k, v in handle.attrs.items()}
            grid = {k: _decode(v) for k, v in handle["grid"].attrs.items()} if "grid" in handle else {}
    except (OSError, KeyError) as err:
        raise RunFileError(f"{path}: not a readable flat-map HDF5 file ({err})") from err
    return attrs, grid


def read_run(path: str | os.PathLike) -> RunData:
    """Read a whole per-run file (validated first)."""
    import h5py

    path = Path(path)
    problems = validate_run(path)
    if problems:
        raise RunFileError("; ".join(problems))
    with h5py.File(path, "r") as handle:
        return RunData(
            frames=handle["frames"][()],
            mean=handle["mean"][()],
            std=handle["std"][()],
            mask=handle["grid/mask"][()].astype(bool),
            attrs={k: _decode(v) for k, v in handle.attrs.items()},
            grid={k: _decode(v) for k, v in handle["grid"].attrs.items()},
        )


def validate_run(path: str | os.PathLike, *, check_values: bool = True) -> list[str]:
    """Problems with a per-run file, one line each (empty when it is valid)."""
    import h5py

    path = Path(path)
    if not path.exists():
        return [f"{path}: missing"]
    try:
        with h5py.File(path, "r") as handle:
            missing = [k for k in _REQUIRED_ATTRS if k not in handle.attrs]
            if missing:
                return [f"{path}: missing attributes {missing}"]
            if handle.attrs["format"] != FORMAT:
                return [f"{path}: format {handle.attrs['format']!r}, expected {FORMAT!r}"]
            for name in ("frames", "mean", "std", "grid/mask"):
                if name not in handle:
                    return [f"{path}: missing dataset /{name}"]
            missing = [k for k in _REQUIRED_GRID_ATTRS if k not in handle["grid"].attrs]
            if missing:
                return [f"{path}: /grid is missing attributes {missing}"]
            frames, mask = handle["frames"], handle["grid/mask"][()]
            n_pixels = int(np.count_nonzero(mask))
            problems = []
            shape = _decode(handle["grid"].attrs["shape"])
            if list(mask.shape) != list(shape):
                problems.append(f"{path}: /grid/mask has shape {mask.shape}, grid shape is {shape}")
            if frames.ndim != 2 or frames.shape[1] != n_pixels:
                problems.append(f"{path}: /frames has shape {frames.shape}, expected (*, {n_pixels}) from the mask")
            if frames.dtype != np.float16:
                problems.append(f"{path}: /frames is {frames.dtype}, expected float16")
            for name in ("mean", "std"):
                if handle[name].shape != (n_pixels,):
                    problems.append(f"{path}: /{name} has shape {handle[name].shape}, expected ({n_pixels},)")
            if check_values and not problems:
                block = 256
                for start in range(0, frames.shape[0], block):
                    if not np.isfinite(frames[start : start + block]).all():
                        problems.append(f"{path}: /frames holds NaN or Inf from frame {start}")
                        break
            return problems
    except OSError as err:
        return [f"{path}: not a readable HDF5 file ({err})"]
