"""Readers for surface BOLD, sidecars and confounds.

Every reader names the file and the reason when it fails, raising
:class:`~flatprep.exceptions.SurfaceFileError` (or ``InputError`` for
sidecars and tables), so the pipeline can report one line per broken run.

Data layout everywhere: (n_timepoints, 2 * n_vertices) float32, left
hemisphere first, in the vertex order of the surface space.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .exceptions import InputError, SurfaceFileError
from .gifti import read_gifti
from .spaces import SurfaceSpace, get_space, identify_space




@dataclass(frozen=True)
class SurfaceBold:
    """BOLD data on both hemispheres of a surface space.

    Attributes
    ----------
    data : ndarray, float32, shape (n_timepoints, 2 * n_vertices)
        Left hemisphere first; medial-wall vertices absent from a CIFTI file are 0.
    space : SurfaceSpace
    tr : float or None
        Repetition time in seconds from the file header, if it records one.
    sources : tuple of Path
        The files read.
    """

    data: np.ndarray
    space: SurfaceSpace
    tr: float | None
    sources: tuple


def _gifti_tr(meta: dict, path: Path) -> float | None:
    """TR from GIFTI metadata ``TimeStep`` (seconds; values above 100 are read as ms)."""
    value = meta.get("TimeStep")
    if value is None:
        return None
    try:
        step = float(value)
    except ValueError:
        raise SurfaceFileError(f"{path}: GIFTI metadata TimeStep={value!r} is not a number") from None
    return step / 1000.0 if step > 100 else step


def read_gifti_timeseries(path: str | Path) -> tuple[np.ndarray, float | None]:
    """One hemisphere of a ``*.func.gii`` time series (one data array per frame).

    Returns
    -------
    data : ndarray, float32, shape (n_timepoints, n_vertices)
    tr : float or None
        From the file's ``TimeStep`` metadata, if present.
    """
    path = Path(path)
    arrays, meta = read_gifti(path)  # parsed once: parsing is most of the read time
    if len(arrays) == 1 and arrays[0].ndim == 2:
        # Some writers store one (n_vertices, n_timepoints) array.
        data = np.asarray(arrays[0], dtype=np.float32).T
    else:
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1 or arrays[0].ndim != 1:
            raise SurfaceFileError(
                f"{path}: expected one 1-D data array per frame of equal length, found shapes "
                f"{sorted(shapes)[:4]}"
            )
        data = np.stack([np.asarray(a, dtype=np.float32) for a in arrays])
    return data, _gifti_tr(meta, path)


def load_gifti_pair(left: str | Path, right: str | Path) -> SurfaceBold:
    """Both hemispheres of a GIFTI run, checked against each other."""
    left, right = Path(left), Path(right)
    lh, tr_l = read_gifti_timeseries(left)
    rh, tr_r = read_gifti_timeseries(right)
    if lh.shape[1] != rh.shape[1]:
        raise SurfaceFileError(
            f"{right}: {rh.shape[1]:,} vertices but its left hemisphere {left.name} has {lh.shape[1]:,}; "
            "both hemispheres must be of one surface space"
        )
    if lh.shape[0] != rh.shape[0]:
        raise SurfaceFileError(
            f"{right}: {rh.shape[0]} frames but its left hemisphere {left.name} has {lh.shape[0]}"
        )
    space = identify_space(lh.shape[1], source=str(left))
    if tr_l is not None and tr_r is not None and not math.isclose(tr_l, tr_r, rel_tol=1e-6):
        raise SurfaceFileError(f"{right}: TimeStep {tr_r} s differs from {left.name} ({tr_l} s)")
    return SurfaceBold(np.concatenate([lh, rh], axis=1), space, tr_l, (left, right))


_CORTEX = {"CIFTI_STRUCTURE_CORTEX_LEFT": 0, "CIFTI_STRUCTURE_CORTEX_RIGHT": 1}


def _index_runs(indices: np.ndarray):
    """(target, source) slices of the runs of consecutive values in ``indices``.

    The cortex grayordinates of a CIFTI file are the vertices off the medial
    wall, in order: ~140 runs per hemisphere. Copying run by run is 2-3x
    faster than one fancy-indexed scatter.
    """
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts, stops = np.r_[0, breaks], np.r_[breaks, len(indices)]
    for start, stop in zip(starts.tolist(), stops.tolist()):
        yield slice(int(indices[start]), int(indices[stop - 1]) + 1), slice(start, stop)


@dataclass(frozen=True)
class _CiftiLayout:
    """Where a dtseries keeps its cortex: what :func:`load_cifti_dtseries` reads."""

    tr: float  # s
    n_frames: int
    n_vertices: int  # per hemisphere
    models: dict  # CIFTI_STRUCTURE_CORTEX_* -> (first grayordinate, vertex indices)
    read: object  # (start, stop) -> (n_frames, stop - start) float32 of those grayordinates


def _plain_cifti_layout(path: Path) -> _CiftiLayout | None:
    """The layout of an uncompressed float32 dtseries from its header and XML, or None.

    nibabel's CIFTI image builds its axes and deep-copies its header tree:
    ~5 s per 91k file, more than all the cleaning. Workbench, HCP and fMRIPrep
    files are plain NIfTI-2 with one CIFTI XML extension, which this reads
    with the standard library. Anything else (or anything unexpected) gives
    None, and nibabel reads the file with its own checks and errors.
    """
    import xml.etree.ElementTree as ElementTree

    from nibabel.nifti2 import header_dtype

    try:
        with path.open("rb") as handle:
            raw = handle.read(544)
            header = np.frombuffer(raw[:540], dtype=header_dtype)[0]
            if int(header["sizeof_hdr"]) != 540:
                header = np.frombuffer(raw[:540], dtype=header_dtype.newbyteorder())[0]
            dtype = header_dtype.fields["sizeof_hdr"][0].newbyteorder(header.dtype.byteorder)
            dims = [int(d) for d in header["dim"]]
            offset = int(header["vox_offset"])
            if int(header["sizeof_hdr"]) != 540 or int(header["datatype"]) != 16 or dims[:5] != [6, 1, 1, 1, 1]:
                return None
            xml = None
            while handle.tell() + 8 <= offset and raw[540:541] == b"\x01":
                size, code = np.frombuffer(handle.read(8), dtype=dtype.str[0] + "i4")
                content = handle.read(int(size) - 8)
                if int(code) == 32:
                    xml = content.rstrip(b"\x00")
        root = ElementTree.fromstring(xml)
    except Exception:  # the fallback reports what is wrong
        return None
    maps = {m.get("AppliesToMatrixDimension"): m for m in root.iter("MatrixIndicesMap")}
    series, brain = maps.get("0"), maps.get("1")
    if series is None or brain is None or series.get("IndicesMapToDataType") != "CIFTI_INDEX_TYPE_SERIES":
        return None
    unit = {"SECOND": 1.0, "MSEC": 1e-3}.get(str(series.get("SeriesUnit")).upper(), 1.0)
    tr = float(series.get("SeriesStep")) * 10.0 ** int(series.get("SeriesExponent", "0")) * unit
    models, sizes = {}, set()
    for model in brain.iter("BrainModel"):
        if model.get("BrainStructure") in _CORTEX and model.get("ModelType") == "CIFTI_MODEL_TYPE_SURFACE":
            vertices = np.array(model.find("VertexIndices").text.split(), dtype=np.int64)
            models[model.get("BrainStructure")] = (int(model.get("IndexOffset")), vertices)
            sizes.add(int(model.get("SurfaceNumberOfVertices")))
    if len(models) != 2 or len(sizes) != 1:
        return None
    n_frames, n_columns = dims[5], dims[6]
    element = np.dtype(dtype.str[0] + "f4")
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])

    def read(start: int, stop: int) -> np.ndarray:
        # Grayordinates are stored time-fastest: columns start..stop are one contiguous block.
        values = np.fromfile(path, dtype=element, count=(stop - start) * n_frames,
                             offset=offset + start * n_frames * element.itemsize)
        values = values.reshape(stop - start, n_frames).T.astype(np.float32, copy=False)
        if slope not in (0.0, 1.0) and np.isfinite(slope):
            values = values * np.float32(slope)
        if inter != 0.0 and np.isfinite(inter):
            values = values + np.float32(inter)
        return values

    if any(start + len(v) > n_columns for start, v in models.values()):
        return None
    return _CiftiLayout(tr, n_frames, sizes.pop(), models, read)


def _nibabel_cifti_layout(path: Path) -> _CiftiLayout:
    """The layout of any CIFTI-2 file nibabel reads; errors name the file and the problem."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        series, models = image.header.get_axis(0), image.header.get_axis(1)
    except Exception as err:
        raise SurfaceFileError(f"{path}: not a readable CIFTI-2 file ({type(err).__name__}: {err})") from err
    if not isinstance(series, nib.cifti2.SeriesAxis) or not isinstance(models, nib.cifti2.BrainModelAxis):
        raise SurfaceFileError(f"{path}: expected a dtseries (series x brain models), found "
                               f"{type(series).__name__} x {type(models).__name__}")
    found = {name: (slc, bm) for name, slc, bm in models.iter_structures() if name in _CORTEX}
    if len(found) != 2:
        raise SurfaceFileError(
            f"{path}: no CIFTI_STRUCTURE_CORTEX_LEFT/RIGHT surface models found "
            f"(structures: {', '.join(n for n, _, _ in models.iter_structures()) or 'none'})"
        )
    n_vertices = {int(bm.nvertices[name]) for name, (_, bm) in found.items()}
    if len(n_vertices) != 1:
        raise SurfaceFileError(f"{path}: left and right cortex have different meshes ({sorted(n_vertices)})")
    unit_scale = {"SECOND": 1.0, "MSEC": 1e-3}.get(str(series.unit).upper(), 1.0)
    proxy = image.dataobj  # (n_frames, n_grayordinates), nothing read yet
    return _CiftiLayout(
        float(series.step) * unit_scale, int(proxy.shape[0]), n_vertices.pop(),
        {name: (slc.start, np.asarray(bm.vertex)) for name, (slc, bm) in found.items()},
        lambda start, stop: np.asarray(proxy[:, start:stop], dtype=np.float32),
    )


def load_cifti_dtseries(path: str | Path) -> SurfaceBold:
    """Cortex of a CIFTI-2 ``*.dtseries.nii`` on fs_LR 32k (den-91k).

    Subcortical structures are ignored; cortex grayordinates are placed on
    the full 32,492-vertex hemispheres (medial wall = 0).
    """
    path = Path(path)
    if not path.exists():
        raise SurfaceFileError(f"{path}: no such file")
    layout = _plain_cifti_layout(path) or _nibabel_cifti_layout(path)
    space = identify_space(layout.n_vertices, source=str(path))
    try:
        data = np.zeros((layout.n_frames, 2 * space.n_vertices), dtype=np.float32)
        for name, (first, vertices) in layout.models.items():
            # One contiguous read per hemisphere: the whole 91k matrix (440 MB for HCP) is never held.
            cortex = layout.read(first, first + len(vertices))  # (n_frames, n_grayordinates)
            offset = _CORTEX[name] * space.n_vertices
            for target, source in _index_runs(vertices):
                data[:, offset + target.start:offset + target.stop] = cortex[:, source]
            del cortex
    except Exception as err:
        raise SurfaceFileError(f"{path}: cannot read the data ({type(err).__name__}: {err})") from err
    return SurfaceBold(data, space, layout.tr, (path,))


def read_json(path: str | Path) -> dict:
    """A JSON sidecar as a dict."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def repetition_time(sidecar: dict | None, header_tr: float | None, *, source: str) -> float:
    """The run's TR in seconds: the sidecar's ``RepetitionTime``, else the header's.

    Raises
    ------
    InputError
        If neither gives one, or it is not a positive finite number.
    """
    value = (sidecar or {}).get("RepetitionTime", header_tr)
    if value is None:
        raise InputError(f"{source}: no RepetitionTime in the JSON sidecar and none in the file header; "
                         "add RepetitionTime (seconds) to the sidecar")
    try:
        tr = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{source}: RepetitionTime {value!r} is not a number") from None
    if not math.isfinite(tr) or tr <= 0:
        raise InputError(f"{source}: RepetitionTime must be a positive number of seconds, got {value!r}")
    return tr


def read_confounds(path: str | Path, *, n_timepoints: int | None = None) -> dict[str, np.ndarray]:
    """An fMRIPrep ``*_desc-confounds_timeseries.tsv`` as columns.

    ``n/a`` becomes NaN. With ``n_timepoints``, the row count is checked.

    Returns
    -------
    dict of str -> ndarray, float64, shape (n_timepoints,)
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read ({err})") from err
    if not rows or not rows[0]:
        raise InputError(f"{path}: empty confounds table (expected a header row of column names)")
    header, body = rows[0], [r for r in rows[1:] if r]
    columns: dict[str, np.ndarray] = {}
    for index, name in enumerate(header):
        values = []
        for line, row in enumerate(body, start=2):
            if len(row) != len(header):
                raise InputError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
            text = row[index].strip()
            try:
                values.append(np.nan if text in ("n/a", "") else float(text))
            except ValueError:
                raise InputError(f"{path}: line {line}, column {name!r}: {text!r} is not a number") from None
        columns[name] = np.asarray(values, dtype=np.float64)
    if n_timepoints is not None and len(body) != n_timepoints:
        raise InputError(f"{path}: {len(body)} rows but the BOLD run has {n_timepoints} frames")
    return columns


def load_surface_bold(paths: list[str | Path] | tuple, *, space: str | None = None) -> SurfaceBold:
    """BOLD from one CIFTI file or a (left, right) GIFTI pair.

    Parameters
    ----------
    paths : sequence of path
        ``[dtseries]`` or ``[left_func_gii, right_func_gii]``.
    space : str, optional
        Expected space name; a mismatch with the vertex count is an error.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].name.endswith(".dtseries.nii"):
        bold = load_cifti_dtseries(paths[0])
    elif len(paths) == 2:
        bold = load_gifti_pair(*paths)
    elif len(paths) == 1 and paths[0].name.endswith(".func.gii"):
        raise SurfaceFileError(f"{paths[0]}: the other hemisphere's .func.gii is missing; "
                               "expected a hemi-L/hemi-R pair")
    else:
        raise SurfaceFileError(
            f"expected one .dtseries.nii or a left/right .func.gii pair, got {[str(p) for p in paths]}"
        )
    if space is not None and get_space(space) != bold.space:
        raise SurfaceFileError(
            f"{paths[0]}: labelled space-{space} but has {bold.space.n_vertices:,} vertices per hemisphere "
            f"({bold.space.name})"
        )
    return bold
