"""Nipype workflow factories."""

from __future__ import annotations

from flatprep.flatmap import DEFAULT_PIXEL_SIZE


def init_flatten_wf(
    *,
    space: str,
    output_dir: str,
    clean_options: dict,
    template: str = "fsaverage",
    pixel_size: float = DEFAULT_PIXEL_SIZE,
    patch_size: int = 16,
    method: str = "linear",
    clip_frames: int = 16,
    with_figures: bool = True,
    tr_in: float | None = None,
    name: str = "flatten_wf",
):
    """Flatten one BOLD run: clean, project onto the flat map, write HDF5 and QC figures.

    A surface run is read, cleaned per vertex, projected and written (HDF5
    and JSON sidecar) in one node (``flatten``). A volume run (``space``
    MNI152NLin6Asym or MNI152NLin2009cAsym) is read in frame chunks, projected
    by one cached (pixels x voxels) operator, cleaned per pixel and written,
    in one node (``flatten``); its QC adds the ribbon coverage map. The
    ``figures`` node reads the run file.

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from flatprep.pipelines.workflows import init_flatten_wf
            wf = init_flatten_wf(space="fsLR", output_dir=".", clean_options={})

    Parameters
    ----------
    space : str
        Input space (fsaverage5, fsaverage6, fsaverage, fsLR; MNI152NLin6Asym, MNI152NLin2009cAsym).
    output_dir : str
        Root of the flatprep derivative dataset.
    clean_options : dict
        :class:`flatprep.clean.CleanOptions` as a dict.
    template : str, default="fsaverage"
        Flat template of the grid.
    pixel_size : float, default=DEFAULT_PIXEL_SIZE (1.2 mm)
        Pixel edge in mm.
    patch_size : int, default=16
        Grid dimensions are multiples of it.
    method : {"linear", "nearest"}, default="linear"
        Interpolation of the projection operator.
    clip_frames : int, default=16
        Frames per HDF5 chunk (one training clip).
    with_figures : bool, default=True
        Write QC figures.
    tr_in : float, optional
        Input TR in seconds instead of the sidecars' and the header's.
    name : str, default="flatten_wf"

    Inputs
    ------
    bold_files
        ``[dtseries.nii]`` or ``[left.func.gii, right.func.gii]``; for volumes
        ``[preproc_bold.nii.gz]`` or ``[preproc_bold.nii.gz, brain_mask.nii.gz]``.
    sidecars
        JSON sidecars, most specific first.
    confounds_file
        fMRIPrep confounds TSV (optional).
    entities
        BIDS entities of the run.
    sources
        Input files as dicts with path, uri and sha256.
    inputs_key
        Hash of inputs and options, stored for rerun checks.
    surfaces
        fsnative only: registration spheres (L, R), then cortex masks (L, R; "" if none).
    events_files
        HCP ``EVs/*.txt`` files whose events are stored with the run (optional).

    Outputs
    -------
    out_file
        The ``*_desc-flat_bold.h5`` written.
    out_sidecar
        Its JSON sidecar.
    stats
        Cleaning statistics (TRs, frame counts, dropped volumes, zero-variance vertices).
    figures
        (caption, relative path) of each QC figure.
    qc_summary
        Per-run QC numbers.
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from flatprep.volume import VOLUME_SPACES

    from .interfaces import FlattenSurfaceBold, FlattenVolumeBold, RunFigures

    volume = space in VOLUME_SPACES
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = _flatten_desc(space, volume, clean_options, template, pixel_size, method)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["bold_files", "sidecars", "confounds_file", "entities", "sources", "inputs_key",
                "surfaces", "events_files"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["out_file", "out_sidecar", "stats", "figures", "qc_summary"]), name="outputnode")
    if volume:
        # Read, project, clean and write in one node: the (T, n_pixels) run never exists as voxels.
        flatten = pe.Node(FlattenVolumeBold(space=space, clean_options=clean_options, template=template,
                                            pixel_size=pixel_size, patch_size=patch_size, tr_in=tr_in,
                                            output_dir=output_dir, clip_frames=clip_frames),
                          name="flatten", mem_gb=1.5)
    else:
        # Read, clean, project and write in one node: neither the cleaned vertex data nor the projected
        # frames go through an intermediate file.
        flatten = pe.Node(FlattenSurfaceBold(space=space, clean_options=clean_options, tr_in=tr_in,
                                             template=template, pixel_size=pixel_size, patch_size=patch_size,
                                             method=method, output_dir=output_dir, clip_frames=clip_frames),
                          name="flatten", mem_gb=1.0)
        workflow.connect([(inputnode, flatten, [("surfaces", "surfaces")])])

    # fmt: off
    workflow.connect([
        (inputnode, flatten, [("bold_files", "bold_files"), ("sidecars", "sidecars"),
                              ("confounds_file", "confounds_file"), ("entities", "entities"),
                              ("sources", "sources"), ("inputs_key", "inputs_key"),
                              ("events_files", "events_files")]),
        (flatten, outputnode, [("stats", "stats"), ("out_file", "out_file"), ("out_sidecar", "out_sidecar")]),
    ])
    # fmt: on

    if with_figures:
        figures = pe.Node(RunFigures(output_dir=output_dir), name="figures", mem_gb=0.5)
        # fmt: off
        workflow.connect([
            (inputnode, figures, [("entities", "entities"), ("confounds_file", "confounds_file")]),
            (flatten, figures, [("out_file", "flat_file")]),
            (figures, outputnode, [("figures", "figures"), ("summary", "qc_summary")]),
        ])
        # fmt: on
        if volume:
            workflow.connect([(flatten, figures, [("coverage_file", "coverage_file")])])
    return workflow


def _flatten_desc(space, volume, clean_options, template, pixel_size, method) -> str:
    """The methods paragraph of :func:`init_flatten_wf`, from its real arguments."""
    cleaning = (
        f"(non-steady-state volumes dropped, {clean_options.get('detrend', 'linear')} detrending, confounds: "
        f"{clean_options.get('confounds_strategy', 'none')}, resampled to a TR of "
        f"{clean_options.get('target_tr', 1.0)} s with an anti-aliasing low-pass, z-scored per "
    )
    if volume:
        return (
            f"Volumetric BOLD in {space} space was sampled within the cortical ribbon of the HCP S1200 white and "
            f"pial surfaces (fs_LR 32k, MNI152NLin6Asym; ribbon-constrained weights) and carried onto the "
            f"{template} flat map at {pixel_size} mm by one sparse operator, then cleaned {cleaning}pixel)."
        )
    return (
        f"Surface BOLD in {space} space was cleaned {cleaning}vertex) and projected with {method} barycentric "
        f"weights onto the {template} flat map at {pixel_size} mm."
    )
