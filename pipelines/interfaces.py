"""Nipype interfaces: thin adapters over flatprep library functions.

Large arrays travel between nodes as ``.npy`` files in each node's folder;
small results (statistics, grid description) as dict outputs.
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


def _save_blocks(name: str, shape: tuple[int, int], blocks) -> str:
    """Write a float16 ``.npy`` of ``shape`` from its row blocks (C-ordered float16 arrays), as ``np.save`` would."""
    from flatprep.atomic import atomic_path

    path = os.path.abspath(name)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False, "shape": shape}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a full disk names the file
        np.lib.format.write_array_header_1_0(handle, header)
        for block in blocks:
            handle.write(np.ascontiguousarray(block, dtype=np.float16).data)
    return path


def _load_blocks(name: str, rows: int) -> tuple[tuple[int, int], object]:
    """Shape and row blocks (``rows`` rows each) of a 2-D C-ordered ``.npy`` such as :func:`_save_blocks` writes.

    The blocks are read one after the other: the array is never held whole nor
    mapped (a mapping would count all of its pages in the process's memory).
    """
    from flatprep.exceptions import RunFileError

    with open(name, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        offset = handle.tell()
    if fortran or len(shape) != 2:
        raise RunFileError(f"{name}: expected a 2-D C-ordered array, got shape {shape} (Fortran order: {fortran})")

    def blocks():
        with open(name, "rb") as handle:
            handle.seek(offset)
            for start in range(0, shape[0], rows):
                count = min(rows, shape[0] - start)
                block = np.fromfile(handle, dtype=dtype, count=count * shape[1])
                if block.size != count * shape[1]:
                    raise RunFileError(f"{name}: ends inside frame {start + block.size // shape[1]} of {shape[0]} "
                                       "(cut short)")
                yield block.reshape(count, shape[1])

    return shape, blocks()


class _CleanInputSpec(BaseInterfaceInputSpec):
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


class _GridInputSpec(_CleanInputSpec):
    template = traits.Str("fsaverage", usedefault=True, desc="flat template")
    pixel_size = traits.Float(DEFAULT_PIXEL_SIZE, usedefault=True, desc="pixel edge in mm")
    patch_size = traits.Int(16, usedefault=True, desc="grid dimensions are multiples of it")


class _SurfaceInputSpec(_GridInputSpec):
    method = traits.Enum("linear", "nearest", usedefault=True, desc="interpolation of the operator")
    surfaces = InputMultiObject(traits.Str(), value=[], usedefault=True,
                                desc="fsnative: registration spheres (L, R), then cortex masks (L, R; '' if none)")


class _FlatOutputSpec(TraitedSpec):
    frames_file = File(exists=True, desc="(T, n_pixels) float16 .npy, z-scored")
    mean_file = File(exists=True, desc="(n_pixels,) float32 .npy, temporal mean before cleaning")
    std_file = File(exists=True, desc="(n_pixels,) float32 .npy, std before z-scoring")
    mask_file = File(exists=True, desc="(height, width) bool .npy, the grid's valid pixels")
    grid_attrs = traits.Dict(desc="grid description and operator key")
    stats = traits.Dict(desc="TRs, frame counts, dropped volumes, zero-variance vertices, options")


class FlattenSurfaceBold(SimpleInterface):
    """Read a surface BOLD run, clean it per vertex (flatprep.prepare.prepare_run) and project it onto the
    flat map (one cached sparse operator), in one node: the cleaned vertex data never goes to disk."""

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
        # As cleaned (float16 by default): projected in float32 either way, stored as float16, written
        # block by block (the run's (T, n_pixels) frames are never held whole).
        blocks = op.project_float16_blocks(cleaned.data, source=str(self.inputs.bold_files[0]))
        frames_file = _save_blocks("frames.npy", (len(cleaned.data), grid.n_pixels), blocks)
        _save_flat(self._results, grid, op, frames_file, op.project(cleaned.raw_mean), op.project(cleaned.std))
        self._results["stats"] = _clean_stats(prepared, self.inputs.clean_options)
        return runtime


def _save_flat(results: dict, grid, operator, frames_file: str, mean, std) -> None:
    """Fill the outputs of :class:`_FlatOutputSpec` but ``stats``: the frames ``.npy`` already written,
    ``mean`` and ``std`` on the grid ((n_pixels,), stored float32), the grid's mask and its description
    with the operator's key."""
    results["frames_file"] = frames_file
    results["mean_file"] = _save("mean.npy", np.asarray(mean).astype(np.float32))
    results["std_file"] = _save("std.npy", np.asarray(std).astype(np.float32))
    results["mask_file"] = _save("mask.npy", grid.mask)
    results["grid_attrs"] = grid.describe() | {
        "space": operator.space.name, "method": operator.method, "operator_key": operator.key,
    }


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
    """Statistics of a :class:`flatprep.prepare.PreparedRun` for the sink and the runs table."""
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


class FlattenVolumeBold(SimpleInterface):
    """Read an MNI volume run in chunks, project it (one cached sparse operator) and clean it
    (flatprep.volume.prepare_volume_run)."""

    input_spec = _GridInputSpec
    output_spec = _VolumeOutputSpec

    def _run_interface(self, runtime):
        import logging

        from flatprep.h5 import to_float16
        from flatprep.volume import prepare_volume_run, volume_sampling_record

        grid = _grid(self.inputs)
        bold, *mask = self.inputs.bold_files
        run = prepare_volume_run(bold, grid, space=self.inputs.space, mask_file=mask[0] if mask else None,
                                 **_cleaning(self.inputs))
        if run.note:
            logging.getLogger("flatprep.volume").warning("%s: %s", bold, run.note)
        cleaned = run.prepared.cleaned
        frames_file = _save("frames.npy", to_float16(cleaned.data, source=bold))
        _save_flat(self._results, grid, run.operator, frames_file, cleaned.raw_mean, cleaned.std)
        self._results["coverage_file"] = _save("coverage.npy", run.operator.coverage)
        self._results["stats"] = _clean_stats(run.prepared, self.inputs.clean_options) | {
            "volume_sampling": volume_sampling_record(run)}
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


class _RunOutputInputSpec(BaseInterfaceInputSpec):
    """Where a run's outputs go: the derivative dataset and the run's BIDS entities."""

    output_dir = traits.Str(mandatory=True, desc="root of the flatprep derivative dataset")
    entities = traits.Dict(mandatory=True, desc="BIDS entities of the run (subject, task, space, ...)")


class _SinkInputSpec(_RunOutputInputSpec):
    frames_file = File(exists=True, mandatory=True, desc="(T, n_pixels) float16 .npy")
    mean_file = File(exists=True, mandatory=True, desc="(n_pixels,) .npy")
    std_file = File(exists=True, mandatory=True, desc="(n_pixels,) .npy")
    mask_file = File(exists=True, mandatory=True, desc="(height, width) bool .npy")
    grid_attrs = traits.Dict(mandatory=True, desc="grid description and operator key")
    stats = traits.Dict(mandatory=True, desc="cleaning statistics and options")
    sources = traits.List(traits.Dict(), mandatory=True, desc="input files: path, uri, sha256")
    inputs_key = traits.Str(mandatory=True, desc="hash of inputs and options; a rerun skips matching outputs")
    clip_frames = traits.Int(16, usedefault=True, desc="frames per HDF5 chunk")
    events_files = InputMultiObject(File(exists=True), value=[], usedefault=True,
                                    desc="HCP EVs/*.txt whose events are stored with the run")


class _SinkOutputSpec(TraitedSpec):
    out_file = File(desc="the *_desc-flat_bold.h5 written")
    out_sidecar = File(desc="its JSON sidecar")
    written = traits.Dict(desc="outputs.file_stamp of out_file as written, for the runner's completeness check")


class _RunOutputInterface(SimpleInterface):
    """An interface that writes a run's outputs into the derivative dataset."""

    # Never answered from Nipype's cache: a cached result must not stand in for a file deleted since.
    _always_run = True


class FlatRunSink(_RunOutputInterface):
    """Write the per-run HDF5 and JSON sidecar under BIDS derivative names.

    Paths come from ``bids_specs/flatprep.json`` through pybids ``build_path``;
    both files are written atomically, the HDF5 last among the two so that its
    presence means the run is complete.
    """

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        from flatprep.h5 import write_run_blocks

        from .outputs import derivative_path, file_stamp, write_json

        entities = dict(self.inputs.entities)
        out_file = derivative_path(self.inputs.output_dir, entities | {"desc": "flat", "suffix": "bold", "extension": ".h5"})
        sidecar = out_file.with_suffix(".json")
        stats, grid = self.inputs.stats, self.inputs.grid_attrs
        # Read clip by clip, then written and checksummed in the same pass (flatprep.h5.write_run_blocks).
        shape, blocks = _load_blocks(self.inputs.frames_file, max(1, self.inputs.clip_frames))
        extra = {}
        if isdefined(self.inputs.events_files) and self.inputs.events_files:
            from flatprep.hcp import events_records, read_hcp_events

            # Onsets in seconds from the first input frame (dropped volumes included).
            extra["events"] = events_records(read_hcp_events(self.inputs.events_files))
        write_json(sidecar, {
            "RepetitionTime": stats["tr_out"],
            "OriginalRepetitionTime": stats["tr_in"],
            "Sources": [s["uri"] for s in self.inputs.sources],
            "FlatGrid": grid,
            "NumberOfFrames": int(shape[0]),
            "NonSteadyStateVolumesDropped": stats["n_dropped"],
            "ZeroVarianceVertices": stats["n_zero_variance"],
            "Cleaning": stats["clean_options"],
            "StorageDType": "float16",
            **({"VolumeSampling": stats["volume_sampling"]} if "volume_sampling" in stats else {}),
        })
        write_run_blocks(
            out_file, blocks, shape=shape, mean=np.load(self.inputs.mean_file), std=np.load(self.inputs.std_file),
            mask=np.load(self.inputs.mask_file), clip_frames=self.inputs.clip_frames,
            attrs={
                "tr_in": stats["tr_in"], "tr_out": stats["tr_out"], "n_timepoints_in": stats["n_timepoints_in"],
                "n_dropped": stats["n_dropped"], "n_zero_variance": stats["n_zero_variance"],
                "entities": entities, "sources": list(self.inputs.sources),
                "clean_options": stats["clean_options"], "clean_request": stats["clean_request"],
                "inputs_key": self.inputs.inputs_key, **extra,
            },
            grid_attrs=grid,
        )
        self._results["out_file"] = str(out_file)
        self._results["out_sidecar"] = str(sidecar)
        self._results["written"] = file_stamp(out_file)
        return runtime


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

