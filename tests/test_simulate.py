"""Tests of flatprep.sample.simulate, the signal model of the sample subjects: coupled network time courses,
the haemodynamic response, task regressors and head motion."""

import numpy as np
import pytest

from flatprep.sample import simulate as sim


def test_correlated_timecourses_exact_correlation_in_band(rng):
    target = sim.with_coupling(np.eye(3), (0, 2), 0.6)
    series = sim.correlated_timecourses(rng, 400, 0.8, target, band=(0.01, 0.1), start=5)
    assert np.allclose(np.corrcoef(series[5:], rowvar=False), target, atol=1e-10)
    spectrum = np.abs(np.fft.rfft(series[5:] - series[5:].mean(0), axis=0)) ** 2
    frequencies = np.fft.rfftfreq(395, d=0.8)
    assert spectrum[frequencies > 0.2].sum() < 0.05 * spectrum.sum()


def test_with_coupling_rejects_impossible_correlation():
    background = np.array([[1.0, 0.9, 0.9], [0.9, 1.0, 0.0], [0.9, 0.0, 1.0]])
    with pytest.raises(ValueError, match=r"coupling -0\.900 makes the network correlation matrix singular"):
        sim.with_coupling(background, (1, 2), -0.9)


def test_double_gamma_hrf_peaks_near_5_seconds():
    hrf = sim.double_gamma_hrf(0.1)
    assert hrf.sum() == pytest.approx(1.0)
    assert 4.0 <= np.argmax(hrf) * 0.1 <= 6.0
    assert hrf[150:].min() < 0  # undershoot


def test_task_timecourses_reach_one_in_a_long_block():
    events = sim.Events(np.array([10.0]), np.array([40.0]), np.array(["left_hand"]))
    regressors = sim.task_timecourses(events, ("left_hand", "right_hand"), n_frames=60, tr=1.0)
    assert regressors[40, 0] == pytest.approx(1.0, abs=0.02)
    assert np.all(regressors[:10] == 0) and np.all(regressors[:, 1] == 0)


def test_framewise_displacement_counts_rotations_at_50_mm():
    params = np.zeros((3, 6))
    params[1, 0] = 0.3  # mm
    params[2, 5] = 0.01  # rad -> 0.5 mm
    fd = sim.framewise_displacement(params)
    assert np.isnan(fd[0])
    assert fd[1:] == pytest.approx([0.3, 0.3 + 0.5])
