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
    """Flatten one surface BOLD run: clean, project onto the flat map, write HDF5 and QC figures.

    Workflow Graph
        .. workflow::
            :graph2use: orig
            :simple_form: yes

            from flatprep.pipelines.workflows import init_flatten_wf
            wf = init_flatten_wf(space="fsLR", output_dir=".", clean_options={})

    Parameters
    ----------
    space : str
        Input surface space (fsaverage5, fsaverage6, fsaverage, fsLR).
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
        ``[dtseries.nii]`` or ``[left.func.gii, right.func.gii]``.
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

    from .interfaces import CleanSurfaceBold, FlatRunSink, ProjectToFlat, RunFigures

    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        f"Surface BOLD in {space} space was cleaned (non-steady-state volumes dropped, "
        f"{clean_options.get('detrend', 'linear')} detrending, confounds: "
        f"{clean_options.get('confounds_strategy', 'none')}, resampled to a TR of "
        f"{clean_options.get('target_tr', 1.0)} s with an anti-aliasing low-pass, z-scored per vertex) and "
        f"projected with {method} barycentric weights onto the {template} flat map at {pixel_size} mm."
    )
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["bold_files", "sidecars", "confounds_file", "entities", "sources", "inputs_key",
                "surfaces", "events_files"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["out_file", "out_sidecar", "stats", "figures", "qc_summary"]), name="outputnode")

    clean = pe.Node(CleanSurfaceBold(space=space, clean_options=clean_options, tr_in=tr_in), name="clean",
                    mem_gb=1.0)
    project = pe.Node(ProjectToFlat(space=space, template=template, pixel_size=pixel_size,
                                    patch_size=patch_size, method=method), name="project", mem_gb=1.0)
    ds_flat = pe.Node(FlatRunSink(output_dir=output_dir, clip_frames=clip_frames), name="ds_flat",
                      mem_gb=0.5, run_without_submitting=True)

    # fmt: off
    workflow.connect([
        (inputnode, clean, [("bold_files", "bold_files"), ("sidecars", "sidecars"),
                            ("confounds_file", "confounds_file")]),
        (inputnode, project, [("surfaces", "surfaces")]),
        (inputnode, ds_flat, [("entities", "entities"), ("sources", "sources"), ("inputs_key", "inputs_key"),
                              ("events_files", "events_files")]),
        (clean, project, [("cleaned_file", "cleaned_file"), ("raw_mean_file", "raw_mean_file"),
                          ("std_file", "std_file")]),
        (clean, ds_flat, [("stats", "stats")]),
        (project, ds_flat, [("frames_file", "frames_file"), ("mean_file", "mean_file"),
                            ("std_file", "std_file"), ("mask_file", "mask_file"), ("grid_attrs", "grid_attrs")]),
        (clean, outputnode, [("stats", "stats")]),
        (ds_flat, outputnode, [("out_file", "out_file"), ("out_sidecar", "out_sidecar")]),
    ])
    # fmt: on

    if with_figures:
        figures = pe.Node(RunFigures(output_dir=output_dir), name="figures", mem_gb=0.5)
        # fmt: off
        workflow.connect([
            (inputnode, figures, [("entities", "entities"), ("confounds_file", "confounds_file")]),
            (ds_flat, figures, [("out_file", "flat_file")]),
            (figures, outputnode, [("figures", "figures"), ("summary", "qc_summary")]),
        ])
        # fmt: on
    return workflow
