"""Nipype interfaces: thin adapters over flatprep library functions.

A flatten node writes its run's HDF5 and sidecar itself, so the frames never
go through an intermediate file; the figures node reads the run file. Small
results (statistics, file stamps) travel as dict outputs.
"""

from __future__ import annotations

import os

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from flatprep.flatmap import DEFAULT_PIXEL_SIZE


def _save(name: str, array: np.ndarray) -> str:
    from flatprep.atomic import atomic_path

    path = os.path.abspath(name)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a full disk names the file
        np.save(handle, array)
    return path


class _RunOutputInputSpec(BaseInterfaceInputSpec):
    """Where a run's outputs go: the derivative dataset and the run's BIDS entities."""

    output_dir = traits.Str(mandatory=True, desc="root of the flatprep derivative dataset")
    entities = traits.Dict(mandatory=True, desc="BIDS entities of the run (subject, task, space, ...)")


class _FlattenInputSpec(_RunOutputInputSpec):
    """A run to flatten (files, space, cleaning) and what its run file records (sources, inputs key, events)."""

    bold_files = InputMultiObject(File(), mandatory=True,
                                  desc="[dtseries.nii], [left.func.gii, right.func.gii], or "
                                       "[preproc_bold.nii.gz] with an optional brain_mask.nii.gz")
    space = traits.Str(mandatory=True, desc="input space: a surface space (checked against the vertex "
                                            "count), MNI152NLin6Asym or MNI152NLin2009cAsym")
    sidecars = InputMultiObject(File(), value=[], usedefault=True,
                                desc="JSON sidecars, most specific first (RepetitionTime)")
    confounds_file = File(desc="fMRIPrep *_desc-confounds_timeseries.tsv")
    clean_options = traits.Dict(mandatory=True, desc="flatprep.clean.CleanOptions as a dict")
    tr_in = traits.Either(None, traits.Float, default=None, usedefault=True,
                          desc="input TR in seconds instead of the sidecars' and header's")
    sources = traits.List(traits.Dict(), mandatory=True, desc="input files: path, uri, sha256")
    inputs_key = traits.Str(mandatory=True, desc="hash of inputs and options; a rerun skips matching outputs")
    clip_frames = traits.Int(16, usedefault=True, desc="frames per HDF5 chunk")
    events_files = InputMultiObject(File(exists=True), value=[], usedefault=True,
                                    desc="HCP EVs/*.txt whose events are stored with the run")


class _GridInputSpec(_FlattenInputSpec):
    template = traits.Str("fsaverage", usedefault=True, desc="flat template")
    pixel_size = traits.Float(DEFAULT_PIXEL_SIZE, usedefault=True, desc="pixel edge in mm")
    patch_size = traits.Int(16, usedefault=True, desc="grid dimensions are multiples of it")


class _SurfaceInputSpec(_GridInputSpec):
    method = traits.Enum("linear", "nearest", usedefault=True, desc="interpolation of the operator")
    surfaces = InputMultiObject(traits.Str(), value=[], usedefault=True,
                                desc="fsnative: registration spheres (L, R), then cortex masks (L, R; '' if none)")


class _FlatOutputSpec(TraitedSpec):
    out_file = File(desc="the *_desc-flat_bold.h5 written")
    out_sidecar = File(desc="its JSON sidecar")
    written = traits.Dict(desc="outputs.file_stamp of out_file as written, for the runner's completeness check")
    stats = traits.Dict(desc="TRs, frame counts, dropped volumes, zero-variance vertices, options")


class _RunOutputInterface(SimpleInterface):
    """An interface that writes a run's outputs into the derivative dataset."""

    # Never answered from Nipype's cache: a cached result must not stand in for a file deleted since.
    _always_run = True


class _FlattenInterface(_RunOutputInterface):
    """Writes the run's HDF5 and JSON sidecar itself: the projected frames go from the projection into the
    run file one clip at a time, never through an intermediate file (a (T, n_pixels) float16 ``.npy`` written
    for a separate sink node and read back cost 5-10 % of a participant process's CPU)."""

    def _write_run(self, grid, operator, blocks, shape: tuple[int, int], mean, std, stats: dict) -> None:
        from .outputs import file_stamp, write_run_outputs

        inputs = self.inputs
        out_file, sidecar = write_run_outputs(
            inputs.output_dir, dict(inputs.entities), blocks, shape=shape, mean=mean, std=std, mask=grid.mask,
            grid_attrs=grid.describe() | {"space": operator.space.name, "method": operator.method,
                                          "operator_key": operator.key},
            stats=stats, sources=list(inputs.sources), inputs_key=inputs.inputs_key,
            clip_frames=inputs.clip_frames,
            events_files=list(inputs.events_files) if isdefined(inputs.events_files) else [],
        )
        self._results.update(out_file=str(out_file), out_sidecar=str(sidecar), written=file_stamp(out_file),
                             stats=stats)


class FlattenSurfaceBold(_FlattenInterface):
    """Read a surface BOLD run, clean it per vertex (flatprep.prepare.prepare_run), project it onto the
    flat map (one cached sparse operator) and write the run's files, in one node: neither the cleaned vertex
    data nor the projected frames go through an intermediate file."""

    input_spec = _SurfaceInputSpec
    output_spec = _FlatOutputSpec

    def _run_interface(self, runtime):
        from flatprep.prepare import prepare_run

        prepared = prepare_run(self.inputs.bold_files, space=self.inputs.space, **_cleaning(self.inputs))
        cleaned = prepared.cleaned
        grid = _grid(self.inputs)
        if self.inputs.space == "fsnative":
            surfaces = list(self.inputs.surfaces) if isdefined(self.inputs.surfaces) else []
            op = _native_operator(grid, surfaces, self.inputs.method, cleaned.data.shape[1])
        else:
            op = grid.operator(self.inputs.space, method=self.inputs.method)
        # As cleaned (float16 by default): projected in float32 either way, stored as float16, one chunk
        # of the run file at a time (the run's (T, n_pixels) frames are never held whole).
        blocks = op.project_float16_blocks(cleaned.data, source=str(self.inputs.bold_files[0]),
                                           block=max(1, self.inputs.clip_frames))
        self._write_run(grid, op, blocks, (len(cleaned.data), grid.n_pixels), op.project(cleaned.raw_mean),
                        op.project(cleaned.std), _clean_stats(prepared, self.inputs.clean_options))
        return runtime


def _cleaning(inputs) -> dict:
    """The cleaning keywords of :func:`flatprep.prepare.clean_loaded_run` from a flatten node's inputs."""
    from flatprep.clean import CleanOptions
    from flatprep.prepare import FLAT_PRODUCT_DTYPE

    return {
        # An empty list set on a Nipype input reads back as undefined: a run without sidecars.
        "sidecars": inputs.sidecars if isdefined(inputs.sidecars) else [],
        "confounds_file": inputs.confounds_file if isdefined(inputs.confounds_file) else None,
        "tr_in": inputs.tr_in,
        "options": CleanOptions.from_dict(inputs.clean_options),
        "product_dtype": FLAT_PRODUCT_DTYPE,
    }


def _grid(inputs):
    """The flat grid a flatten node's inputs describe (template, pixel size, patch size)."""
    from flatprep.flatmap import make_grid

    return make_grid(inputs.template, pixel_size=inputs.pixel_size, patch_size=inputs.patch_size)


def _clean_stats(prepared, clean_request: dict) -> dict:
    """Statistics of a :class:`flatprep.prepare.PreparedRun` for the run file, its sidecar and the runs table."""
    cleaned = prepared.cleaned
    return {
        "tr_in": cleaned.tr_in, "tr_out": cleaned.tr_out, "n_dropped": cleaned.n_dropped,
        "n_timepoints_in": cleaned.n_timepoints_in, "n_timepoints_out": cleaned.n_timepoints_out,
        "n_zero_variance": prepared.n_zero_variance_cortex, "clean_options": cleaned.options,
        # As asked (dummy_scans None = from each run's confounds): what new scans are cleaned with.
        "clean_request": dict(clean_request),
    }


class _VolumeOutputSpec(_FlatOutputSpec):
    coverage_file = File(exists=True, desc="(n_pixels,) float32 .npy, in-mask fraction of each pixel's ribbon")
    stats = traits.Dict(desc="TRs, frame counts, dropped volumes, zero-variance pixels, options, volume sampling")


class FlattenVolumeBold(_FlattenInterface):
    """Read an MNI volume run in chunks, project it (one cached sparse operator), clean it
    (flatprep.volume.prepare_volume_run) and write the run's files."""

    input_spec = _GridInputSpec
    output_spec = _VolumeOutputSpec

    def _run_interface(self, runtime):
        import logging

        from flatprep.h5 import clip_blocks, to_float16
        from flatprep.volume import prepare_volume_run, volume_sampling_record

        grid = _grid(self.inputs)
        bold, *mask = self.inputs.bold_files
        run = prepare_volume_run(bold, grid, space=self.inputs.space, mask_file=mask[0] if mask else None,
                                 **_cleaning(self.inputs))
        if run.note:
            logging.getLogger("flatprep.volume").warning("%s: %s", bold, run.note)
        cleaned = run.prepared.cleaned
        frames = to_float16(cleaned.data, source=bold)  # (T, n_pixels): a volume run is cleaned per pixel
        self._results["coverage_file"] = _save("coverage.npy", run.operator.coverage)
        stats = _clean_stats(run.prepared, self.inputs.clean_options) | {"volume_sampling": volume_sampling_record(run)}
        self._write_run(grid, run.operator, clip_blocks(frames, self.inputs.clip_frames), frames.shape,
                        cleaned.raw_mean, cleaned.std, stats)
        return runtime


def _native_operator(grid, surfaces: list, method: str, n_columns: int):
    """The subject's fsnative operator, checked against the run's vertex count."""
    from flatprep.exceptions import FlatmapError, SurfaceFileError
    from flatprep.fsnative import build_native_operator

    if len(surfaces) < 2:
        raise FlatmapError("an fsnative run needs the subject's registration spheres; none were given")
    op = build_native_operator(grid, surfaces[:2], cortex_masks=surfaces[2:4] or None, method=method)
    if op.n_vertices != n_columns:
        raise SurfaceFileError(f"{surfaces[0]}: the registration spheres have {op.n_vertices:,} vertices (both "
                               f"hemispheres) but the fsnative BOLD has {n_columns:,}; use the run's own subject")
    return op


class _FiguresInputSpec(_RunOutputInputSpec):
    flat_file = File(exists=True, mandatory=True, desc="the run's *_desc-flat_bold.h5")
    confounds_file = File(desc="fMRIPrep confounds TSV (motion trace)")
    coverage_file = File(exists=True, desc="(n_pixels,) ribbon coverage of a volume run (.npy)")


class _FiguresOutputSpec(TraitedSpec):
    figures = traits.List(traits.Tuple(traits.Str, traits.Str), desc="(caption, path) of each figure")
    summary = traits.Dict(desc="per-run QC numbers (e.g. tSNR median)")


class RunFigures(_RunOutputInterface):
    """QC figures of one run: mean, tSNR, frames, mask coverage, carpet, motion."""

    input_spec = _FiguresInputSpec
    output_spec = _FiguresOutputSpec

    def _run_interface(self, runtime):
        from .outputs import run_figures

        confounds = self.inputs.confounds_file if isdefined(self.inputs.confounds_file) else None
        coverage = np.load(self.inputs.coverage_file) if isdefined(self.inputs.coverage_file) else None
        figures, summary = run_figures(self.inputs.output_dir, dict(self.inputs.entities),
                                       self.inputs.flat_file, confounds, ribbon_coverage=coverage)
        self._results["figures"] = figures
        self._results["summary"] = summary
        return runtime

