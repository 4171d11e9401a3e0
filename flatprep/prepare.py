"""Read and clean one surface BOLD run: the step shared by the participant
level and by embedding new scans, so both see identical data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .clean import CleanOptions, CleanResult, clean_bold
from .exceptions import CleaningError
from .io import SurfaceBold, load_surface_bold, read_confounds, run_repetition_time
from .spaces import FSNATIVE, HEMIS, load_cortex_mask

#: Resampling precision of every run that becomes a flat map (the participant
#: level and ``Encoder.flatten_scan`` alike, so new scans are cleaned exactly as
#: the training data were): the frames are stored as float16 after projection,
#: so float32 products lose nothing that is kept, and take about half the time
#: (HCP-shaped run: cleaning 1.9 -> 1.3 s on one core).
FLAT_PRODUCT_DTYPE = "float32"


@dataclass(frozen=True, eq=False)
class PreparedRun:
    """A cleaned run with where it came from.

    What :func:`prepare_run` (surfaces) and :func:`flatprep.volume.prepare_volume_run`
    (volumes, inside a ``PreparedVolumeRun``) return; QC reads the raw input from it.

    Attributes
    ----------
    cleaned : CleanResult
        ``cleaned.data`` is (n_timepoints_out, 2 * n_vertices), left hemisphere first.
    bold : SurfaceBold
        The raw input (its ``data`` is kept for QC of the raw signal).
    confounds : dict or None
        Confound columns, each (n_timepoints_in,), for motion plots.
    cortex : ndarray, bool, shape (n_columns,)
        Columns expected to carry signal (cortex vertices; every pixel of a volume run).
    """

    cleaned: CleanResult
    bold: SurfaceBold
    confounds: dict | None
    cortex: np.ndarray

    @property
    def n_zero_variance_cortex(self) -> int:
        """Cortex columns without variance (the medial wall, empty by design, is not counted)."""
        return int(np.count_nonzero(self.cleaned.zero_variance & self.cortex))


def _cortex(bold: SurfaceBold) -> np.ndarray:
    """Cortex vertices of a run, (n_columns,) bool; every vertex of a subject's own mesh (fsnative)."""
    if bold.space == FSNATIVE:
        return np.ones(bold.data.shape[1], dtype=bool)
    return np.concatenate([load_cortex_mask(bold.space, h) for h in HEMIS])


def prepare_run(bold_files, *, space: str | None = None, **cleaning) -> PreparedRun:
    """Load a run and clean it with :func:`clean_loaded_run`.

    Parameters
    ----------
    bold_files : sequence of path
        ``[dtseries.nii]`` or ``[left.func.gii, right.func.gii]``.
    space : str, optional
        Expected input space (checked against the vertex count).
    **cleaning
        ``sidecars``, ``confounds_file``, ``options``, ``max_constant_fraction``,
        ``tr_in``: the options of :func:`clean_loaded_run`.

    Returns
    -------
    PreparedRun
    """
    bold = load_surface_bold(list(bold_files), space=space)
    return clean_loaded_run(bold, _cortex(bold), **cleaning)


def clean_loaded_run(
    bold: SurfaceBold,
    cortex: np.ndarray,
    *,
    sidecars=(),
    confounds_file: str | Path | None = None,
    options: CleanOptions | None = None,
    max_constant_fraction: float = 0.5,
    tr_in: float | None = None,
    product_dtype: str | None = None,
) -> PreparedRun:
    """Clean BOLD already in memory: the step every input kind shares (TR, confounds, :func:`clean_bold`).

    Parameters
    ----------
    bold : SurfaceBold
        ``data`` (n_timepoints, n_columns): vertices of a surface space, or the
        flat-map pixels of a volume run (:func:`flatprep.volume.prepare_volume_run`).
    cortex : ndarray, bool, shape (n_columns,)
        Columns that must carry signal (the medial wall is expected constant).
    sidecars : sequence of path
        JSON sidecars, most specific first; each BOLD file's first with
        ``RepetitionTime`` wins, else the file header's TR is used
        (:func:`flatprep.io.run_repetition_time`).
    confounds_file : path, optional
        fMRIPrep confounds TSV (non-steady-state columns, motion).
    options : CleanOptions, optional
    max_constant_fraction : float, default=0.5
        Refuse a run in which more than this fraction of cortex columns is
        constant (an empty or broken export).
    tr_in : float, optional
        Input TR in seconds, instead of the sidecars' and the header's (no
        plausible-range check).
    product_dtype : {"float32", "float64"}, optional
        Precision of the resampling products (:func:`flatprep.clean.clean_bold`);
        the flat-map levels pass :data:`FLAT_PRODUCT_DTYPE`.

    Returns
    -------
    PreparedRun
    """
    tr = run_repetition_time(bold, sidecars, tr_in=tr_in)
    confounds = None
    if confounds_file is not None:
        confounds = read_confounds(confounds_file, n_timepoints=bold.data.shape[0])
    cleaned = clean_bold(bold.data, tr, confounds=confounds, options=options or CleanOptions(),
                         source=str(bold.sources[0]),
                         confounds_source=str(confounds_file) if confounds_file else None,
                         product_dtype=product_dtype)
    prepared = PreparedRun(cleaned, bold, confounds, cortex)
    n_cortex = int(cortex.sum())
    if prepared.n_zero_variance_cortex > max_constant_fraction * n_cortex:
        raise CleaningError(
            f"{bold.sources[0]}: {prepared.n_zero_variance_cortex:,} of {n_cortex:,} cortex vertices are constant "
            f"over time (more than {max_constant_fraction:.0%}); the file holds no usable BOLD signal"
        )
    return prepared
