"""Temporal cleaning of a BOLD run: one function, used at prep time and at inference.

:func:`clean_bold` takes one run as (n_timepoints, n_vertices) and returns it
ready for a model, with everything needed to describe or undo the last step::

    result = clean_bold(bold, tr=0.8, confounds=table, source="sub-01_task-rest_bold.func.gii")
    result.data                      # (n_timepoints_out, n_vertices) float16, z-scored, TR 1.0 s
    result.mean, result.std          # (n_vertices,) float32, the signal before z-scoring
    result.raw_mean                  # (n_vertices,) float32, tissue-contrast mean image
    result.options                   # resolved options, JSON-ready, for the output file

The steps, in order, each a field of :class:`CleanOptions`:

1. Drop non-steady-state volumes: the leading frames flagged by fMRIPrep's
   ``non_steady_state_outlier*`` confound columns, or ``dummy_scans``.
2. Remove slow drifts: linear detrend (default), a DCT high-pass, or nothing.
3. Regress confounds (optional): fMRIPrep motion parameters, with or without
   their derivatives, detrended the same way as the data first.
4. Resample to ``target_tr`` (1.0 s): a zero-phase Butterworth low-pass when
   the target rate is lower than the source rate (anti-aliasing), then a cubic
   spline evaluated on the new time grid.
5. Z-score each vertex; vertices without variance (constant, or all-zero such
   as the CIFTI medial wall) become 0 and are counted.
6. Cast to ``dtype`` (float16), failing on overflow instead of storing inf.

Every operation acts along the time axis on a block of vertices at once; the
Python loops are over vertex chunks (small enough to stay in the CPU cache)
and, when resampling, over diagonal bands of the resampling matrix (an output
frame depends only on the input frames near it), one dense product each.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np
from .config import check_fields, replace_fields, rule, text_none
from .exceptions import CleaningError
from .threads import with_fixed_threads

logger = logging.getLogger(__name__)

__all__ = [
    "CleanOptions",
    "CleanResult",
    "CleaningError",
    "MOTION_COLUMNS",
    "clean_bold",
    "n_resampled_timepoints",
]




#: The six rigid-body motion parameters of an fMRIPrep confounds file.
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
#: Prefix of fMRIPrep's one-hot columns marking non-steady-state volumes.
NON_STEADY_STATE_PREFIX = "non_steady_state_outlier"

#: Vertices per chunk in :func:`clean_bold`: at 1,200 frames one float64 chunk
#: is ~5 MB, so the few copies the steps hold stay in the CPU cache. Whole
#: `flatprep participant` runs, one core, 512 against 1,024 columns interleaved
#: (median of 4 pairs): 6 % less CPU on HCP and fsaverage6 run shapes, 12 % on
#: fs_LR at TR 1.4 s. 256 columns lost again on the float32 output's strided
#: writes, and 8,192 columns (~80 MB) were 1.5-2x slower.
DEFAULT_CHUNK_SIZE = 512
#: Two TRs closer than this (relative) are the same: no resampling.
_TR_RTOL = 1e-6
#: A vertex has zero variance when its std is at most this many machine epsilons
#: of the input dtype times its largest |value|: float rounding of a constant or
#: a pure ramp leaves ~1 eps of "signal", real BOLD has a std of ~1e-2 x mean.
_ZERO_VARIANCE_EPS = 10.0


# --------------------------------------------------------------------------- options


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _positive_finite(value: float) -> bool:
    return 0 < value < math.inf


@dataclass(frozen=True)
class CleanOptions:
    """Settings of :func:`clean_bold`, with the defaults used to build datasets.

    Every field is checked on construction (:func:`flatprep.config.check_fields`);
    an invalid value raises :class:`CleaningError` naming the field, the allowed
    values and the value received. :meth:`to_dict` gives the JSON-ready form
    stored in outputs, and ``CleanOptions(**d)`` (or :meth:`from_dict`) reads it back.
    """

    # Non-steady-state volumes dropped at the start of the run. None: the leading
    # frames flagged by fMRIPrep's non_steady_state_outlier* confound columns (0
    # when there are none). An int always wins over those columns.
    dummy_scans: int | None = field(default=None, metadata=rule("None or an int >= 0", lambda v: v >= 0))
    # Drift removal: "linear" (least-squares line per vertex), "highpass" (DCT
    # regression, see highpass_hz) or None (keep drifts and the mean).
    detrend: Literal["linear", "highpass"] | None = "linear"
    # Cut-off in Hz of detrend="highpass"; ignored otherwise. 0.01 Hz (100 s) is
    # the usual resting-state choice; fMRIPrep's cosine_* columns use 1/128 Hz.
    highpass_hz: float = field(default=0.01, metadata=rule("a positive finite frequency in Hz", _positive_finite))
    # Confounds regressed out: "none", "motion" (trans_*, rot_*) or
    # "motion+derivatives" (adds *_derivative1, computed when absent).
    confounds_strategy: Literal["none", "motion", "motion+derivatives"] = "none"
    # Output TR in s (1.0 as in the reference fm-MAE); None keeps the input TR.
    target_tr: float | None = field(default=1.0, metadata=rule("None or a positive finite TR in s", _positive_finite))
    # Butterworth order of the anti-aliasing low-pass. It runs forwards and
    # backwards (zero phase), so the attenuation in dB is twice that of one pass.
    antialias_order: int = field(default=8, metadata=rule("an int >= 1", lambda v: v >= 1))
    # Anti-aliasing cut-off as a fraction of the target Nyquist frequency
    # (0.5 / target_tr): below 1 so the transition band ends near Nyquist.
    antialias_cutoff: float = field(default=0.9, metadata=rule("a fraction in (0, 1)", lambda v: 0 < v < 1))
    # Interpolation onto the new time grid: "cubic" (not-a-knot spline) or "linear".
    interpolation: Literal["cubic", "linear"] = "cubic"
    # Z-score each vertex. False keeps the resampled signal (for QC, debugging).
    standardize: bool = True
    # Dtype of the returned data; a value beyond its range raises. The participant
    # level asks for float32 and stores float16 through h5.to_float16.
    dtype: Literal["float16", "float32", "float64"] = "float16"
    # Fewest frames a cleaned run may have (one 16-frame training clip); 4 is
    # the fewest a cubic spline and a detrend can work with.
    min_timepoints: int = field(default=16, metadata=rule("an int >= 4", lambda v: v >= 4))

    def __post_init__(self):
        # The command line spells "no detrend" as "none".
        object.__setattr__(self, "detrend", text_none(self.detrend))
        check_fields(self, CleaningError)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON-serialisable values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CleanOptions":
        """Options from a mapping (e.g. read back from an output file).

        Unknown keys raise :class:`CleaningError` instead of being ignored.
        """
        return replace_fields(cls(), values, CleaningError, what="cleaning option")


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class CleanResult:
    """A cleaned run and what describes it.

    Returned by :func:`clean_bold`; :func:`flatprep.prepare.clean_loaded_run` wraps
    it, with the raw input, in a :class:`~flatprep.prepare.PreparedRun`.

    Attributes
    ----------
    data : ndarray, shape (n_timepoints_out, n_vertices), dtype ``options["dtype"]``
        The cleaned (and by default z-scored) frames on the output time grid,
        which starts at the first kept input frame.
    mean, std : ndarray, float32, shape (n_vertices,)
        Per-vertex mean and standard deviation (ddof=0) of the signal after
        detrending, confound regression and resampling, just before z-scoring.
        ``data * std + mean`` undoes the z-score (except on zero-variance vertices).
    raw_mean : ndarray, float32, shape (n_vertices,)
        Temporal mean of the input over the kept frames, before any detrending:
        the tissue-contrast mean image used by QC.
    tr_in, tr_out : float
        Repetition time of the input and of ``data``, in s.
    n_dropped : int
        Non-steady-state frames removed from the start.
    n_timepoints_in, n_timepoints_out : int
        Frames in the input (before dropping) and in ``data``.
    n_zero_variance : int
        Number of vertices without variance (``zero_variance.sum()``).
    zero_variance : ndarray, bool, shape (n_vertices,)
        Vertices whose ``std`` is zero up to float rounding; 0 in ``data`` when
        z-scoring.
    options : dict
        The resolved :class:`CleanOptions` as JSON-ready values, with
        ``dummy_scans`` set to the number of frames actually dropped, so that
        ``CleanOptions(**options)`` repeats this cleaning without the confounds file.
    """

    data: np.ndarray = field(repr=False)
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)
    raw_mean: np.ndarray = field(repr=False)
    tr_in: float
    tr_out: float
    n_dropped: int
    n_timepoints_in: int
    n_timepoints_out: int
    n_zero_variance: int
    zero_variance: np.ndarray = field(repr=False)
    options: dict

    @property
    def tsnr(self) -> np.ndarray:
        """Temporal SNR ``raw_mean / std``: (n_vertices,), 0 where the vertex has no variance."""
        tsnr = temporal_snr(self.raw_mean, self.std)
        tsnr[self.zero_variance] = 0
        return tsnr


def temporal_snr(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Temporal SNR ``mean / std`` per element, 0 where ``std`` is not positive.

    Parameters
    ----------
    mean, std : ndarray, shape (n,)
        Temporal mean before cleaning and std of the cleaned signal (vertices or pixels).

    Returns
    -------
    ndarray, shape (n,), the dtype of ``mean``; inputs are not modified.
    """
    mean, std = np.asarray(mean), np.asarray(std)
    return np.divide(mean, std, out=np.zeros_like(mean), where=std > 0)


# --------------------------------------------------------------------------- time grid


def _same_tr(tr_in: float, tr_out: float) -> bool:
    return math.isclose(tr_in, tr_out, rel_tol=_TR_RTOL)


def n_resampled_timepoints(n_timepoints: int, tr_in: float, tr_out: float) -> int:
    """Number of frames after resampling ``n_timepoints`` frames from ``tr_in`` to ``tr_out``.

    The output grid starts at the first input frame and keeps every point within
    the input span: ``floor((n_timepoints - 1) * tr_in / tr_out) + 1`` (with a
    1e-6 frame tolerance for float rounding, e.g. 100 x 0.72 s), or
    ``n_timepoints`` when the two TRs are equal.
    """
    if n_timepoints < 1:
        return 0
    if _same_tr(tr_in, tr_out):
        return int(n_timepoints)
    return int(math.floor((n_timepoints - 1) * tr_in / tr_out + 1e-6)) + 1


class _Resampler:
    """Resampling of (n_in, n_columns) blocks from ``tr_in`` to ``tr_out``.

    Built once per run; applied to each vertex chunk. Each column is shifted by
    its first value before filtering and shifted back after interpolation:
    filters and splines map an all-zero column to exact zeros, so a constant
    signal comes out bit-for-bit unchanged.
    """

    def __init__(self, n_in: int, tr_in: float, tr_out: float, options: CleanOptions, product_dtype: np.dtype):
        self.n_in, self.tr_in = n_in, tr_in
        self.n_out = n_resampled_timepoints(n_in, tr_in, tr_out)
        self.identity = _same_tr(tr_in, tr_out)
        self.order = options.antialias_order
        # Downsampling: remove what the new grid cannot represent before
        # interpolating, or it folds back as slow fake signal (aliasing).
        self.cutoff_hz = (options.antialias_cutoff * 0.5 / tr_out
                          if not self.identity and tr_in < tr_out else None)
        self.step = tr_out / tr_in  # output spacing in input frames
        # Positions of output frames in input-frame units, kept inside the span.
        self.positions = np.minimum(np.arange(self.n_out) * self.step, n_in - 1)
        # A cubic spline needs 4 points; short upsampled runs fall back to linear.
        self.degree = 3 if options.interpolation == "cubic" and n_in >= 4 else 1
        # Filtering and interpolation are linear and the same for every column:
        # their (n_out, n_in) matrix is built once (and cached), then applied band by band.
        self.matrix = None if self.identity else self._cached_matrix()
        self.work_dtype = product_dtype  # of the products: see clean_bold
        self.bands = [] if self.identity else [
            (rows, inputs, block.astype(self.work_dtype)) for rows, inputs, block in _bands(self.matrix)
        ]

    def __call__(self, y: np.ndarray) -> np.ndarray:
        """(n_in, n_columns) float64 -> (n_out, n_columns) float64 (new array)."""
        if self.identity:
            return y
        anchor = y[:1]  # (1, n_columns)
        # An all-zero column stays exactly 0, so a constant comes back exactly.
        shifted = np.subtract(y, anchor, out=np.empty(y.shape, self.work_dtype), casting="same_kind")
        out = np.empty((self.n_out, y.shape[1]), dtype=self.work_dtype)
        for rows, inputs, block in self.bands:
            np.matmul(block, shifted[inputs], out=out[rows])  # (rows, n_columns)
        out = out.astype(np.float64, copy=False)
        out += anchor
        return out

    def _cached_matrix(self) -> np.ndarray:
        """The (n_out, n_in) matrix from the on-disk cache, built on a miss.

        A dataset has few distinct (frames, TR) pairs, so most runs load it:
        that skips the build and, in a fresh worker, importing scipy.signal and
        scipy.interpolate (1-3 s per process).
        """
        import scipy

        from .cache import cached_arrays, make_key

        key = make_key(kind="resampling", version=1, n_in=self.n_in, tr_in=repr(self.tr_in),
                       step=repr(self.step), n_out=self.n_out, cutoff_hz=repr(self.cutoff_hz),
                       order=self.order, degree=self.degree, scipy=scipy.__version__)
        def build() -> dict[str, np.ndarray]:
            return {"matrix": self._filter_and_interpolate(np.eye(self.n_in))}

        return cached_arrays("resampling", key, build)["matrix"]

    def _filter_and_interpolate(self, y: np.ndarray) -> np.ndarray:
        """The resampling of zero-anchored columns: (n_in, k) -> (n_out, k)."""
        from scipy.interpolate import make_interp_spline
        from scipy.signal import butter, sosfiltfilt

        if self.cutoff_hz is not None:
            wn = self.cutoff_hz / (0.5 / self.tr_in)  # relative to the input Nyquist; < 0.9
            sos = butter(self.order, wn, btype="low", output="sos")
            # sosfiltfilt's default pad, shortened for short runs (it needs < n_in).
            padlen = min(3 * (2 * len(sos) + 1), self.n_in - 1)
            y = sosfiltfilt(sos, y, axis=0, padlen=padlen)
        if self.n_in == 1:
            out = np.repeat(y, self.n_out, axis=0)
        elif self.degree == 3:
            spline = make_interp_spline(np.arange(self.n_in), y, k=3, axis=0)
            out = spline(self.positions)
        else:
            left = np.minimum(np.floor(self.positions).astype(np.int64), self.n_in - 2)
            frac = (self.positions - left)[:, None]
            out = y[left] * (1.0 - frac) + y[left + 1] * frac
        return out


#: Output frames per band of :func:`_bands`: small enough that a band's input
#: window is mostly the filter's support, large enough for an efficient product.
_BAND_ROWS = 24
#: Weights below this fraction of their row's largest are outside the band. The
#: filter and spline responses decay geometrically, so what is left out changes
#: an output by less than 1e-9 of the input's range: far below float16 rounding
#: (5e-4 relative) and below float32 rounding.
_BAND_TOLERANCE = 1e-12


def _bands(matrix: np.ndarray) -> list[tuple[slice, slice, np.ndarray]]:
    """Split an (n_out, n_in) resampling matrix into dense diagonal bands.

    An output frame depends on the input frames near it only (the low-pass and
    the spline decay geometrically away from it), so each run of ``_BAND_ROWS``
    output rows needs a short window of input frames. Applying
    ``(rows, window)`` blocks instead of the whole matrix cuts the work from
    ``n_out * n_in`` to about ``n_out * (window)`` multiply-adds per vertex
    (e.g. 7x fewer at TR 0.72 s over 1,200 frames, 15x at TR 1.4 s), with the
    same dense products. Returns (output rows, input frames, C-ordered block).
    """
    magnitude = np.abs(matrix)
    inside = magnitude > _BAND_TOLERANCE * magnitude.max(axis=1, keepdims=True)
    columns = np.arange(matrix.shape[1])
    first = np.where(inside, columns, matrix.shape[1]).min(axis=1)
    last = np.where(inside, columns, -1).max(axis=1)
    bands = []
    for start in range(0, matrix.shape[0], _BAND_ROWS):
        rows = slice(start, min(start + _BAND_ROWS, matrix.shape[0]))
        lo, hi = int(first[rows].min()), int(last[rows].max()) + 1
        if hi <= lo:  # rows of zeros only (cannot happen for a resampler; kept safe)
            lo, hi = 0, 1
        bands.append((rows, slice(lo, hi), np.ascontiguousarray(matrix[rows, lo:hi])))
    return bands


# --------------------------------------------------------------------------- nuisance model


def _orthonormal_columns(matrix: np.ndarray, scale: float) -> np.ndarray:
    """Orthonormal basis (n, r) of the column span, dropping directions below rounding.

    ``scale`` is the size of the columns before any projection, so a regressor
    that the drift model already explains (e.g. motion that is a pure ramp)
    leaves no spurious direction behind.
    """
    if matrix.shape[1] == 0:
        return matrix
    u, s, _ = np.linalg.svd(matrix, full_matrices=False)
    keep = s > max(matrix.shape) * np.finfo(np.float64).eps * max(scale, 1e-300) * 10
    return u[:, keep]


def _drift_regressors(n: int, tr: float, options: CleanOptions, where: str) -> np.ndarray:
    """Drift design (n, n_drifts): none, [1, t], or [1, t, DCT cosines up to highpass_hz]."""
    if options.detrend is None:
        return np.zeros((n, 0))
    t = np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(n)
    columns = [np.ones(n), t]
    if options.detrend == "highpass":
        nyquist = 0.5 / tr
        if options.highpass_hz >= nyquist:
            raise CleaningError(
                f"{where}: highpass_hz={options.highpass_hz} Hz is at or above the Nyquist "
                f"frequency {nyquist:g} Hz of TR {tr:g} s and would remove the whole signal; "
                "use a lower highpass_hz"
            )
        # DCT-II basis as SPM and nilearn build it: cosine k has frequency
        # k / (2 n tr), so k <= 2 n tr f_c covers every period longer than 1/f_c.
        # The line is kept too, so high-pass removes a linear trend exactly as
        # detrend="linear" does.
        n_cosines = min(int(math.floor(2 * n * tr * options.highpass_hz)), n - 1)
        k = np.arange(1, n_cosines + 1)
        columns.extend(np.cos(np.pi / n * (np.arange(n)[:, None] + 0.5) * k).T)
    return np.column_stack(columns)


def _nuisance_basis(drifts: np.ndarray, confounds: np.ndarray | None) -> np.ndarray:
    """Orthonormal basis (n, r) of everything removed from the data.

    Confounds are detrended with the same drift model before they join the
    basis, so the regression cannot put a trend back; because the two parts are
    orthogonal, removing the basis equals detrending and then regressing
    (Frisch-Waugh-Lovell). With no drift model the confounds are only
    centred, so that the data keep their mean.
    """
    n = drifts.shape[0]
    basis = _orthonormal_columns(drifts, 1.0)
    if confounds is None or confounds.shape[1] == 0:
        return basis
    centre = basis if basis.shape[1] else np.full((n, 1), 1.0 / math.sqrt(n))
    residual = confounds - centre @ (centre.T @ confounds)
    scale = float(np.linalg.norm(confounds, 2))
    return np.column_stack([basis, _orthonormal_columns(residual, scale)])


# --------------------------------------------------------------------------- confounds


def _confound_table(confounds, n_timepoints: int, where: str) -> dict[str, np.ndarray]:
    """Column name -> 1D array of length n_timepoints (values not yet converted)."""
    if isinstance(confounds, np.ndarray) and confounds.dtype.names:
        table = {name: confounds[name] for name in confounds.dtype.names}
    elif hasattr(confounds, "items") and callable(confounds.items):  # dict, DataFrame
        table = dict(confounds.items())
    else:
        raise CleaningError(
            f"{where}: confounds must map column names to 1D arrays (a dict, a pandas "
            f"DataFrame or a numpy structured array); got {type(confounds).__name__}. "
            "Read the *_desc-confounds_timeseries.tsv with its header"
        )
    out = {}
    for name, values in table.items():
        values = np.asarray(values)
        if values.ndim != 1 or values.shape[0] != n_timepoints:
            raise CleaningError(
                f"{where}: confound column {name!r} has shape {values.shape}, expected "
                f"({n_timepoints},) to match the {n_timepoints} frames of the BOLD data; "
                "pass the confounds file of this run"
            )
        out[str(name)] = values
    return out


def _numeric_column(table: dict[str, np.ndarray], name: str, where: str) -> np.ndarray:
    try:
        values = np.asarray(table[name], dtype=np.float64).copy()
    except (TypeError, ValueError) as err:
        raise CleaningError(
            f"{where}: confound column {name!r} is not numeric ({err}); "
            "read the TSV with n/a as missing values"
        ) from None
    # fMRIPrep writes n/a in the first row of derivative columns (no previous frame).
    if values.size and np.isnan(values[0]):
        values[0] = 0.0
    bad = ~np.isfinite(values)
    if bad.any():
        raise CleaningError(
            f"{where}: confound column {name!r} has {int(bad.sum())} non-finite values "
            f"(first at row {int(np.argmax(bad))}); only row 0 may be n/a"
        )
    return values


def _n_non_steady_state(
    table: dict[str, np.ndarray] | None, dummy_scans: int | None, where: str
) -> tuple[int, str]:
    """Frames to drop and where that number came from."""
    columns = sorted(c for c in (table or {}) if c.startswith(NON_STEADY_STATE_PREFIX))
    if dummy_scans is not None:
        if columns:
            logger.info(
                "%s: dummy_scans=%d given, ignoring %d %s* confound columns",
                where, dummy_scans, len(columns), NON_STEADY_STATE_PREFIX,
            )
        return dummy_scans, "dummy_scans"
    if not columns:
        return 0, "default"
    flags = np.column_stack([np.nan_to_num(_numeric_column(table, c, where)) for c in columns])
    flagged = (flags != 0).any(axis=1)  # (n_timepoints,)
    n_leading = int(np.argmin(flagged)) if not flagged.all() else int(flagged.size)
    if flagged[n_leading:].any():
        later = np.flatnonzero(flagged[n_leading:]) + n_leading
        warnings.warn(
            f"{where}: {NON_STEADY_STATE_PREFIX}* flags frames {later.tolist()} after the "
            f"first steady-state frame; only the {n_leading} leading frame(s) are dropped",
            UserWarning,
            stacklevel=3,
        )
    return n_leading, NON_STEADY_STATE_PREFIX


def _confound_regressors(
    table: dict[str, np.ndarray] | None, strategy: str, where: str
) -> np.ndarray | None:
    """The (n_timepoints, n_regressors) confounds of ``strategy``, or None."""
    if strategy == "none":
        return None
    if table is None:
        raise CleaningError(
            f"{where}: confounds_strategy={strategy!r} needs the run's confounds (fMRIPrep "
            "*_desc-confounds_timeseries.tsv or HCP Movement_Regressors.txt), but none were given; pass confounds= or "
            "use confounds_strategy='none'"
        )
    missing = [c for c in MOTION_COLUMNS if c not in table]
    if missing:
        found = ", ".join(list(table)[:12]) + (", ..." if len(table) > 12 else "")
        raise CleaningError(
            f"{where}: confounds_strategy={strategy!r} needs the column(s) "
            f"{', '.join(missing)}, which are missing (found: {found or 'no columns'}); "
            "pass an fMRIPrep confounds file or use confounds_strategy='none'"
        )
    columns = [_numeric_column(table, c, where) for c in MOTION_COLUMNS]
    if strategy == "motion+derivatives":
        computed = []
        for name, values in zip(MOTION_COLUMNS, list(columns)):
            derivative = f"{name}_derivative1"
            if derivative in table:
                columns.append(_numeric_column(table, derivative, where))
            else:
                # Backward difference with a leading 0, as fMRIPrep computes it.
                columns.append(np.concatenate([[0.0], np.diff(values)]))
                computed.append(derivative)
        if computed:
            logger.debug("%s: computed %s from the motion columns", where, ", ".join(computed))
    return np.column_stack(columns)


# --------------------------------------------------------------------------- validation


def _check_data(data, where: str) -> np.ndarray:
    array = np.asarray(data)
    if array.ndim != 2:
        raise CleaningError(
            f"{where}: BOLD data must be 2D (n_timepoints, n_vertices); got shape {array.shape}. "
            "Stack the hemispheres along the vertex axis"
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise CleaningError(
            f"{where}: BOLD data must be real numbers; got dtype {array.dtype}"
        )
    return array


def _check_tr(tr, where: str) -> float:
    if not _is_real(tr) or not (0 < float(tr) < math.inf):
        raise CleaningError(
            f"{where}: TR must be a positive finite number of seconds; got {tr!r}. "
            "Check RepetitionTime in the BOLD JSON sidecar"
        )
    return float(tr)


def _dtype_max(dtype: np.dtype) -> float:
    """Largest finite value of a float dtype (the overflow limit of the cast)."""
    return float(np.finfo(dtype).max)


def _chunks(n: int, size: int | None):
    size = n if size is None else size
    for start in range(0, n, max(size, 1)):
        yield slice(start, min(start + size, n))


# --------------------------------------------------------------------------- main


def _resolve_options(options: CleanOptions | None, overrides: dict) -> CleanOptions:
    if options is not None and not isinstance(options, CleanOptions):
        raise CleaningError(f"options must be a CleanOptions; got {type(options).__name__}. "
                            "Use CleanOptions.from_dict() for a mapping")
    return replace_fields(options or CleanOptions(), overrides, CleaningError, what="cleaning option")


def _time_grid(table, options: CleanOptions, n_in: int, tr_in: float, where: str, confounds_where: str):
    """Frames dropped as non-steady-state (and why), the output TR and frame count; too short raises."""
    n_dropped, dropped_from = _n_non_steady_state(table, options.dummy_scans, confounds_where)
    n_kept = max(n_in - n_dropped, 0)
    tr_out = options.target_tr if options.target_tr is not None else tr_in
    n_out = n_resampled_timepoints(n_kept, tr_in, tr_out)
    if n_out < options.min_timepoints:
        raise CleaningError(
            f"{where}: too short after cleaning: {n_in} frames at TR {tr_in:g} s, {n_dropped} "
            f"dropped as non-steady-state ({dropped_from}), leaves {n_kept} frames -> "
            f"{n_out} frames at TR {tr_out:g} s; at least min_timepoints={options.min_timepoints} "
            "are needed. Exclude this run or lower min_timepoints"
        )
    return n_dropped, dropped_from, tr_out, n_out


def _product_dtype(product_dtype: str | None, options: CleanOptions) -> np.dtype:
    """The resampling products' dtype (see :func:`clean_bold`), checked."""
    if product_dtype is None:
        return np.dtype(np.float32 if options.dtype == "float16" else np.float64)
    if product_dtype not in ("float32", "float64"):
        raise CleaningError(f"product_dtype must be None, 'float32' or 'float64'; got {product_dtype!r}")
    return np.dtype(product_dtype)


def _clean_chunk(x: np.ndarray, basis: np.ndarray, resample, options: CleanOptions, *, tolerance: float,
                 out_max: float, where: str):
    """Clean the kept frames of a few vertices.

    ``x`` is (n_kept, chunk), any real dtype, not modified. Returns the cleaned
    (n_out, chunk) float64 block and, each (chunk,), the raw mean, the mean and
    std after resampling, and the zero-variance flags (std at most ``tolerance``
    times the vertex's largest |value|).
    """
    y = x.astype(np.float64)  # (n_kept, chunk), a copy
    raw_mean = y.mean(axis=0)
    scale = np.maximum(y.max(axis=0), -y.min(axis=0))  # (chunk,) largest |value|
    if basis.shape[1]:
        y -= basis @ (basis.T @ y)
    y = resample(y)  # (n_out, chunk)
    mu = y.mean(axis=0)
    if options.standardize:
        y -= mu  # in place: a chunk is small enough to stay in cache
        sigma = np.sqrt(np.einsum("ij,ij->j", y, y) / y.shape[0])  # population std (ddof=0)
    else:
        sigma = y.std(axis=0)
    flat = sigma <= tolerance * scale
    if options.standardize:
        y /= np.where(flat, 1.0, sigma)
        y[:, flat] = 0.0
    peak = float(max(y.max(), -y.min())) if y.size else 0.0
    if peak > out_max:
        fix = "Check the input for corrupt frames" if options.standardize else "Use standardize=True or dtype='float32'"
        raise CleaningError(f"{where}: cleaned values reach {peak:.6g}, beyond the {options.dtype} range "
                            f"(+-{out_max:g}); expected z-scores well inside it. {fix}")
    return y, raw_mean, mu, sigma, flat


@with_fixed_threads  # the same bytes whatever the BLAS thread count (flatprep.threads)
def clean_bold(
    data: np.ndarray,
    tr: float,
    *,
    confounds=None,
    options: CleanOptions | None = None,
    source: str | None = None,
    confounds_source: str | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    product_dtype: str | None = None,
    **overrides,
) -> CleanResult:
    """Clean one BOLD run for training or inference.

    Drops non-steady-state frames, removes drifts, optionally regresses motion,
    resamples to ``target_tr`` with anti-aliasing, z-scores each vertex and
    casts to the output dtype (see the module docstring and
    :class:`CleanOptions` for each step). The same call is used when datasets
    are built and when a model is applied to new data.

    Parameters
    ----------
    data : array, shape (n_timepoints, n_vertices), any real dtype
        One run; time first. Not modified.
    tr : float
        Repetition time of ``data`` in s.
    confounds : mapping of str to array of shape (n_timepoints,), optional
        The run's fMRIPrep confounds (a dict, a pandas DataFrame or a numpy
        structured array with named fields); pandas is not required. Used for
        the ``non_steady_state_outlier*`` columns and by
        ``confounds_strategy``. Not modified.
    options : CleanOptions, optional
        Cleaning settings; default ``CleanOptions()``.
    source : str, optional
        Name of the BOLD file, used in every error and log message.
    confounds_source : str, optional
        Name of the confounds file for messages about it; default ``source``.
    chunk_size : int or None, default=512
        Vertices processed at once, to bound memory and stay in cache (None: all
        at once). The result depends on it only through float rounding (the
        matrix products' summation order), so it is not one of the options.
    product_dtype : {"float32", "float64"} or None, default=None
        Precision of the resampling products, the costliest step. None: float32
        when ``options.dtype`` is float16, else float64. float32 rounding (about
        1e-7 relative, a few 1e-6 on z-scores) is thousands of times below a
        float16 step and the products take about half the time, so a caller that
        stores the frames as float16 later (after a projection) asks for it.
        Like ``chunk_size``, not one of the options.
    **overrides
        Fields of :class:`CleanOptions` replacing those of ``options``, e.g.
        ``clean_bold(data, 2.0, dummy_scans=4)``; unknown names raise.

    Returns
    -------
    CleanResult
        ``data`` of shape (n_timepoints_out, n_vertices) in ``options.dtype``
        with ``n_timepoints_out = floor((n_timepoints - n_dropped - 1) * tr /
        target_tr) + 1``, plus mean/std/raw_mean (n_vertices,) float32, counts and
        the resolved options.

    Raises
    ------
    CleaningError
        Bad options; data not 2D; NaN or Inf in ``data``; ``tr`` not positive
        and finite; confound columns of the wrong length, missing or
        non-finite; fewer than ``min_timepoints`` frames after cleaning; a value
        outside the range of ``dtype`` after cleaning. Each message names
        ``source`` and the fix.

    Notes
    -----
    Non-steady-state frames: without ``dummy_scans``, the leading frames
    flagged by any ``non_steady_state_outlier*`` column are dropped (a
    flagged frame after the first unflagged one is kept, with a warning). An
    explicit ``dummy_scans`` (including 0) wins over the columns.

    Drifts and confounds form one least-squares model. ``detrend="highpass"``
    regresses a constant, a line and the DCT-II cosines of frequency up to
    ``highpass_hz`` (as SPM and nilearn's cosine drift model), rather than
    filtering, so it has no edge transients and works on short runs. Confounds
    are detrended with the same model before regression. n/a in the first row
    of a confound column is read as 0; ``*_derivative1`` columns are computed
    as a backward difference with a leading 0 when the file lacks them.

    Resampling: when ``target_tr > tr`` the signal is first low-passed at
    ``antialias_cutoff * 0.5 / target_tr`` Hz by a Butterworth filter of order
    ``antialias_order`` applied forwards and backwards (``sosfiltfilt``: zero
    phase, so no lag between vertices or runs); then a cubic spline through
    the input frames is evaluated at ``0, target_tr, 2 * target_tr, ...`` s
    from the first kept frame, up to the last kept frame. This handles any TR
    ratio (0.72 -> 1.0 as 2.0 -> 1.0) and reproduces a constant exactly.
    Equal TRs skip resampling.

    Z-scoring uses the population std (ddof=0). A vertex whose std is at most
    ``10 * eps(input dtype) * max|x|`` is zero-variance: it becomes 0 (never
    NaN) when z-scoring, and it is counted either way.

    Examples
    --------
    >>> import numpy as np
    >>> bold = np.random.default_rng(0).normal(1000, 10, size=(120, 5)).astype("float32")
    >>> result = clean_bold(bold, 2.0, dummy_scans=2)
    >>> result.data.shape, result.data.dtype, result.n_timepoints_out
    ((235, 5), dtype('float16'), 235)
    """
    options = _resolve_options(options, overrides)
    where = str(source) if source is not None else "BOLD data"
    confounds_where = str(confounds_source) if confounds_source is not None else where
    if chunk_size is not None and (not _is_int(chunk_size) or chunk_size < 1):
        raise CleaningError(f"chunk_size must be None or an int >= 1; got {chunk_size!r}")

    x = _check_data(data, where)
    tr_in = _check_tr(tr, where)
    n_in, n_vertices = x.shape
    table = None if confounds is None else _confound_table(confounds, n_in, confounds_where)

    # 1. Non-steady-state frames.
    n_dropped, dropped_from, tr_out, n_out = _time_grid(table, options, n_in, tr_in, where, confounds_where)
    n_kept = n_in - n_dropped  # positive: _time_grid refused a run too short

    # 2-3. Drift and confound model, one orthonormal basis for the whole run.
    regressors = _confound_regressors(table, options.confounds_strategy, confounds_where)
    if regressors is not None:
        regressors = regressors[n_dropped:]
    basis = _nuisance_basis(_drift_regressors(n_kept, tr_in, options, where), regressors)
    resample = _Resampler(n_kept, tr_in, tr_out, options, _product_dtype(product_dtype, options))

    out_dtype = np.dtype(options.dtype)
    out_max = _dtype_max(out_dtype)
    # Rounding in the input dtype sets how "constant" a vertex can look.
    in_eps = float(np.finfo(x.dtype).eps) if np.issubdtype(x.dtype, np.floating) else float(
        np.finfo(np.float64).eps
    )

    out = np.empty((n_out, n_vertices), dtype=out_dtype)
    mean = np.empty(n_vertices, dtype=np.float32)
    std = np.empty(n_vertices, dtype=np.float32)
    raw_mean = np.empty(n_vertices, dtype=np.float32)
    zero_variance = np.zeros(n_vertices, dtype=bool)
    bad_frames = np.zeros(n_in, dtype=bool)
    n_bad_vertices = 0

    for cols in _chunks(n_vertices, chunk_size):
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x[:, cols]).all():
            bad = ~np.isfinite(x[:, cols])  # (n_in, chunk)
            # Keep scanning so the message gives the full count; skip the work.
            bad_frames |= bad.any(axis=1)
            n_bad_vertices += int(bad.any(axis=0).sum())
            continue
        if n_bad_vertices:
            continue
        out[:, cols], raw_mean[cols], mean[cols], std[cols], zero_variance[cols] = _clean_chunk(
            x[n_dropped:, cols], basis, resample, options, tolerance=_ZERO_VARIANCE_EPS * in_eps,
            out_max=out_max, where=where)

    if n_bad_vertices:
        raise CleaningError(
            f"{where}: BOLD data contains NaN or Inf in {int(bad_frames.sum())} of {n_in} frames "
            f"and {n_bad_vertices} of {n_vertices} vertices; expected finite values. "
            "Check the input file (a failed resampling or a truncated download)"
        )

    n_zero_variance = int(zero_variance.sum())
    resolved = dataclasses.replace(options, dummy_scans=n_dropped).to_dict()
    logger.debug(
        "%s: %d frames at TR %g s, %d dropped (%s) -> %d frames at TR %g s; "
        "%d of %d vertices without variance",
        where, n_in, tr_in, n_dropped, dropped_from, n_out, tr_out, n_zero_variance, n_vertices,
    )
    return CleanResult(
        data=out,
        mean=mean,
        std=std,
        raw_mean=raw_mean,
        tr_in=tr_in,
        tr_out=float(tr_out),
        n_dropped=int(n_dropped),
        n_timepoints_in=int(n_in),
        n_timepoints_out=int(n_out),
        n_zero_variance=n_zero_variance,
        zero_variance=zero_variance,
        options=resolved,
    )
