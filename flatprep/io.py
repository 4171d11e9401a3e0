"""Readers for surface and volume BOLD, sidecars and confounds.

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
import warnings
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

import numpy as np

from .exceptions import InputError, SurfaceFileError, VolumeFileError
from .gifti import GiftiFrames, load_image, read_gifti, scan_gifti_frames
from .hcp import MOVEMENT_FILE, read_movement_regressors
from .spaces import FSNATIVE, SurfaceSpace, get_space, identify_space
from .tables import read_text

#: Plausible repetition times in seconds (inclusive). A TR outside it, from a
#: sidecar or a header, is refused unless given explicitly (``tr_in``, ``--tr-in``).
TR_RANGE = (0.1, 10.0)
#: A header time step above this many seconds was written in milliseconds.
_MS_ABOVE = 100.0
_TIME_UNITS = {"SECOND": 1.0, "SEC": 1.0, "S": 1.0, "MSEC": 1e-3, "MS": 1e-3, "MILLISECOND": 1e-3}


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


def _parse_float(value, described: str, error: type[Exception]) -> float:
    """``float(value)``; ``error("<described> is not a number")`` when it is none."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise error(f"{described} is not a number") from None


def header_tr_seconds(step, unit: str | None, *, source: str, field: str) -> float | None:
    """A file header's time step in seconds: the one rule for GIFTI ``TimeStep`` and CIFTI ``SeriesAxis``.

    Parameters
    ----------
    step : float, str or None
        The step as stored (None: the header has none).
    unit : str or None
        ``SECOND``/``s`` or ``MSEC``/``ms`` (case-insensitive); None (GIFTI
        metadata has no unit) means seconds. A step above 100 "seconds" is read
        as milliseconds: writers that store ms without saying so exist, and no
        fMRI TR is 100 s.
    source, field : str
        The file and the header field, for messages.

    Returns
    -------
    float or None

    Raises
    ------
    SurfaceFileError
        If the step is not a finite number or the unit is not a time.
    """
    if step is None:
        return None
    value = _parse_float(step, f"{source}: {field}={step!r}", SurfaceFileError)
    scale = _TIME_UNITS.get(str(unit or "SECOND").upper())
    if scale is None:
        raise SurfaceFileError(f"{source}: {field} is in {unit!r}, not a unit of time (expected SECOND or MSEC)")
    if not math.isfinite(value):
        raise SurfaceFileError(f"{source}: {field}={step!r} is not a finite number")
    if scale == 1.0 and value > _MS_ABOVE:
        scale = 1e-3
    return value * scale


def _gifti_tr(meta: dict, path: Path) -> float | None:
    """TR from GIFTI metadata ``TimeStep`` (see :func:`header_tr_seconds`)."""
    return header_tr_seconds(meta.get("TimeStep"), None, source=str(path), field="GIFTI metadata TimeStep")


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


def load_gifti_pair(left: str | Path, right: str | Path, *, native: bool = False) -> SurfaceBold:
    """Both hemispheres of a GIFTI run, checked against each other.

    With ``native``, the pair is on the subject's own mesh (``space-fsnative``):
    the hemispheres may differ in vertex count and the space is
    :data:`~flatprep.spaces.FSNATIVE`. Files in the usual layout (one inline
    base64 float32 array per frame) are decoded straight into the result
    (:func:`flatprep.gifti.scan_gifti_frames`); others go through nibabel.
    """
    left, right = Path(left), Path(right)
    scans = [scan_gifti_frames(left), scan_gifti_frames(right)]
    if None in scans:
        (lh, tr_l), (rh, tr_r) = read_gifti_timeseries(left), read_gifti_timeseries(right)
        shapes, read = (lh.shape, rh.shape), lambda: np.concatenate([lh, rh], axis=1)
    else:
        shapes = [(scan.n_frames, scan.n_vertices) for scan in scans]
        tr_l, tr_r = (_gifti_tr(scan.meta, scan.path) for scan in scans)
        read = lambda: _decode_gifti_pair(*scans)  # noqa: E731
    (n_left, v_left), (n_right, v_right) = shapes
    if v_left != v_right and not native:
        raise SurfaceFileError(
            f"{right}: {v_right:,} vertices but its left hemisphere {left.name} has {v_left:,}; "
            "both hemispheres must be of one surface space"
        )
    if n_left != n_right:
        raise SurfaceFileError(f"{right}: {n_right} frames but its left hemisphere {left.name} has {n_left}")
    space = FSNATIVE if native else identify_space(v_left, source=str(left))
    if tr_l is not None and tr_r is not None and not math.isclose(tr_l, tr_r, rel_tol=1e-6):
        raise SurfaceFileError(f"{right}: TimeStep {tr_r} s differs from {left.name} ({tr_l} s)")
    return SurfaceBold(read(), space, tr_l, (left, right))


def _decode_gifti_pair(left: GiftiFrames, right: GiftiFrames) -> np.ndarray:
    """(n_frames, left + right vertices) float32, each hemisphere decoded in place.

    A frame that does not decode sends both files through nibabel, whose error names the file.
    """
    data = np.empty((left.n_frames, left.n_vertices + right.n_vertices), np.float32)
    if left.decode_into(data[:, : left.n_vertices]) and right.decode_into(data[:, left.n_vertices :]):
        return data
    del data
    return np.concatenate([read_gifti_timeseries(left.path)[0], read_gifti_timeseries(right.path)[0]], axis=1)


_CORTEX = {"CIFTI_STRUCTURE_CORTEX_LEFT": 0, "CIFTI_STRUCTURE_CORTEX_RIGHT": 1}
#: Grayordinates per CIFTI read: 1,200 frames x 128 float32 (0.6 MB) stay in cache while transposed.
_CIFTI_BLOCK = 128


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
    step = float(series.get("SeriesStep")) * 10.0 ** int(series.get("SeriesExponent", "0"))
    tr = header_tr_seconds(step, series.get("SeriesUnit"), source=str(path), field="CIFTI SeriesAxis step")
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

    image = load_image(path, "CIFTI-2 file", SurfaceFileError)
    try:
        series, models = image.header.get_axis(0), image.header.get_axis(1)
    except Exception as err:  # not a CIFTI-2 header
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
    tr = header_tr_seconds(series.step, series.unit, source=str(path), field="CIFTI SeriesAxis step")
    proxy = image.dataobj  # (n_frames, n_grayordinates), nothing read yet
    return _CiftiLayout(
        tr, int(proxy.shape[0]), n_vertices.pop(),
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
            offset = _CORTEX[name] * space.n_vertices
            for target, source in _index_runs(vertices):
                # Contiguous reads of a few grayordinates: each (n_frames, block) piece is transposed
                # into place while it is in cache, and the whole 91k matrix (440 MB for HCP) is never held.
                for start in range(source.start, source.stop, _CIFTI_BLOCK):
                    stop = min(start + _CIFTI_BLOCK, source.stop)
                    column = offset + target.start + start - source.start
                    data[:, column:column + stop - start] = layout.read(first + start, first + stop)
    except Exception as err:
        raise SurfaceFileError(f"{path}: cannot read the data ({type(err).__name__}: {err})") from err
    return SurfaceBold(data, space, layout.tr, (path,))


#: Largest JSON sidecar read (bytes): fMRIPrep's are a few kB; anything this big is not a sidecar.
MAX_JSON_BYTES = 16 * 2**20


def read_json(path: str | Path) -> dict:
    """A JSON sidecar as a dict.

    Raises
    ------
    InputError
        Naming the file: missing, over :data:`MAX_JSON_BYTES`, nested too deep
        for the parser, not JSON, or not a JSON object.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read the JSON file ({err.strerror or err})") from err
    if len(raw) > MAX_JSON_BYTES:
        raise InputError(f"{path}: a JSON file over {MAX_JSON_BYTES // 2**20} MiB; "
                         "a BIDS sidecar holds a few kB of metadata")
    try:
        value = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deep to read; a BIDS sidecar is a flat object") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def check_tr(value, *, source: str, name: str = "RepetitionTime", tr_range=TR_RANGE) -> float:
    """A TR in seconds, checked: a real number (not a boolean or string), positive, inside ``tr_range``.

    Raises
    ------
    InputError
        Naming ``source``, ``name`` and the value received.
    """
    if isinstance(value, bool):
        raise InputError(f"{source}: {name} {value!r} is a boolean, not a number of seconds")
    if isinstance(value, str):
        raise InputError(f"{source}: {name} {value!r} is not a number (a JSON string); "
                         "BIDS wants a number of seconds")
    tr = _parse_float(value, f"{source}: {name} {value!r}", InputError)
    if not math.isfinite(tr) or tr <= 0:
        raise InputError(f"{source}: {name} must be a positive number of seconds, got {value!r}")
    low, high = tr_range
    if not low <= tr <= high:
        raise InputError(f"{source}: {name} {tr:g} s is outside the plausible range {low:g}-{high:g} s; "
                         "if it is right, give it explicitly (flatprep --tr-in SECONDS)")
    return tr


def repetition_time(sidecar: dict | None, header_tr: float | None, *, source: str) -> float:
    """The run's TR in seconds: the sidecar's ``RepetitionTime``, else the header's.

    Raises
    ------
    InputError
        If neither gives one, or it is not a number of seconds inside :data:`TR_RANGE`.
    """
    if sidecar and "RepetitionTime" in sidecar:
        return check_tr(sidecar["RepetitionTime"], source=source)
    if header_tr is None:
        raise InputError(f"{source}: no RepetitionTime in the JSON sidecar and none in the file header; "
                         "add RepetitionTime (seconds) to the sidecar")
    return check_tr(header_tr, source=source, name="header TR")


def _name_entities(path: Path) -> dict:
    """``key-label`` pairs of a BIDS file name (suffix and extension left out)."""
    pairs = path.name.split(".")[0].split("_")[:-1]
    return dict(p.split("-", 1) for p in pairs if "-" in p)


#: Entities that say how a run was sampled, not which acquisition it is: sidecars that differ from a BOLD
#: file only in these describe the same acquisition (fMRIPrep <= 20.2 wrote the TR beside the volume only).
SAMPLING_ENTITIES = frozenset({"space", "res", "den", "desc", "hemi"})


def _sidecar_tr(path: Path) -> float | None:
    """``RepetitionTime`` of one sidecar, checked (None when it has none)."""
    values = read_json(path)
    return check_tr(values["RepetitionTime"], source=str(path)) if "RepetitionTime" in values else None


def _differs_from(found: list, others: list, why: str) -> None:
    """Raise naming both files when a TR of ``others`` differs from the first of ``found``."""
    for tr, path in others:
        if not math.isclose(tr, found[0][0], rel_tol=1e-6):
            first = found[0][1].name if found[0][1].parent == path.parent else found[0][1]
            raise InputError(f"{path}: RepetitionTime {tr:g} s differs from {first} ({found[0][0]:g} s); {why}")


def _sidecar_trs(sources, sidecars) -> tuple[list, list]:
    """``(own, same_acquisition)``: ``(tr, path)`` pairs of the BOLD files' sidecars.

    ``own``: each BOLD file's first applying sidecar with a TR (a sidecar applies unless
    an entity both names has different labels). ``same_acquisition``: every other
    sidecar that differs from a BOLD file only in :data:`SAMPLING_ENTITIES`.
    """
    names = [_name_entities(Path(source)) for source in sources]
    own, applying = [], set()
    for entities in names:
        first = None
        for path in map(Path, sidecars):
            if all(entities.get(k, v) == v for k, v in _name_entities(path).items()):
                applying.add(path)
                if first is None and (tr := _sidecar_tr(path)) is not None:
                    first = (tr, path)
        if first is not None:
            own.append(first)
    same = []
    for path in (Path(p) for p in sidecars if Path(p) not in applying):
        values = _name_entities(path)
        if any({k for k in set(values) | set(e) if values.get(k) != e.get(k)} <= SAMPLING_ENTITIES for e in names):
            if (tr := _sidecar_tr(path)) is not None:
                same.append((tr, path))
    return own, same


def run_repetition_time(bold: SurfaceBold, sidecars=(), *, tr_in: float | None = None) -> float:
    """The one TR rule of every reader, in seconds.

    In order: ``tr_in`` when given; else each BOLD file's own sidecar, the first
    of ``sidecars`` (most specific first, as discovery orders them under BIDS
    inheritance, raw dataset included) with ``RepetitionTime`` that applies to
    it (unless an entity both name has different labels: ``hemi-L`` sidecars
    apply to the left hemisphere only), the hemispheres agreeing; else the
    sidecars of the same acquisition (the other ``sidecars`` that differ from a
    BOLD file only in space/res/den/desc/hemi, e.g. fMRIPrep <= 20.2's
    ``*_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.json`` beside its
    surface runs); else the file header's TR (:func:`header_tr_seconds`).
    Every sidecar found must agree with the one used.

    Raises
    ------
    InputError
        A value that is a boolean, not a number, outside :data:`TR_RANGE`
        (``tr_in`` is only checked for being positive), sidecars that disagree
        (naming both files), or no TR anywhere (naming where it looked).
    """
    if tr_in is not None:
        return check_tr(tr_in, source=str(bold.sources[0]), name="--tr-in", tr_range=(0.0, math.inf))
    own, same = _sidecar_trs(bold.sources, sidecars)
    if own:
        _differs_from(own, own[1:], "the hemispheres' sidecars must agree")
        _differs_from(own, same, "sidecars of one acquisition must agree")
        return own[0][0]
    if same:
        _differs_from(same, same[1:], "sidecars of one acquisition must agree")
        return same[0][0]
    if bold.tr is None:
        looked = ", ".join(Path(p).name for p in sidecars) or "none found"
        raise InputError(f"{bold.sources[0]}: no RepetitionTime in its sidecars or those of the same acquisition "
                         f"({looked}) and none in the file header; add RepetitionTime (seconds) to the "
                         "sidecar, or give it with flatprep --tr-in SECONDS")
    return repetition_time(None, bold.tr, source=str(bold.sources[0]))


def read_confounds(path: str | Path, *, n_timepoints: int | None = None) -> dict[str, np.ndarray]:
    """An fMRIPrep ``*_desc-confounds_timeseries.tsv`` (or HCP ``Movement_Regressors.txt``) as columns.

    ``n/a`` becomes NaN. With ``n_timepoints``, the row count is checked.

    Returns
    -------
    dict of str -> ndarray, float64, shape (n_timepoints,)
    """
    path = Path(path)
    if path.name == MOVEMENT_FILE:  # an HCP-pipelines run: fMRIPrep names and units
        return read_movement_regressors(path, n_timepoints=n_timepoints)
    try:
        rows = list(csv.reader(read_text(path, "the confounds table").splitlines(), delimiter="\t"))
    except csv.Error as err:
        raise InputError(f"{path}: not a readable TSV table ({err})") from None
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
    if paths and paths[0].name.endswith((".nii.gz", ".nii")) and not paths[0].name.endswith(".dtseries.nii"):
        from .volume import check_volume_space

        check_volume_space(str(space), source=str(paths[0]))  # names the supported volume spaces
        raise VolumeFileError(f"{paths[0]}: a {space} volume; read it with flatprep.volume.prepare_volume_run")
    if len(paths) == 1 and paths[0].name.endswith(".dtseries.nii"):
        bold = load_cifti_dtseries(paths[0])
    elif len(paths) == 2:
        bold = load_gifti_pair(*paths, native=space == FSNATIVE.name)
    elif len(paths) == 1 and paths[0].name.endswith(".func.gii"):
        raise SurfaceFileError(f"{paths[0]}: the other hemisphere's .func.gii is missing; "
                               "expected a hemi-L/hemi-R pair")
    else:
        raise SurfaceFileError(
            f"expected one .dtseries.nii or a left/right .func.gii pair, got {[str(p) for p in paths]}"
        )
    if space is not None and space != bold.space.name and get_space(space) != bold.space:
        raise SurfaceFileError(
            f"{paths[0]}: labelled space-{space} but has {bold.space.n_vertices:,} vertices per hemisphere "
            f"({bold.space.name})"
        )
    return bold


# --------------------------------------------------------------------------- volumes

#: Frames read at once from a volume (a 2 mm MNI frame is 3.6 MB as float32).
VOLUME_CHUNK_FRAMES = 16


@dataclass(frozen=True)
class VolumeBold:
    """A 4D NIfTI BOLD run, opened lazily: frames are read in chunks by :meth:`iter_frames`.

    Attributes
    ----------
    path : Path
    shape : (int, int, int, int)
        (nx, ny, nz, n_timepoints).
    affine : ndarray, float64, shape (4, 4)
        Voxel -> mm.
    tr : float or None
        From the header's 4th zoom (seconds; ms converted), if it records one.
    """

    path: Path
    shape: tuple
    affine: np.ndarray
    tr: float | None

    @property
    def n_timepoints(self) -> int:
        return int(self.shape[3])

    def iter_frames(self, *, chunk_frames: int = VOLUME_CHUNK_FRAMES):
        """Yield ``(start, frames)`` chunks in time order.

        ``frames`` is float32 of shape (n, nx * ny * nz), voxels in Fortran
        (nibabel) order; it is a transposed view of the (voxels, n) block read
        from nibabel's array proxy, so at most ``chunk_frames`` frames are in
        memory. The file is kept open and read forwards (a ``.nii.gz`` is
        decompressed once, not once per chunk).
        """
        from isal.isal_zlib import error as InflateError

        n_voxels = int(np.prod(self.shape[:3]))
        image, stream = _open_nifti_stream(self.path)
        try:
            for start in range(0, self.n_timepoints, chunk_frames):
                stop = min(start + chunk_frames, self.n_timepoints)
                block = np.asarray(image.dataobj[..., start:stop], dtype=np.float32)
                yield start, block.reshape(n_voxels, stop - start, order="F").T
        except (OSError, EOFError, ValueError, InflateError) as err:
            raise VolumeFileError(f"{self.path}: cannot read frames {start}..{stop - 1} "
                                  f"({type(err).__name__}: {err})") from err
        finally:
            del image  # the proxy closes the file it kept open
            if stream is not None:
                stream.close()


def _open_nifti_stream(path: Path):
    """``(image, stream)``: a NIfTI image whose data is read forwards from an open file, and that file
    (None when nibabel opened it itself).

    A ``.nii.gz`` is inflated by ISA-L (``isal.igzip``), about 2x faster than the
    ``gzip`` module nibabel uses; on real runs, inflating is most of the cost of reading.
    No memory map for a ``.nii``: pages of a mapped file would count in the resident set of a long run.
    """
    import nibabel as nib

    if not path.name.endswith(".gz"):
        return load_image(path, "NIfTI BOLD run", VolumeFileError, keep_file_open=True, mmap=False), None
    from isal import igzip

    stream = igzip.open(path, "rb")
    try:
        head = stream.read(nib.Nifti2Header.sizeof_hdr)
        stream.seek(0)
        image_class = nib.Nifti2Image if nib.Nifti2Header.may_contain_header(head) else nib.Nifti1Image
        holder = nib.FileHolder(filename=str(path), fileobj=stream)
        image = image_class.from_file_map({"image": holder, "header": holder})
    except Exception as err:  # inflate and nibabel errors of many types: one that names the file
        stream.close()
        raise VolumeFileError(f"{path}: cannot open the run's frames ({type(err).__name__}: {err})") from err
    return image, stream


def _load_nifti(path: Path, what: str):
    import nibabel as nib

    image = load_image(path, f"NIfTI {what}", VolumeFileError)
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise VolumeFileError(f"{path}: expected a NIfTI {what}, found {type(image).__name__}")
    return image


def open_volume_bold(path: str | Path) -> VolumeBold:
    """Open a 4D NIfTI BOLD run (header only; see :meth:`VolumeBold.iter_frames`).

    Raises
    ------
    VolumeFileError
        Missing, unreadable, or not 4D with at least 2 frames.
    """
    path = Path(path)
    image = _load_nifti(path, "BOLD run")
    shape = tuple(int(s) for s in image.shape)
    if len(shape) != 4 or shape[3] < 2:
        raise VolumeFileError(
            f"{path}: expected a 4D BOLD run (x, y, z, time), found shape {shape}; "
            "a 3D file is a single volume (a mask or reference image), not a run"
        )
    tr = None
    zooms = image.header.get_zooms()
    if zooms[3] > 0:
        unit = image.header.get_xyzt_units()[1]
        tr = float(zooms[3]) * (1e-3 if unit == "msec" else 1.0)
    return VolumeBold(path, shape, np.asarray(image.affine, dtype=np.float64), tr)


def read_volume_mask(path: str | Path, *, like: VolumeBold) -> np.ndarray:
    """A brain mask on the voxel grid of ``like``.

    Returns
    -------
    ndarray, bool, shape (nx, ny, nz)

    Raises
    ------
    VolumeFileError
        Missing or unreadable, or shape or affine differing from the BOLD run's.
    """
    path = Path(path)
    image = _load_nifti(path, "brain mask")
    shape = tuple(int(s) for s in image.shape)
    if shape[:3] != like.shape[:3] or any(s != 1 for s in shape[3:]):
        raise VolumeFileError(
            f"{path}: brain mask of shape {shape} does not match the BOLD grid {like.shape[:3]} of "
            f"{like.path.name}; use the mask fMRIPrep wrote for the same space and resolution"
        )
    if not np.allclose(image.affine, like.affine, atol=1e-3):
        raise VolumeFileError(
            f"{path}: brain mask affine {np.round(image.affine[:3], 3).tolist()} differs from the BOLD run's "
            f"{np.round(like.affine[:3], 3).tolist()} ({like.path.name})"
        )
    mask = np.asarray(image.dataobj).reshape(like.shape[:3]) > 0
    if not mask.any():
        raise VolumeFileError(f"{path}: the brain mask holds no voxel")
    return mask


class Events(NamedTuple):
    """Blocks of one run, as in a BIDS ``*_events.tsv``.

    Attributes
    ----------
    onset, duration : ndarray, float64, shape (n_events,)
        Seconds from the first frame of the run's file (non-steady-state volumes included).
    trial_type : ndarray, str, shape (n_events,)
    """

    onset: np.ndarray
    duration: np.ndarray
    trial_type: np.ndarray


def warn_events_past_end(onset: np.ndarray, duration: np.ndarray, run_seconds: float, *, source) -> int:
    """Warn (naming ``source``) when events end after the run does; returns how many do.

    Such events are kept as given: they usually mean the events file of another
    run, or onsets in another unit (ms, frames).

    Parameters
    ----------
    onset, duration : ndarray, float64, shape (n_events,)
        Seconds from the first frame of the run.
    run_seconds : float
        Frames x TR of the run.
    """
    ends = np.asarray(onset, dtype=np.float64) + np.asarray(duration, dtype=np.float64)
    late = int(np.count_nonzero(ends > run_seconds + 1e-6))
    if late:
        warnings.warn(f"{source}: {late} of {len(ends)} event(s) end after the run's end (last at {ends.max():g} s, "
                      f"the run lasts {run_seconds:g} s); check that this file belongs to this run and is in seconds",
                      UserWarning, stacklevel=3)
    return late


def read_events(path: str | Path, *, run_seconds: float | None = None) -> Events:
    """The ``onset``, ``duration`` and ``trial_type`` columns of a BIDS events file (``n/a`` types as ``""``).

    With ``run_seconds`` (frames x TR), events that end after the run are warned
    about (:func:`warn_events_past_end`).

    Raises
    ------
    InputError
        Naming the file: unreadable, a missing column, or a value that is not a
        finite number (``n/a`` durations included).
    """
    from .tables import read_tsv

    rows = read_tsv(path, required=("onset", "duration", "trial_type"))
    try:
        onset = np.array([float(r["onset"]) for r in rows], dtype=np.float64)
        duration = np.array([float(r["duration"]) for r in rows], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: onset and duration must be numbers in seconds ({err})") from err
    if not (np.all(np.isfinite(onset)) and np.all(np.isfinite(duration)) and np.all(duration >= 0)):
        raise InputError(f"{path}: onset and duration must be finite, durations >= 0")
    if run_seconds is not None:
        warn_events_past_end(onset, duration, run_seconds, source=path)
    # An n/a trial_type is an event of unknown kind: "" (never a class named "None").
    return Events(onset, duration, np.array(["" if r["trial_type"] is None else str(r["trial_type"]) for r in rows],
                                            dtype=str))
