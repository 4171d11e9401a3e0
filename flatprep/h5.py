"""The per-run flat-map HDF5 file: writer, reader and validation.

Layout (format ``flatprep-run``, version 2)::

    /frames        (n_timepoints, n_pixels) float16   z-scored BOLD on the valid pixels,
                                                    chunked one clip of frames per chunk
    /mean          (n_pixels,) float32              temporal mean before cleaning (tissue contrast)
    /std           (n_pixels,) float32              temporal std of the cleaned signal before z-scoring
    /grid/mask     (height, width) uint8            valid pixels (row-major order of /frames)
    attributes     format, format_version, flatprep_version, content_sha256, tr_in, tr_out,
                   n_timepoints_in, n_dropped, n_zero_variance, entities (JSON),
                   sources (JSON: path, sha256), clean_options (JSON), clean_request (JSON), inputs_key
    /grid attrs    template, template_space, template_fingerprint, pixel_size_mm,
                   bbox_mm, shape, space, method, operator_key

``content_sha256`` (new in version 2) is computed from the arrays while they are
written (:func:`content_sha256`); :func:`validate_run` recomputes it from the
file, so a rerun, the group level and ``flatprep-validate`` trust only files
whose data still match. Version 1 files (no checksum) are still read, with a
warning, but never counted as complete.

Files are written with ``libver=("earliest", "v114")`` (readable by HDF5 1.14)
through :func:`create_h5`: to a temporary name in the output folder, then
renamed, so a reader never sees a partial file, and a full disk ends in one
:class:`~flatprep.exceptions.OutputWriteError` naming the file (HDF5 itself
crashes the process when a write fails while it closes a chunked dataset).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import atomic_path, write_error
from .config import json_or_text
from .exceptions import RunFileError

FORMAT = "flatprep-run"
FORMAT_VERSION = 2
#: Root attribute holding the SHA-256 of the datasets' contents (format version 2 on).
CHECKSUM_ATTR = "content_sha256"
_CHECKSUMMED = ("frames", "mean", "std", "grid/mask")
_BLOCK_BYTES = 64 << 20
LIBVER = ("earliest", "v114")
_REQUIRED_ATTRS = ("format", "format_version", "flatprep_version", "tr_in", "tr_out", "entities",
                   "sources", "clean_options", "inputs_key")
_REQUIRED_GRID_ATTRS = ("template", "template_fingerprint", "pixel_size_mm", "bbox_mm", "shape", "space",
                        "operator_key")


def open_h5(path: str | os.PathLike, *, error: type[Exception] = RunFileError, data: bytes | None = None, **kwargs):
    """Open an HDF5 file that flatprep reads, refusing anything that reaches outside it.

    Per-run files, shards and embeddings come from users and other machines. An
    external link or a virtual dataset would make h5py read another file
    (possibly one the user never meant to share), so such files are refused
    with one line naming the file and the object. ``kwargs`` go to ``h5py.File``.
    ``data``, the file's bytes when the caller has read them already (to hash
    them in the same pass), is parsed from memory; ``path`` then only names the
    file in messages.

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
        handle = h5py.File(path if data is None else io.BytesIO(data), "r", **kwargs)
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


class _LatchedFile:
    """A file object for h5py's ``fileobj`` driver that never lets a write fail inside HDF5.

    The first ``OSError`` (disk full, quota, I/O error) is kept and every later
    write is dropped: HDF5 then finishes and closes the file normally, and the
    caller raises the kept error. Letting the error reach HDF5 instead leaves
    it unable to close the file, and the process dies at exit (SIGSEGV).
    """

    def __init__(self, raw):
        self.raw = raw
        self.error: OSError | None = None

    def _guard(self, call, *args, fallback=None):
        if self.error is None:
            try:
                return call(*args)
            except OSError as err:
                self.error = err
        return fallback

    def seek(self, *args):
        return self.raw.seek(*args)

    def tell(self):
        return self.raw.tell()

    def read(self, size=-1):
        return self.raw.read(size)

    def write(self, data):
        return self._guard(self.raw.write, data, fallback=len(data))

    def truncate(self, size=None):
        return self._guard(self.raw.truncate, size, fallback=size)

    def flush(self):
        self._guard(self.raw.flush)


@contextmanager
def create_h5(path: str | os.PathLike) -> Iterator:
    """Create an HDF5 file atomically; yield the open ``h5py.File`` to fill.

    The file is written to a temporary name beside ``path`` and renamed when
    the block ends without error. Any ``OSError`` while writing ends in one
    :class:`~flatprep.exceptions.OutputWriteError` naming ``path``; the
    temporary is removed.
    """
    import h5py

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w+b") as raw:
            sink = _LatchedFile(raw)
            try:
                with h5py.File(sink, "w", libver=LIBVER) as handle:
                    yield handle
            except Exception:
                if sink.error is None:
                    raise
            sink.flush()
            if sink.error is not None:
                raise write_error(path, sink.error) from sink.error


def content_sha256(datasets: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of datasets, in name order.

    Parameters
    ----------
    datasets : dict
        name -> array or ``h5py.Dataset`` (read in blocks of rows, so a large
        dataset is never loaded whole). Bytes are hashed little-endian, C order.

    Returns
    -------
    str
        64 hex digits; the same for the arrays a writer holds and the datasets it wrote.
    """
    sha = hashlib.sha256()
    _hash_datasets(sha, datasets)
    return sha.hexdigest()


def _hash_datasets(sha, datasets: dict) -> None:
    """Feed ``datasets`` to ``sha`` in name order, as :func:`content_sha256` does."""
    for name in sorted(datasets):
        data = datasets[name]
        dtype = _hash_header(sha, name, data.dtype, data.shape)
        shape = tuple(int(n) for n in data.shape)
        if not shape:
            sha.update(np.ascontiguousarray(data[()], dtype=dtype))
            continue
        row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        rows = max(1, _BLOCK_BYTES // max(1, row_bytes))
        for start in range(0, shape[0], rows):
            sha.update(np.ascontiguousarray(data[start:start + rows], dtype=dtype))


def _hash_header(sha, name: str, dtype, shape) -> np.dtype:
    """Feed a dataset's name, dtype and shape to ``sha``; return the little-endian dtype its bytes are hashed in."""
    dtype = np.dtype(dtype).newbyteorder("<")
    sha.update(f"{name}:{dtype.str}:{tuple(int(n) for n in shape)};".encode())
    return dtype


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
    already C-ordered float16); float32 is cast by :func:`flatprep.half.float32_to_float16`
    (the same bits as numpy's cast, faster)

    Raises
    ------
    RunFileError
        A value is beyond the float16 range or infinite (the message names ``source``).
    """
    from .half import float32_to_float16

    array = np.asarray(array)
    if array.dtype == np.float32:
        out = np.empty(array.shape, np.float16)
        if float32_to_float16(np.ascontiguousarray(array), out):  # False: beyond the range (raised below) or NaN
            return out
    # Largest |value| from the two extremes: no (n_timepoints, n_pixels) temporary. NaN passes, as numpy casts it.
    peak = float(max(np.nanmax(array), -np.nanmin(array))) if array.size else 0.0
    limit = float(np.finfo(np.float16).max)
    if not np.isfinite(peak) or peak > limit:
        raise RunFileError(f"{source}: values up to {peak:g} do not fit float16 (max {limit:g}); "
                           "z-score the data before storing it")
    return np.ascontiguousarray(array, dtype=np.float16)


def _encode(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value


def write_run(path: str | os.PathLike, *, frames: np.ndarray, clip_frames: int = 16, **parts) -> Path:
    """Write a per-run file atomically from the whole frames array.

    Parameters
    ----------
    frames : array, float16, shape (n_timepoints, n_pixels)
        Every frame of the run.
    path, clip_frames, **parts
        As in :func:`write_run_blocks`, which writes the file clip by clip:
        the destination, the frames per chunk, then ``mean``, ``std``,
        ``mask``, ``attrs`` and ``grid_attrs``.

    Raises
    ------
    RunFileError
        The arrays do not fit the format.
    OutputWriteError
        The file cannot be written (e.g. the disk is full); nothing is left behind.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.float16:
        raise RunFileError(f"{path}: frames must be float16, got {frames.dtype}")
    if frames.ndim != 2:
        raise RunFileError(f"{path}: frames of shape {frames.shape} do not match the mask's "
                           f"{int(np.count_nonzero(parts['mask']))} valid pixels")
    return write_run_blocks(path, clip_blocks(frames, clip_frames), shape=frames.shape, clip_frames=clip_frames,
                            **parts)


def clip_blocks(frames: np.ndarray, clip_frames: int):
    """The row blocks of ``frames`` ((T, n_pixels)) that :func:`write_run_blocks` stores one chunk each:
    views of ``clip_frames`` rows (at least 1), the last one shorter."""
    step = max(1, clip_frames)
    return (frames[start:start + step] for start in range(0, len(frames), step))


def write_run_blocks(
    path: str | os.PathLike,
    blocks,
    *,
    shape: tuple[int, int],
    mean: np.ndarray,
    std: np.ndarray,
    mask: np.ndarray,
    attrs: dict,
    grid_attrs: dict,
    clip_frames: int = 16,
) -> Path:
    """Write a per-run file atomically from its frames in row blocks, hashing each block as it is written.

    The same file, byte for byte, as :func:`write_run` of the whole array:
    the run's frames are never held whole and never read twice (one pass
    both stores and checksums them).

    Parameters
    ----------
    path : path
        Destination ``*_desc-flat_bold.h5``.
    blocks : iterable of array, float16, shape (<= n_timepoints, n_pixels)
        Consecutive row blocks of the frames; blocks of ``clip_frames`` rows
        are written one chunk at a time.
    shape : (n_timepoints, n_pixels)
        Shape of the whole frames array.
    mean, std : array, shape (n_pixels,)
    mask : array, bool, shape (height, width), with n_pixels True values
    attrs : dict
        Root attributes (dicts and lists are stored as JSON strings).
    grid_attrs : dict
        Attributes of ``/grid``.
    clip_frames : int, default=16
        Frames per chunk.

    Raises
    ------
    RunFileError
        The blocks do not fit the format or ``shape``.
    OutputWriteError
        The file cannot be written (e.g. the disk is full); nothing is left behind.
    """
    path = Path(path)
    n_timepoints, n_pixels = (int(n) for n in shape)
    if n_pixels != int(np.count_nonzero(mask)):
        raise RunFileError(f"{path}: frames of shape {tuple(shape)} do not match the mask's "
                           f"{int(np.count_nonzero(mask))} valid pixels")
    arrays = {"mean": np.asarray(mean, dtype=np.float32), "std": np.asarray(std, dtype=np.float32),
              "grid/mask": np.asarray(mask, dtype=np.uint8)}
    base = {"format": FORMAT, "format_version": FORMAT_VERSION, "flatprep_version": __version__}
    sha = hashlib.sha256()
    # "frames" sorts before the other names: the frames open the checksum, as in content_sha256.
    _hash_header(sha, "frames", np.float16, (n_timepoints, n_pixels))
    with create_h5(path) as handle:
        chunk = (max(1, min(clip_frames, n_timepoints)), n_pixels)
        dset = handle.create_dataset("frames", shape=(n_timepoints, n_pixels), dtype=np.float16, chunks=chunk)
        _write_blocks(dset, blocks, sha, path)
        dset.attrs["dims"] = json.dumps(["time", "pixel"])
        for name in ("mean", "std", "grid/mask"):
            handle.create_dataset(name, data=arrays[name])
        for key, value in grid_attrs.items():
            handle["grid"].attrs[key] = _encode(value)
        _hash_datasets(sha, arrays)
        for key, value in (base | attrs | {CHECKSUM_ATTR: sha.hexdigest()}).items():
            handle.attrs[key] = _encode(value)
    return path


def _write_blocks(dset, blocks, sha, path: Path) -> None:
    """Store consecutive float16 row blocks in ``dset`` and feed their bytes to ``sha``."""
    n_timepoints, n_pixels = dset.shape
    start = 0
    for block in blocks:
        block = np.asarray(block)
        if block.dtype != np.float16:
            raise RunFileError(f"{path}: frames must be float16, got {block.dtype}")
        if block.ndim != 2 or block.shape[1] != n_pixels or start + len(block) > n_timepoints:
            raise RunFileError(f"{path}: a block of shape {block.shape} from frame {start} does not fit "
                               f"frames of shape {dset.shape}")
        block = np.ascontiguousarray(block, dtype=np.dtype(np.float16).newbyteorder("<"))
        if len(block):
            dset[start:start + len(block)] = block
        sha.update(block)
        start += len(block)
    if start != n_timepoints:
        raise RunFileError(f"{path}: {start} frames written, {n_timepoints} expected")


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        return json_or_text(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_run_attrs(path: str | os.PathLike, *, data: bytes | None = None) -> tuple[dict, dict]:
    """Root and grid attributes of a per-run file, without reading the frames (``data``: see :func:`open_h5`)."""
    path = Path(path)
    with open_h5(path, data=data) as handle:
        try:
            attrs = {k: _decode(v) for k, v in handle.attrs.items()}
            grid = {k: _decode(v) for k, v in handle["grid"].attrs.items()} if "grid" in handle else {}
        except (OSError, KeyError) as err:
            raise RunFileError(f"{path}: not a readable flat-map HDF5 file ({err})") from err
    return attrs, grid


def _unverifiable(path: Path, attrs) -> str | None:
    """Why a file's content cannot be checked against a stored checksum (None when it can)."""
    version = _decode(attrs.get("format_version"))
    if CHECKSUM_ATTR in attrs:
        return None
    return (f"{path}: format version {version} has no content checksum, so its data cannot be verified; "
            "rerun the participant level to rewrite it")


def read_run(path: str | os.PathLike) -> RunData:
    """Read a whole per-run file, checking its structure, checksum and values.

    A version 1 file (written before checksums) is read with a warning.

    Raises
    ------
    RunFileError
        The file is unreadable, inconsistent, holds NaN/Inf, or its data do not match its checksum.
    """
    path = Path(path)
    problems = validate_run(path, check_values=False, check_checksum=False)
    if problems:
        raise RunFileError("; ".join(problems))
    with open_h5(path) as handle:
        try:
            arrays = {name: handle[name][()] for name in _CHECKSUMMED}
        except OSError as err:
            raise RunFileError(f"{path}: data cannot be read ({err})") from err
        attrs = {k: _decode(v) for k, v in handle.attrs.items()}
        grid = {k: _decode(v) for k, v in handle["grid"].attrs.items()}
    unverifiable = _unverifiable(path, attrs)
    if unverifiable:
        warnings.warn(unverifiable, stacklevel=2)
    elif content_sha256(arrays) != attrs[CHECKSUM_ATTR]:
        raise RunFileError(_mismatch(path))
    if not np.isfinite(arrays["frames"]).all():
        raise RunFileError(f"{path}: /frames holds NaN or Inf")
    return RunData(frames=arrays["frames"], mean=arrays["mean"], std=arrays["std"],
                   mask=arrays["grid/mask"].astype(bool), attrs=attrs, grid=grid)


def _mismatch(path: Path) -> str:
    return (f"{path}: content checksum mismatch (its data changed after it was written, or the file is corrupt); "
            "rerun the participant level for this run")


def validate_run(path: str | os.PathLike, *, check_values: bool = True, check_checksum: bool = True,
                 data: bytes | None = None) -> list[str]:
    """Problems with a per-run file, one line each (empty when it is valid).

    Parameters
    ----------
    path : path
    check_values : bool, default=True
        Read every frame and refuse NaN/Inf.
    check_checksum : bool, default=True
        Recompute the content checksum from the file and compare it with the
        stored one; a file without one (format version 1) is a problem too.
    data : bytes, optional
        The file's bytes, already read (see :func:`open_h5`).
    """
    path = Path(path)
    if data is None and not path.exists():
        return [f"{path}: missing"]
    try:
        with open_h5(path, data=data) as handle:
            problems = _structure_problems(handle, path)
            if problems:
                return problems
            if check_checksum:
                unverifiable = _unverifiable(path, handle.attrs)
                if unverifiable:
                    return [unverifiable]
                if content_sha256({n: handle[n] for n in _CHECKSUMMED}) != _decode(handle.attrs[CHECKSUM_ATTR]):
                    return [_mismatch(path)]
            if check_values:
                frames, block = handle["frames"], 256
                for start in range(0, frames.shape[0], block):
                    if not np.isfinite(frames[start : start + block]).all():
                        return [f"{path}: /frames holds NaN or Inf from frame {start}"]
            return []
    except RunFileError as err:
        return [str(err)]
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        return [f"{path}: not a readable HDF5 file ({err})"]


def _structure_problems(handle, path: Path) -> list[str]:
    """Missing attributes or datasets, and shapes that disagree, in an open per-run file."""
    missing = [k for k in _REQUIRED_ATTRS if k not in handle.attrs]
    if missing:
        return [f"{path}: missing attributes {missing}"]
    if handle.attrs["format"] != FORMAT:
        return [f"{path}: format {handle.attrs['format']!r}, expected {FORMAT!r}"]
    if int(handle.attrs["format_version"]) > FORMAT_VERSION:
        return [f"{path}: format version {handle.attrs['format_version']} is newer than this flatprep reads "
                f"({FORMAT_VERSION}); update flatprep"]
    for name in _CHECKSUMMED:
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
    return problems
