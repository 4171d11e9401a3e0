"""Tests of flatprep.clean: synthetic runs with a known answer for every step."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from flatprep.clean import (
    MOTION_COLUMNS,
    CleaningError,
    CleanOptions,
    clean_bold,
    n_resampled_timepoints,
)
import flatprep.clean as flatprep_clean
from flatprep.exceptions import FlatprepError

SOURCE = "sub-01_task-rest_run-1_space-fsLR_den-91k_bold.dtseries.nii"
CONFOUNDS = "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv"
# Every message must start with the file it is about.
SRC, CONF = re.escape(SOURCE), re.escape(CONFOUNDS)
# Keep the signal itself: no drift removal, no z-score, no float16 rounding.
RAW = dict(detrend=None, standardize=False, dtype="float64")


def _noise(rng, n_timepoints=200, n_vertices=12, mean=1000.0, scale=10.0):
    return (mean + scale * rng.standard_normal((n_timepoints, n_vertices))).astype(np.float32)


def _motion(rng, n_timepoints):
    """Six random-walk motion traces, as an fMRIPrep confounds dict."""
    walks = np.cumsum(rng.standard_normal((n_timepoints, 6)), axis=0) * 0.05
    return {name: walks[:, i] for i, name in enumerate(MOTION_COLUMNS)}


def _non_steady_state(n_timepoints, frames):
    """One fMRIPrep one-hot column per flagged frame."""
    columns = {}
    for i, frame in enumerate(frames):
        column = np.zeros(n_timepoints)
        column[frame] = 1.0
        columns[f"non_steady_state_outlier{i:02d}"] = column
    return columns


def _residual(y, design):
    """Least-squares residual of y (n, v) on design (n, p), computed independently."""
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    return y - design @ beta


def _line(n):
    return np.column_stack([np.ones(n), np.arange(n, dtype=float)])


# --------------------------------------------------------------------------- non-steady state


def test_clean_bold_drops_frames_flagged_by_non_steady_state_columns(rng):
    data = _noise(rng, 100, 5)
    data[:3] += 500  # T1 not yet at steady state: bright leading frames
    result = clean_bold(data, 1.0, confounds=_non_steady_state(100, [0, 1, 2]), source=SOURCE)
    reference = clean_bold(data[3:], 1.0, dummy_scans=0)
    assert result.n_dropped == 3 and result.n_timepoints_in == 100
    assert result.n_timepoints_out == 97 and result.options["dummy_scans"] == 3
    np.testing.assert_array_equal(result.data, reference.data)
    np.testing.assert_allclose(result.raw_mean, data[3:].mean(axis=0), rtol=1e-6)


def test_clean_bold_drops_dummy_scans_without_confounds(rng):
    data = _noise(rng, 100, 4)
    result = clean_bold(data, 1.0, dummy_scans=5)
    assert result.n_dropped == 5 and result.n_timepoints_out == 95
    np.testing.assert_array_equal(result.data, clean_bold(data[5:], 1.0).data)


@pytest.mark.parametrize("dummy_scans", [0, 1, 6])
def test_clean_bold_explicit_dummy_scans_wins_over_columns(rng, dummy_scans):
    data = _noise(rng, 60, 3)
    result = clean_bold(
        data, 1.0, confounds=_non_steady_state(60, [0, 1, 2]), dummy_scans=dummy_scans
    )
    assert result.n_dropped == dummy_scans
    assert result.n_timepoints_out == 60 - dummy_scans


def test_clean_bold_keeps_flagged_frames_after_steady_state_with_a_warning(rng):
    data = _noise(rng, 60, 3)
    confounds = _non_steady_state(60, [0, 1, 10])
    with pytest.warns(UserWarning, match=CONF + r".*frames \[10\]"):
        result = clean_bold(data, 1.0, confounds=confounds, confounds_source=CONFOUNDS)
    assert result.n_dropped == 2


def test_clean_bold_drops_the_same_rows_from_the_confounds(rng):
    n = 120
    motion = _motion(rng, n)
    noise = rng.standard_normal((n, 4))
    data = noise + np.column_stack(list(motion.values())) @ rng.standard_normal((6, 4))
    confounds = {**motion, **_non_steady_state(n, [0, 1, 2, 3])}
    result = clean_bold(
        data, 1.0, confounds=confounds, confounds_strategy="motion", target_tr=None,
        standardize=False, dtype="float64",
    )
    # Residual on the kept frames only: a row offset would leave motion behind.
    kept_motion = np.column_stack(list(motion.values()))[4:]
    expected = _residual(noise[4:], np.column_stack([_line(n - 4), kept_motion]))
    np.testing.assert_allclose(result.data, expected, atol=1e-9)


# --------------------------------------------------------------------------- drifts


def test_clean_bold_turns_a_pure_ramp_into_a_zero_variance_vertex(rng):
    n = 150
    t = np.arange(n, dtype=np.float64)
    data = np.column_stack([1000 + 0.5 * t, 200 - 3.0 * t, _noise(rng, n, 3)]).astype(np.float32)
    data[:, 2] = 0.0  # an all-zero medial-wall vertex
    result = clean_bold(data, 0.8, source=SOURCE)
    assert result.n_zero_variance == 3
    np.testing.assert_array_equal(result.zero_variance, [True, True, True, False, False])
    assert np.all(result.data[:, :3] == 0)
    assert np.isfinite(result.data).all()


def test_clean_bold_linear_detrend_removes_the_line_exactly(rng):
    n = 150
    signal = rng.standard_normal((n, 4))
    data = signal + 50.0 + 0.3 * np.arange(n)[:, None]
    result = clean_bold(data, 1.0, target_tr=None, standardize=False, dtype="float64")
    np.testing.assert_allclose(result.data, _residual(signal, _line(n)), atol=1e-10)
    np.testing.assert_allclose(result.mean, 0.0, atol=1e-6)


def test_clean_bold_highpass_removes_slow_drift_and_keeps_the_signal():
    n, tr = 400, 1.0
    t = np.arange(n) * tr
    signal = np.sin(2 * np.pi * 0.05 * t)
    drift = 2.0 * np.cos(2 * np.pi * 0.003 * t) + 0.01 * t  # period > 1 / 0.01 Hz
    data = (signal + drift)[:, None]
    linear = clean_bold(data, tr, target_tr=None, dtype="float64")
    highpass = clean_bold(data, tr, target_tr=None, dtype="float64", detrend="highpass")
    assert np.corrcoef(highpass.data[:, 0], signal)[0, 1] > 0.98
    assert np.corrcoef(linear.data[:, 0], signal)[0, 1] < 0.6
    assert highpass.options["detrend"] == "highpass" and highpass.options["highpass_hz"] == 0.01


def test_clean_bold_without_detrend_keeps_the_mean(rng):
    data = _noise(rng, 80, 3)
    result = clean_bold(data, 1.0, **RAW)
    np.testing.assert_allclose(result.mean, data.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(result.data, data, rtol=1e-6)


# --------------------------------------------------------------------------- confounds


def test_clean_bold_motion_regression_removes_a_combination_of_motion(rng):
    n = 200
    motion = _motion(rng, n)
    matrix = np.column_stack(list(motion.values()))
    noise = rng.standard_normal((n, 5))
    data = 100.0 + 0.02 * np.arange(n)[:, None] + noise + matrix @ rng.normal(0, 5, (6, 5))
    result = clean_bold(
        data, 1.0, confounds=motion, confounds_strategy="motion", target_tr=None,
        standardize=False, dtype="float64",
    )
    expected = _residual(noise, np.column_stack([_line(n), matrix]))
    np.testing.assert_allclose(result.data, expected, atol=1e-9)
    # The motion model alone: pure motion leaves nothing (zero variance).
    pure = clean_bold(matrix @ rng.standard_normal((6, 2)), 1.0, confounds=motion,
                      confounds_strategy="motion")
    assert pure.n_zero_variance == 2 and np.all(pure.data == 0)


def test_clean_bold_motion_derivatives_are_computed_when_absent(rng):
    n = 150
    motion = _motion(rng, n)
    matrix = np.column_stack(list(motion.values()))
    derivatives = np.vstack([np.zeros((1, 6)), np.diff(matrix, axis=0)])
    noise = rng.standard_normal((n, 3))
    data = noise + derivatives @ rng.normal(0, 20, (6, 3))
    options = dict(confounds_strategy="motion+derivatives", target_tr=None,
                   standardize=False, dtype="float64")
    computed = clean_bold(data, 1.0, confounds=motion, **options)
    # fMRIPrep's own columns, with n/a in the first row.
    given = {**motion}
    for i, name in enumerate(MOTION_COLUMNS):
        column = derivatives[:, i].copy()
        column[0] = np.nan
        given[f"{name}_derivative1"] = column
    from_file = clean_bold(data, 1.0, confounds=given, **options)
    np.testing.assert_allclose(computed.data, from_file.data, atol=1e-10)
    expected = _residual(noise, np.column_stack([_line(n), matrix, derivatives]))
    np.testing.assert_allclose(computed.data, expected, atol=1e-9)
    options["confounds_strategy"] = "motion"
    motion_only = clean_bold(data, 1.0, confounds=motion, **options)
    assert np.abs(motion_only.data - expected).max() > 1.0


def test_clean_bold_replaces_nan_in_the_first_confound_row(rng):
    n = 80
    motion = _motion(rng, n)
    motion["trans_x"] = motion["trans_x"].copy()
    motion["trans_x"][0] = np.nan
    result = clean_bold(_noise(rng, n, 3), 1.0, confounds=motion, confounds_strategy="motion")
    assert np.isfinite(result.data.astype(np.float64)).all()


def test_clean_bold_accepts_dataframes_and_structured_arrays(rng):
    pd = pytest.importorskip("pandas")
    n = 80
    motion = _motion(rng, n)
    data = _noise(rng, n, 3)
    expected = clean_bold(data, 1.0, confounds=motion, confounds_strategy="motion").data
    frame = pd.DataFrame(motion)
    records = np.rec.fromarrays(list(motion.values()), names=list(motion))
    for table in (frame, records):
        result = clean_bold(data, 1.0, confounds=table, confounds_strategy="motion")
        np.testing.assert_array_equal(result.data, expected)


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("tr", [0.8, 2.0, 0.72, 1.5])
def test_clean_bold_resamples_a_sine_to_tr_one(tr):
    n = int(300 / tr)
    phase = 0.3
    data = np.sin(2 * np.pi * 0.05 * np.arange(n) * tr + phase)[:, None]
    result = clean_bold(data, tr, **RAW)
    t_out = np.arange(result.n_timepoints_out) * 1.0
    expected = np.sin(2 * np.pi * 0.05 * t_out + phase)
    assert result.tr_out == 1.0 and result.tr_in == tr
    assert np.corrcoef(result.data[:, 0], expected)[0, 1] > 0.99
    assert np.abs(result.data[:, 0] - expected).max() < 0.02
    # The default pipeline (detrend, z-score, float16) keeps the same shape.
    default = clean_bold(data, tr)
    assert np.corrcoef(default.data[:, 0].astype(np.float64), expected)[0, 1] > 0.99
    linear = clean_bold(data, tr, interpolation="linear", **RAW)
    assert np.corrcoef(linear.data[:, 0], expected)[0, 1] > 0.99


def test_clean_bold_antialiasing_suppresses_frequencies_above_the_target_nyquist():
    # TR 0.5 s -> 1.0 s: the target Nyquist is 0.5 Hz. 0.7 Hz is representable at
    # TR 0.5 (Nyquist 1 Hz) but not at TR 1.0, where it would alias to 0.3 Hz.
    # (0.45 Hz would not do: it lies below 0.5 Hz, inside the filter's transition band.)
    tr, n = 0.5, 400
    t = np.arange(n) * tr
    fast = np.sin(2 * np.pi * 0.7 * t)
    slow = np.sin(2 * np.pi * 0.1 * t)
    result = clean_bold(np.column_stack([fast, slow]), tr, **RAW)
    t_out = np.arange(result.n_timepoints_out) * 1.0
    assert result.data[:, 0].std() / fast.std() < 0.1
    assert 0.95 < result.data[:, 1].std() / slow.std() < 1.05  # passband untouched

    # Naive interpolation without the low-pass: full-amplitude fake 0.3 Hz signal.
    naive = CubicSpline(t, fast)(t_out)
    assert naive.std() / fast.std() > 0.9
    assert np.corrcoef(naive, -np.sin(2 * np.pi * 0.3 * t_out))[0, 1] > 0.99


@pytest.mark.parametrize("interpolation", ["cubic", "linear"])
@pytest.mark.parametrize("tr", [0.5, 0.72, 0.8, 1.5, 2.0])
def test_clean_bold_reproduces_a_constant_exactly(tr, interpolation):
    values = np.array([1234.5678, 5.0, -3.25, 0.0], dtype=np.float32)
    data = np.tile(values, (60, 1))
    result = clean_bold(data, tr, interpolation=interpolation, **RAW)
    expected = np.tile(values.astype(np.float64), (result.n_timepoints_out, 1))
    np.testing.assert_array_equal(result.data, expected)
    assert result.n_zero_variance == 4
    # Z-scored: all zero, never NaN.
    zscored = clean_bold(data, tr)
    assert np.all(zscored.data == 0) and zscored.n_zero_variance == 4
    np.testing.assert_array_equal(zscored.raw_mean, values)


@pytest.mark.parametrize(
    ("n", "tr_in", "tr_out", "expected"),
    [
        (100, 0.8, 1.0, 80),  # floor(79.2) + 1
        (126, 0.8, 1.0, 101),  # 100 s exactly
        (50, 2.0, 1.0, 99),  # upsampling
        (101, 0.72, 1.0, 73),  # 72 s exactly, despite float rounding of 100 * 0.72
        (100, 0.72, 1.0, 72),
        (60, 1.5, 1.0, 89),
        (40, 1.0, 1.0, 40),
        (0, 1.0, 1.0, 0),
    ],
)
def test_n_resampled_timepoints_follows_the_span_formula(n, tr_in, tr_out, expected):
    assert n_resampled_timepoints(n, tr_in, tr_out) == expected


@pytest.mark.parametrize(("n", "tr"), [(100, 0.8), (101, 0.72), (50, 2.0), (60, 1.5)])
def test_clean_bold_output_length_matches_the_formula(rng, n, tr):
    result = clean_bold(_noise(rng, n + 2, 2), tr, dummy_scans=2)
    assert result.n_timepoints_out == math.floor(round((n - 1) * tr, 9)) + 1
    assert result.data.shape == (result.n_timepoints_out, 2)


def test_clean_bold_without_target_tr_keeps_the_input_grid(rng):
    result = clean_bold(_noise(rng, 50, 2), 2.0, target_tr=None)
    assert result.tr_out == 2.0 and result.n_timepoints_out == 50


def test_clean_bold_does_not_depend_on_the_chunk_size(rng):
    data = _noise(rng, 90, 11)
    whole = clean_bold(data, 0.8, chunk_size=None, dtype="float64")
    chunked = clean_bold(data, 0.8, chunk_size=3, dtype="float64")
    np.testing.assert_allclose(chunked.data, whole.data, atol=1e-10)
    np.testing.assert_allclose(chunked.std, whole.std, rtol=1e-6)


@pytest.mark.parametrize("tr", [0.72, 1.4])  # down- and upsampling
def test_float32_products_stay_far_below_a_float16_step(rng, tr):
    """The resampling products in float32 (what the flat-map levels ask for, since they store float16)
    change the z-scores by float32 rounding only: thousands of times below a float16 step."""
    data = _noise(rng, 300, 64)
    exact = clean_bold(data, tr, dtype="float32", product_dtype="float64").data
    fast = clean_bold(data, tr, dtype="float32", product_dtype="float32").data
    assert not np.array_equal(fast, exact)  # the products did run in float32
    change = np.abs(fast - exact)
    assert change.max() < 2e-5  # z-score units
    # against the float16 step of each value (away from 0, where float16 steps shrink to nothing)
    away = np.abs(exact) >= 0.0625
    step = np.spacing(np.abs(exact[away]).astype(np.float16)).astype(np.float32)
    assert np.max(change[away] / step) < 0.05
    # float16 output picks float32 products by itself; float32 output keeps float64 ones
    np.testing.assert_array_equal(clean_bold(data, tr).data, clean_bold(data, tr, product_dtype="float32").data)
    np.testing.assert_array_equal(clean_bold(data, tr, dtype="float32").data, exact)
    with pytest.raises(CleaningError, match="product_dtype must be None, 'float32' or 'float64'; got 'half'"):
        clean_bold(data, tr, product_dtype="half")


# --------------------------------------------------------------------------- z-score and outputs


def test_clean_bold_zscores_each_vertex_and_returns_its_statistics(rng):
    n = 200
    data = _noise(rng, n, 8) * rng.uniform(0.5, 5, 8).astype(np.float32)
    result = clean_bold(data, 0.8, dummy_scans=3, source=SOURCE)
    z = result.data.astype(np.float64)
    assert result.data.dtype == np.float16
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=5e-3)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=5e-3)

    unscaled = clean_bold(data, 0.8, dummy_scans=3, standardize=False, dtype="float64")
    np.testing.assert_allclose(result.mean, unscaled.data.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(result.std, unscaled.data.std(axis=0), rtol=1e-6)
    restored = z * result.std + result.mean  # undo the z-score
    np.testing.assert_allclose(restored, unscaled.data, atol=5e-3 * result.std.max())
    np.testing.assert_allclose(result.raw_mean, data[3:].astype(np.float64).mean(axis=0), rtol=1e-6)
    for array in (result.mean, result.std, result.raw_mean):
        assert array.dtype == np.float32 and array.shape == (8,)
    np.testing.assert_allclose(result.tsnr, result.raw_mean / result.std, rtol=1e-6)


def test_clean_bold_output_dtype_is_configurable(rng):
    data = _noise(rng, 40, 2)
    assert clean_bold(data, 1.0).data.dtype == np.float16
    assert clean_bold(data, 1.0, dtype="float32").data.dtype == np.float32


def test_clean_bold_refuses_to_overflow_float16(rng):
    data = 1e5 + _noise(rng, 40, 2, mean=0.0)
    with pytest.raises(CleaningError, match=SRC + r".*beyond the float16 range"):
        clean_bold(data, 1.0, detrend=None, standardize=False, source=SOURCE)
    assert clean_bold(data, 1.0, detrend=None, standardize=False, dtype="float32").data.max() > 9e4


def test_clean_bold_overflow_check_guards_zscores_too(rng, monkeypatch):
    import flatprep.clean as clean

    # A z-score beyond float16 cannot happen for real runs; shrink the limit to reach the check.
    monkeypatch.setattr(clean, "_dtype_max", lambda dtype: 1.0)
    with pytest.raises(CleaningError, match=SRC + ".*corrupt frames"):
        clean.clean_bold(_noise(rng, 40, 2), 1.0, source=SOURCE)


def test_clean_bold_leaves_its_inputs_unchanged(rng):
    data = _noise(rng, 80, 4)
    motion = _motion(rng, 80)
    motion["trans_x_derivative1"] = np.concatenate([[np.nan], np.diff(motion["trans_x"])])
    data_copy = data.copy()
    motion_copy = {k: v.copy() for k, v in motion.items()}
    clean_bold(data, 0.8, confounds=motion, confounds_strategy="motion+derivatives", dummy_scans=2)
    np.testing.assert_array_equal(data, data_copy)
    assert motion.keys() == motion_copy.keys()
    for key in motion:
        np.testing.assert_array_equal(motion[key], motion_copy[key])


def test_clean_result_options_round_trip_through_json(rng):
    n = 70
    confounds = {**_motion(rng, n), **_non_steady_state(n, [0, 1])}
    data = _noise(rng, n, 3)
    result = clean_bold(
        data, 0.8, confounds=confounds, confounds_strategy="motion", detrend="highpass"
    )
    restored = json.loads(json.dumps(result.options))
    assert restored == result.options and restored["dummy_scans"] == 2
    options = CleanOptions(**restored)
    assert options == CleanOptions.from_dict(restored)
    assert options == CleanOptions(dummy_scans=2, confounds_strategy="motion", detrend="highpass")
    # The stored options repeat the frame selection without the non-steady-state columns.
    again = clean_bold(data, 0.8, confounds=_motion_only(confounds), options=options)
    np.testing.assert_array_equal(again.data, result.data)


def _motion_only(confounds):
    return {name: confounds[name] for name in MOTION_COLUMNS}


def test_clean_options_normalise_values_and_list_fields():
    options = CleanOptions(detrend="none", target_tr=1, highpass_hz=np.float32(0.02))
    assert options.detrend is None and isinstance(options.target_tr, float)
    assert json.dumps(options.to_dict())
    assert set(options.to_dict()) == {f.name for f in dataclasses.fields(CleanOptions)}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("dummy_scans", -1, "None or an int >= 0"),
        ("dummy_scans", 2.0, "None or an int >= 0"),
        ("dummy_scans", True, "None or an int >= 0"),
        ("detrend", "quadratic", "one of 'linear', 'highpass', None"),
        ("highpass_hz", 0.0, "a positive finite frequency"),
        ("confounds_strategy", "acompcor", r"one of 'none', 'motion', 'motion\+derivatives'"),
        ("target_tr", -1.0, "None or a positive finite TR"),
        ("target_tr", float("nan"), "None or a positive finite TR"),
        ("antialias_order", 0, "an int >= 1"),
        ("antialias_cutoff", 1.5, r"a fraction in \(0, 1\)"),
        ("interpolation", "sinc", "one of 'cubic', 'linear'"),
        ("standardize", "yes", "True or False"),
        ("dtype", "int16", "one of 'float16'"),
        ("min_timepoints", 2, "an int >= 4"),
    ],
)
def test_clean_options_reject_bad_values_naming_the_field(name, value, allowed):
    message = rf"CleanOptions: {name} must be {allowed}.*got {re.escape(repr(value))}"
    with pytest.raises(CleaningError, match=message):
        CleanOptions(**{name: value})


def test_clean_bold_rejects_unknown_options(rng):
    message = "unknown cleaning option.*dumy_scans.*known cleaning options: dummy_scans"
    with pytest.raises(CleaningError, match=message):
        clean_bold(_noise(rng, 40, 2), 1.0, dumy_scans=3)
    with pytest.raises(CleaningError, match="unknown cleaning option.*tr_out"):
        CleanOptions.from_dict({"tr_out": 1.0})


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_clean_bold_rejects_nan_and_inf_with_counts(rng, chunk_size):
    data = _noise(rng, 40, 6)
    data[3, 1] = np.nan
    data[7, 1] = np.inf
    data[3, 4] = np.nan
    with pytest.raises(
        CleaningError,
        match=SRC + r": .*NaN or Inf in 2 of 40 frames and 2 of 6 vertices",
    ):
        clean_bold(data, 1.0, source=SOURCE, chunk_size=chunk_size)


@pytest.mark.parametrize("tr", [0, -2.0, float("nan"), float("inf"), "2.0", None])
def test_clean_bold_rejects_a_bad_tr(rng, tr):
    message = SRC + r": TR must be a positive finite.*RepetitionTime"
    with pytest.raises(CleaningError, match=message):
        clean_bold(_noise(rng, 40, 2), tr, source=SOURCE)


def test_clean_bold_rejects_a_run_too_short_after_cleaning(rng):
    with pytest.raises(
        CleaningError,
        match=re.escape(SOURCE)
        + r": too short.*20 frames at TR 1 s, 5 dropped.*15 frames -> 15 frames at TR 1 s"
        r".*min_timepoints=16",
    ):
        clean_bold(_noise(rng, 20, 2), 1.0, dummy_scans=5, source=SOURCE)
    # Downsampling shortens runs: 20 frames at 0.5 s span 9.5 s -> 10 frames at 1 s.
    with pytest.raises(CleaningError, match=r"20 frames at TR 0.5 s.*-> 10 frames at TR 1 s"):
        clean_bold(_noise(rng, 20, 2), 0.5, source=SOURCE)
    with pytest.raises(CleaningError, match=r"100 dropped.*leaves 0 frames"):
        clean_bold(_noise(rng, 20, 2), 1.0, dummy_scans=100, source=SOURCE)


def test_clean_bold_rejects_confounds_of_another_length(rng):
    confounds = _motion(rng, 39)
    message = CONF + r": confound column 'trans_x' has shape \(39,\), expected \(40,\)"
    with pytest.raises(CleaningError, match=message):
        clean_bold(
            _noise(rng, 40, 2), 1.0, confounds=confounds, source=SOURCE, confounds_source=CONFOUNDS
        )


def test_clean_bold_names_missing_motion_columns(rng):
    confounds = {k: v for k, v in _motion(rng, 40).items() if k not in ("trans_z", "rot_x")}
    with pytest.raises(
        CleaningError,
        match=CONF
        + r": confounds_strategy='motion' needs the column\(s\) trans_z, rot_x, which are missing",
    ):
        clean_bold(_noise(rng, 40, 2), 1.0, confounds=confounds, confounds_strategy="motion",
                   confounds_source=CONFOUNDS)


def test_clean_bold_confound_errors_default_to_the_bold_source(rng):
    with pytest.raises(CleaningError, match=SRC + r": confounds_strategy='motion' needs"):
        clean_bold(
            _noise(rng, 40, 2), 1.0, confounds={}, confounds_strategy="motion", source=SOURCE
        )


def test_clean_bold_requires_confounds_for_a_confound_strategy(rng):
    message = SRC + r": confounds_strategy='motion\+derivatives' needs"
    with pytest.raises(CleaningError, match=message):
        clean_bold(_noise(rng, 40, 2), 1.0, confounds_strategy="motion+derivatives", source=SOURCE)


def test_clean_bold_rejects_nan_inside_a_confound_column(rng):
    confounds = _motion(rng, 40)
    confounds["rot_y"] = confounds["rot_y"].copy()
    confounds["rot_y"][[5, 9]] = np.nan
    message = r"column 'rot_y' has 2 non-finite values \(first at row 5\)"
    with pytest.raises(CleaningError, match=message):
        clean_bold(_noise(rng, 40, 2), 1.0, confounds=confounds, confounds_strategy="motion")


def test_clean_bold_rejects_non_numeric_confounds(rng):
    confounds = _motion(rng, 40)
    confounds["trans_y"] = np.array(["n/a"] * 40)
    with pytest.raises(CleaningError, match=r"column 'trans_y' is not numeric"):
        clean_bold(_noise(rng, 40, 2), 1.0, confounds=confounds, confounds_strategy="motion")


def test_clean_bold_rejects_confounds_without_column_names(rng):
    message = SRC + r": confounds must map column names.*got ndarray"
    with pytest.raises(CleaningError, match=message):
        clean_bold(_noise(rng, 40, 2), 1.0, confounds=np.zeros((40, 6)), source=SOURCE)


def test_clean_bold_rejects_data_that_is_not_2d(rng):
    with pytest.raises(CleaningError, match=SRC + r": BOLD data must be 2D.*got shape \(40,\)"):
        clean_bold(np.zeros(40), 1.0, source=SOURCE)
    with pytest.raises(CleaningError, match=r"must be real numbers; got dtype complex128"):
        clean_bold(np.zeros((40, 2), dtype=complex), 1.0)


def test_clean_bold_rejects_a_highpass_above_nyquist(rng):
    message = SRC + r": highpass_hz=0.3 Hz .*Nyquist frequency 0.25 Hz of TR 2 s"
    with pytest.raises(CleaningError, match=message):
        clean_bold(_noise(rng, 40, 2), 2.0, detrend="highpass", highpass_hz=0.3, source=SOURCE)


def test_clean_bold_rejects_options_of_another_type(rng):
    with pytest.raises(CleaningError, match=r"options must be a CleanOptions; got dict.*from_dict"):
        clean_bold(_noise(rng, 40, 2), 1.0, options={"dummy_scans": 2})


def test_clean_bold_rejects_a_bad_chunk_size(rng):
    with pytest.raises(CleaningError, match=r"chunk_size must be None or an int >= 1; got 0"):
        clean_bold(_noise(rng, 40, 2), 1.0, chunk_size=0)


@pytest.mark.parametrize(("n", "tr"), [(300, 0.72), (160, 1.4), (90, 2.0), (200, 0.5)])
def test_banded_resampling_matches_the_dense_matrix_within_float16_rounding(rng, monkeypatch, n, tr):
    # The resampler applies its (n_out, n_in) matrix band by band, leaving out
    # weights below 1e-12 of each row's largest, in float32 when the result is
    # stored as float16. Against the whole dense product in float64 (one band
    # holding every weight, as before): equal to float64 rounding for float64
    # output, and float16 output is the exact value rounded to float16, give or
    # take 1e-5 (a float16 step is 1e-3 at z = 1).
    data = _noise(rng, n, 40) + np.cumsum(rng.normal(size=(n, 1)), axis=0).astype(np.float32)
    banded = clean_bold(data, tr)
    banded64 = clean_bold(data, tr, dtype="float64")
    assert len(flatprep_clean._Resampler(n, tr, 1.0, CleanOptions(), np.dtype(np.float32)).bands) > 1
    monkeypatch.setattr(flatprep_clean, "_BAND_ROWS", 10**9)
    monkeypatch.setattr(flatprep_clean, "_BAND_TOLERANCE", 0.0)
    exact = clean_bold(data, tr, dtype="float64")
    np.testing.assert_allclose(banded64.data, exact.data, rtol=0, atol=1e-9)
    half_step = np.spacing(np.abs(exact.data).astype(np.float16)).astype(np.float64) / 2
    assert np.all(np.abs(banded.data.astype(np.float64) - exact.data) <= half_step + 1e-5)
    np.testing.assert_allclose(banded.std, exact.std, rtol=1e-6)
