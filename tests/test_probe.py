"""Linear probes, FC and mean-map baselines, and the probe report."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from flatprep.exceptions import InputError
from flatprep.learn import probe
from flatprep.learn.probe import (
    ProbeError,
    compare_features,
    fc_features,
    grid_parcels,
    linear_probe,
    mean_map_features,
    write_probe_report,
)


def _subject_data(rng, *, n_subjects=12, n_per_subject=10, n_features=20):
    """Features with a per-subject offset (subject structure), and subject ids."""
    groups = np.repeat(np.arange(n_subjects), n_per_subject)
    offsets = rng.normal(scale=1.0, size=(n_subjects, n_features))
    X = rng.normal(size=(n_subjects * n_per_subject, n_features)) + offsets[groups]
    return X, groups


# ----------------------------------------------------------------------------- grid_parcels


def test_grid_parcels_yeo7_on_coarse_grid(coarse_grid):
    parcels = grid_parcels(coarse_grid, "yeo7")
    assert parcels.shape == (coarse_grid.n_pixels,)
    assert parcels.dtype.kind == "i"
    assert set(np.unique(parcels[parcels > 0])) == set(range(1, 8))
    # The Yeo map leaves a few cortex vertices unlabelled; at most a few percent of pixels.
    assert np.count_nonzero(parcels == 0) <= 0.03 * coarse_grid.n_pixels
    for hemi in (0, 1):
        assert np.any(parcels[coarse_grid.pixel_hemi == hemi] == 1)  # label 1 = Visual


def test_grid_parcels_rejects_unknown_atlas(coarse_grid):
    with pytest.raises(ProbeError, match="unknown atlas 'aal'; available: yeo7"):
        grid_parcels(coarse_grid, "aal")


# ----------------------------------------------------------------------------- fc_features


def _parcel_frames(rng, *, n_timepoints=200, n_parcels=5, pixels_per_parcel=30):
    parcels = np.repeat(np.arange(1, n_parcels + 1), pixels_per_parcel)
    parcels = np.concatenate([parcels, np.zeros(10, dtype=int)])  # unlabelled pixels are ignored
    series = rng.normal(size=(n_timepoints, n_parcels))
    series[:, 3] = series[:, 1]  # parcels 2 and 4 share a time course
    frames = series[:, np.maximum(parcels - 1, 0)] + 0.5 * rng.normal(size=(n_timepoints, parcels.size))
    frames[:, parcels == 0] = 100.0 * rng.normal(size=(n_timepoints, 10))
    return frames.astype(np.float32), parcels


def test_fc_features_shared_pair_is_largest(rng):
    frames, parcels = _parcel_frames(rng)
    features = fc_features(frames, parcels)
    assert features.shape == (5 * 4 // 2,)
    assert features.dtype == np.float32
    upper = np.triu_indices(5, k=1)
    pair = int(np.flatnonzero((upper[0] == 1) & (upper[1] == 3))[0])
    assert np.argmax(features) == pair
    assert features[pair] > 2.0  # Fisher z of r ~ 0.99
    assert np.all(np.abs(np.delete(features, pair)) < 0.3)


def test_fc_features_zero_variance_parcel_gives_zero(rng):
    frames, parcels = _parcel_frames(rng)
    frames[:, parcels == 5] = 0.0  # z-scored data sets zero-variance pixels to 0
    frames[:, np.flatnonzero(parcels == 3)[:1]] = 7.0  # a constant offset inside a varying parcel is fine
    features = fc_features(frames, parcels)
    upper = np.triu_indices(5, k=1)
    involves_5 = (upper[0] == 4) | (upper[1] == 4)
    assert np.all(np.isfinite(features))
    assert np.all(features[involves_5] == 0.0)
    assert np.all(features[~involves_5] != 0.0)


def test_fc_features_float16_and_batches(rng):
    frames, parcels = _parcel_frames(rng)
    single = fc_features(frames, parcels)
    half = fc_features(frames.astype(np.float16), parcels)
    np.testing.assert_allclose(half, single, atol=0.02)
    batch = fc_features(np.stack([frames[:100], frames[100:]]).astype(np.float16), parcels)
    assert batch.shape == (2, 10)
    np.testing.assert_allclose(batch[0], fc_features(frames[:100], parcels), atol=0.02)


def test_fc_features_identical_parcels_are_finite(rng):
    frames, parcels = _parcel_frames(rng)
    frames[:, parcels == 2] = frames[:, parcels == 1][:, :1]  # r = 1 exactly between parcels 1 and 2
    features = fc_features(frames, parcels)
    assert np.all(np.isfinite(features))
    assert features[0] == features.max()


def test_fc_features_rejects_mismatched_parcels(rng):
    frames, parcels = _parcel_frames(rng)
    with pytest.raises(ProbeError, match=r"parcels must have shape \(n_pixels,\) = \(160,\).*got \(159,\)"):
        fc_features(frames, parcels[:-1])
    with pytest.raises(ProbeError, match="at least 2 labels > 0, got 1"):
        fc_features(frames, np.where(parcels > 0, 1, 0))
    with pytest.raises(ProbeError, match=r"frames must have shape \(n_timepoints, n_pixels\)"):
        fc_features(frames[0], parcels)


def test_fc_features_on_grid_parcels(coarse_grid, rng):
    parcels = grid_parcels(coarse_grid, "yeo7")
    frames = rng.normal(size=(16, coarse_grid.n_pixels)).astype(np.float16)
    features = fc_features(frames, parcels)
    assert features.shape == (21,)
    assert np.all(np.isfinite(features))


# ----------------------------------------------------------------------------- mean_map_features


def test_mean_map_features_pixels_and_parcels(rng):
    frames, parcels = _parcel_frames(rng)
    mean = mean_map_features(frames.astype(np.float16))
    assert mean.shape == (frames.shape[1],)
    assert mean.dtype == np.float32
    np.testing.assert_allclose(mean, frames.mean(axis=0), atol=0.01)
    by_parcel = mean_map_features(frames, parcels)
    assert by_parcel.shape == (5,)
    np.testing.assert_allclose(by_parcel[2], frames[:, parcels == 3].mean(), rtol=1e-5, atol=1e-6)
    batch = mean_map_features(np.stack([frames, 2 * frames]), parcels)
    assert batch.shape == (2, 5)
    np.testing.assert_allclose(batch[1], 2 * by_parcel, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- linear_probe


def test_linear_probe_separable_classes(rng):
    X, groups = _subject_data(rng)
    y = (X[:, 0] - X[:, 0].mean() > 0).astype(int)
    X[:, 0] += 3.0 * (2 * y - 1)  # a clear margin on feature 0
    result = linear_probe(X, y, groups, task="classification", n_splits=4)
    assert result.metric == "accuracy"
    assert len(result.scores) == 4
    assert result.mean > 0.9
    assert 0.4 <= result.chance <= 0.75
    assert result.std == pytest.approx(np.std(result.scores))
    assert (result.n_samples, result.n_groups, result.n_features) == (120, 12, 20)
    assert len(result.chosen_strengths) == 4
    assert set(result.chosen_strengths) <= set(np.logspace(-3, 3, 7))


def test_linear_probe_random_labels_near_chance(rng):
    X, groups = _subject_data(rng)
    y = rng.integers(0, 2, size=len(X))
    result = linear_probe(X, y, groups)
    assert abs(result.mean - result.chance) < 0.2


def test_linear_probe_multiclass(rng):
    X, groups = _subject_data(rng)
    y = rng.integers(0, 3, size=len(X))
    X[:, :3] += 6.0 * np.eye(3)[y]
    result = linear_probe(X, y.astype(str), groups, n_splits=3)
    assert result.mean > 0.9


def test_linear_probe_regression(rng):
    X, groups = _subject_data(rng)
    y = X @ rng.normal(size=X.shape[1]) + 0.3 * rng.normal(size=len(X))
    result = linear_probe(X, y, groups, task="regression")
    assert result.metric == "r2"
    assert result.chance == 0.0
    assert result.mean > 0.8
    noise = linear_probe(X, rng.normal(size=len(X)), groups, task="regression")
    assert noise.mean < 0.1


def test_linear_probe_folds_keep_subjects_apart(rng, monkeypatch):
    X, groups = _subject_data(rng, n_subjects=7)
    y = rng.integers(0, 2, size=len(X))
    seen = []
    original = probe._group_splits

    def spy(*args, **kwargs):
        splits = original(*args, **kwargs)
        seen.append((args[1], splits))
        return splits

    monkeypatch.setattr(probe, "_group_splits", spy)
    result = linear_probe(X, y, groups, n_splits=5)
    outer_groups, outer = seen[0]
    assert len(outer) == 5
    assert len(seen) == 1 + 5  # one inner split per fold, also group-aware
    for subjects, splits in seen:
        for train, test in splits:
            assert not set(subjects[train]) & set(subjects[test])
    # Every subject is tested exactly once.
    tested = np.concatenate(result.folds)
    assert sorted(tested) == list(range(7))
    for (train, test), fold in zip(outer, result.folds):
        np.testing.assert_array_equal(np.unique(groups[test]), fold)


def test_linear_probe_is_deterministic_for_a_seed(rng):
    X, groups = _subject_data(rng)
    y = rng.integers(0, 2, size=len(X))
    first = linear_probe(X, y, groups, seed=3)
    second = linear_probe(X, y, groups, seed=3)
    assert first.scores == second.scores
    assert [list(f) for f in first.folds] == [list(f) for f in second.folds]


def test_linear_probe_caps_splits_at_groups(rng):
    X, groups = _subject_data(rng, n_subjects=2)
    y = np.arange(len(X)) % 2
    X[:, 0] += 3.0 * (2 * y - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warnings from scikit-learn either
        result = linear_probe(X, y, groups, n_splits=5)
    assert len(result.scores) == 2


def test_linear_probe_rejects_bad_inputs(rng):
    X, groups = _subject_data(rng)
    y = rng.integers(0, 2, size=len(X))
    with pytest.raises(ProbeError, match="at least 2 groups .subjects., got 1"):
        linear_probe(X, y, np.zeros(len(X)))
    expected = r"y must have shape \(n_samples,\) = \(120,\) to match X \(120, 20\), got \(119,\)"
    with pytest.raises(ProbeError, match=expected):
        linear_probe(X, y[:-1], groups)
    with pytest.raises(ProbeError, match=r"groups must have shape \(n_samples,\) = \(120,\)"):
        linear_probe(X, y, groups[:10])
    with pytest.raises(ProbeError, match=r"X must have shape \(n_samples, n_features\), got \(120,\)"):
        linear_probe(X[:, 0], y, groups)
    with pytest.raises(ProbeError, match="task must be one of 'classification', 'regression', got 'svm'"):
        linear_probe(X, y, groups, task="svm")
    with pytest.raises(ProbeError, match="at least 2 classes in y, got 1"):
        linear_probe(X, np.ones(len(X)), groups)
    X_nan = X.copy()
    X_nan[3, 4] = np.nan
    with pytest.raises(ProbeError, match="X holds 1 NaN or infinite values"):
        linear_probe(X_nan, y, groups)
    with pytest.raises(ProbeError, match="n_splits must be an integer >= 2, got 1"):
        linear_probe(X, y, groups, n_splits=1)
    with pytest.raises(ProbeError, match="strengths must be a non-empty 1D array of positive numbers"):
        linear_probe(X, y, groups, strengths=[0.0, 1.0])


def test_linear_probe_class_confined_to_tested_subjects(rng):
    X, groups = _subject_data(rng, n_subjects=4)
    y = (groups == 0).astype(int)  # class 1 lives in one subject only
    with pytest.raises(ProbeError, match="class 1 occurs in 1 subject only; a subject-level probe needs every "
                                         r"class in 2 or more subjects \(4 subjects in all\)"):
        linear_probe(X, y, groups, n_splits=4)


def test_linear_probe_refuses_folds_that_cannot_beat_chance(rng):
    """Four subjects, a per-subject trait: one subject per test fold, so chance would read 1.00."""
    X, groups = _subject_data(rng, n_subjects=4)
    trait = np.array(["a", "a", "b", "b"])[groups]
    with pytest.raises(ProbeError, match=r"every test fold holds a single class \(4 subjects in 4 folds\), so "
                                         "chance is 1.00 and the accuracy means nothing"):
        linear_probe(X, trait, groups, n_splits=5)
    score = np.array([1.0, 2.0, 3.0, 4.0])[groups]  # a per-subject number: one subject per fold has no R²
    with pytest.raises(ProbeError, match=r"fold \d: its 1 test subject\(s\) share one value of y \(\d\), so R² "
                                         r"is undefined \(4 subjects in 4 folds\)"):
        linear_probe(X, score, groups, task="regression", n_splits=5)
    result = linear_probe(X, trait, groups, n_splits=2)  # two subjects per fold: a real comparison
    assert result.chance < 1.0


# ----------------------------------------------------------------------------- compare and report


def test_compare_features_and_report(rng, tmp_path):
    X, groups = _subject_data(rng, n_features=8)
    y = (X[:, 0] > np.median(X[:, 0])).astype(int)
    X[:, 0] += 3.0 * (2 * y - 1)
    feature_sets = {"embedding": X, "noise": rng.normal(size=(len(X), 5))}
    rows = compare_features(feature_sets, y, groups, task="classification", n_splits=3)
    assert [row["features"] for row in rows] == ["embedding", "noise"]
    assert rows[0]["mean"] > rows[1]["mean"]
    assert rows[0]["chance"] == rows[1]["chance"]  # same folds for every feature set
    assert [row["n_features"] for row in rows] == [8, 5]
    regression = compare_features({"embedding": X}, X[:, 1], groups, task="regression", n_splits=3)
    all_rows = [dict(row, target="class") for row in rows] + [dict(row, target="score") for row in regression]

    tsv, png = write_probe_report(all_rows, tmp_path / "out" / "probe.tsv", tmp_path / "out" / "probe.png",
                                  title="probe")
    lines = tsv.read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:9] == ["target", "features", "metric", "mean", "std", "chance", "n_samples", "n_groups",
                          "n_features"]
    assert "scores" in header
    assert len(lines) == 1 + 3
    cells = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    assert [(c["target"], c["features"], c["metric"]) for c in cells] == [
        ("class", "embedding", "accuracy"), ("class", "noise", "accuracy"), ("score", "embedding", "r2")
    ]
    assert float(cells[0]["mean"]) == pytest.approx(rows[0]["mean"], rel=1e-5)
    assert len(cells[0]["scores"].split(",")) == 3

    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_write_probe_report_without_target(rng, tmp_path):
    X, groups = _subject_data(rng, n_subjects=4, n_features=4)
    rows = compare_features({"raw": X}, X[:, 0], groups, task="regression", n_splits=2)
    tsv, png = write_probe_report(rows, tmp_path / "p.tsv", tmp_path / "p.png")
    assert tsv.read_text().startswith("features\tmetric\tmean\tstd\tchance\tn_samples\tn_groups\tn_features")
    assert png.stat().st_size > 0


def test_report_and_compare_reject_bad_input(rng, tmp_path):
    with pytest.raises(ProbeError, match="rows is empty"):
        write_probe_report([], tmp_path / "p.tsv", tmp_path / "p.png")
    with pytest.raises(ProbeError, match="row 0 lacks chance, n_samples"):
        write_probe_report([{"features": "x", "metric": "r2", "mean": 0.1, "std": 0.0, "n_groups": 2,
                             "n_features": 3}], tmp_path / "p.tsv", tmp_path / "p.png")
    assert not (tmp_path / "p.tsv").exists()
    X, groups = _subject_data(rng, n_subjects=3)
    with pytest.raises(ProbeError, match="same n_samples rows; got a: 30, b: 29"):
        compare_features({"a": X, "b": X[:-1]}, X[:, 0], groups, task="regression")
    with pytest.raises(ProbeError, match="feature set 'a': y must have shape"):
        compare_features({"a": X}, X[:-1, 0], groups, task="regression")


# ----------------------------------------------------------------------------- per-clip targets on sample subjects


def test_clip_block_labels_majority_after_delay():
    from flatprep.io import Events
    from flatprep.learn.probe import clip_block_labels

    events = Events(np.array([10.0, 40.0]), np.array([20.0, 20.0]), np.array(["left", "right"]))
    # frame k of the cleaned run is at 2 + k s; blocks label [15, 35) and [45, 65) after the 5 s delay
    labels = clip_block_labels(events, np.array([0, 8, 16, 24, 40, 48]), clip_frames=8, tr=1.0, first_time=2.0)
    # clip 0: times 2-9 (fixation); 8: 10-17 (5 fixation, 3 left); 16: 18-25 (left);
    # 24: 26-33 (left); 40: 42-49 (3 fixation, 5 right); 48: 50-57 (right)
    assert labels.tolist() == ["fixation", "fixation", "left", "left", "right", "right"]
    tie = clip_block_labels(events, np.array([9]), clip_frames=8, tr=1.0, first_time=2.0)  # 4 fixation, 4 left
    assert tie.tolist() == [""]
    unknown = Events(np.array([10.0, 40.0]), np.array([20.0, 20.0]), np.array(["", "right"]))  # an n/a block
    assert clip_block_labels(unknown, np.array([16, 40]), clip_frames=8, tr=1.0, first_time=2.0).tolist() == \
        ["", "right"]


def test_read_events_names_the_file(tmp_path):
    from flatprep.learn.probe import read_events

    good = tmp_path / "sub-01_task-motor_events.tsv"
    good.write_text("onset\tduration\ttrial_type\n10.5\t12\tleft_hand\n")
    events = read_events(good)
    assert events.onset.tolist() == [10.5] and events.trial_type.tolist() == ["left_hand"]
    bad = tmp_path / "sub-02_task-motor_events.tsv"
    bad.write_text("onset\tduration\ttrial_type\n10.5\tn/a\tleft_hand\n")
    with pytest.raises(InputError, match="sub-02_task-motor_events.tsv: onset and duration must be numbers"):
        read_events(bad)
    unknown = tmp_path / "sub-04_task-motor_events.tsv"
    unknown.write_text("onset\tduration\ttrial_type\n0\t10\tn/a\n20\t10\tleft_hand\n")
    assert read_events(unknown).trial_type.tolist() == ["", "left_hand"]  # missing, never a class "None"
    missing = tmp_path / "sub-03_task-motor_events.tsv"
    missing.write_text("onset\tduration\n1\t2\n")
    with pytest.raises(InputError, match=r"sub-03_task-motor_events.tsv: missing columns \['trial_type'\]"):
        read_events(missing)


@pytest.fixture(scope="module")
def block_clips(tmp_path_factory):
    """Motor-run clips of 8 sample subjects on the 2.4 mm grid, labelled from their events files.

    Each run goes through the participant level's cleaning (:func:`flatprep.prepare.prepare_run`) and
    projection. Returns Glasser mean maps (n_clips, 360), labels (n_clips,) and subjects (n_clips,).
    """
    from flatprep.flatmap import make_grid
    from flatprep.learn.probe import clip_block_labels, read_events
    from flatprep.prepare import prepare_run
    from flatprep.sample import write_sample_dataset

    root = tmp_path_factory.mktemp("blocks") / "bids"
    write_sample_dataset(root, n_subjects=8, tasks=("motor",), spaces=("fsaverage5",), duration=240.0, seed=11)
    grid = make_grid(pixel_size=2.4)
    glasser = grid_parcels(grid, "glasser")
    operator = grid.operator("fsaverage5")
    maps, labels, subjects = [], [], []
    for subject in [f"{i:02d}" for i in range(1, 9)]:
        stem = f"sub-{subject}_task-motor"
        func = root / "derivatives" / "fmriprep" / f"sub-{subject}" / "func"
        prepared = prepare_run([func / f"{stem}_hemi-{h}_space-fsaverage5_bold.func.gii" for h in "LR"],
                               sidecars=[root / f"sub-{subject}" / "func" / f"{stem}_bold.json"],
                               confounds_file=func / f"{stem}_desc-confounds_timeseries.tsv")
        cleaned = prepared.cleaned
        frames = operator.project(cleaned.data.astype(np.float32))  # (T, n_pixels)
        starts = np.arange(len(frames) // 16) * 16
        clips = np.stack([frames[s:s + 16] for s in starts])
        maps.append(mean_map_features(clips, glasser))
        labels.append(clip_block_labels(read_events(root / f"sub-{subject}" / "func" / f"{stem}_events.tsv"),
                                        starts, clip_frames=16, tr=cleaned.tr_out,
                                        first_time=cleaned.n_dropped * cleaned.tr_in))
        subjects += [subject] * len(starts)
    return np.concatenate(maps), np.concatenate(labels), np.array(subjects)


def test_mean_map_decodes_block_condition_and_shuffled_labels_do_not(block_clips):
    X, labels, subjects = block_clips
    hands = np.isin(labels, ["left_hand", "right_hand"])
    assert hands.sum() >= 40 and (labels == "fixation").sum() >= 20  # the events give enough clips
    strengths = np.logspace(-2, 2, 3)
    result = linear_probe(X[hands], labels[hands], subjects[hands], n_splits=4, strengths=strengths)
    assert result.mean >= 0.8 and result.mean > result.chance + 0.25, (result.mean, result.chance)
    shuffled = [linear_probe(X[hands], np.random.default_rng(seed).permutation(labels[hands]), subjects[hands],
                             n_splits=4, strengths=strengths) for seed in range(3)]
    assert np.mean([r.mean for r in shuffled]) < np.mean([r.chance for r in shuffled]) + 0.15
    three_way = linear_probe(X[labels != ""], labels[labels != ""], subjects[labels != ""], n_splits=4,
                             strengths=strengths)
    # fixation clips hold up to half a block: the three-way read-out is weaker, yet above chance
    assert three_way.mean > three_way.chance + 0.08, (three_way.mean, three_way.chance)


def test_random_init_encoder_same_architecture_fresh_weights(coarse_grid):
    import torch

    from flatprep.learn.embed import Encoder
    from flatprep.learn.model import build_model
    from flatprep.learn.probe import random_init_encoder

    torch.manual_seed(123)
    model = build_model("micro", img_size=coarse_grid.shape, clip_frames=16, tubelet=16, mask_ratio=0.75)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)  # stands for training: weights no initialisation gives
    trained = Encoder(model, coarse_grid.pixels, clip_frames=16, normalize="frame", clip_value=3.0,
                      clean_options=None, grid_description=coarse_grid.describe(),
                      source="run/checkpoints/step-000010")
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    first, again, other = (random_init_encoder(trained, seed=s) for s in (0, 0, 1))
    assert first.model is not trained.model and first.model.config == trained.model.config
    assert first.pixels is trained.pixels and (first.clip_frames, first.normalize) == (16, "frame")
    assert first.grid_description == trained.grid_description
    assert "random initialisation (seed 0)" in first.source and trained.source.endswith("step-000010")
    state, same, different = first.model.state_dict(), again.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)  # seeded
    assert any(not torch.equal(state[k], different[k]) for k in state)
    assert all(torch.equal(before[k], v) for k, v in trained.model.state_dict().items())  # not modified
    assert any(not torch.equal(state[k], before[k]) for k in state)  # not the trained weights
    frames = np.random.default_rng(0).standard_normal((32, coarse_grid.n_pixels)).astype(np.float16)
    a, b = trained.embed_frames(frames), first.embed_frames(frames)
    assert a.cls.shape == b.cls.shape == (2, trained.dim) and not np.allclose(a.cls, b.cls)


def test_events_file_matches_run_entities(tmp_path):
    from flatprep.pipelines.cli.probe import events_file

    func = tmp_path / "sub-01" / "ses-02" / "func"
    func.mkdir(parents=True)
    for name in ("sub-01_ses-02_task-motor_run-1_events.tsv", "sub-01_ses-02_task-motor_run-2_events.tsv",
                 "sub-01_ses-02_task-nback_events.tsv"):
        (func / name).write_text("onset\tduration\ttrial_type\n")
    entities = {"subject": "01", "session": "02", "task": "motor", "run": 2, "space": "fsaverage5"}
    assert events_file(tmp_path, entities).name == "sub-01_ses-02_task-motor_run-2_events.tsv"
    assert events_file(tmp_path, entities | {"task": "rest"}) is None
    assert events_file(tmp_path, entities | {"subject": "02"}) is None


def test_probe_cli_refuses_a_bad_compare_argument(tmp_path, capsys):
    from flatprep.pipelines.cli.probe import main

    for folder in ("emb", "flat", "bids"):
        (tmp_path / folder).mkdir()
    base = [str(tmp_path / f) for f in ("emb", "flat", "bids", "out")]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--compare", str(tmp_path / "emb")])
    assert exit_info.value.code == 2 and "--compare expects LABEL=DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--compare", f"random-init={tmp_path / 'missing'}"])
    assert "folder does not exist" in capsys.readouterr().err


def test_probe_says_why_a_block_target_has_no_labels(tmp_path):
    from flatprep.pipelines.cli.probe import _clip_labels, _why_no_probe

    func = tmp_path / "sub-01" / "func"
    func.mkdir(parents=True)
    (func / "sub-01_task-motor_events.tsv").write_text("onset\tduration\ttrial_type\n70\t10\tleft\n90\t10\tright\n")
    embeddings = {"runs": [{"label": "sub-01_task-motor", "entities": {"subject": "01", "task": "motor"}},
                           {"label": "sub-01_task-rest", "entities": {"subject": "01", "task": "rest"}}],
                  "clips_run": np.array([0, 0, 0, 1, 1, 1]), "clips_start": np.array([0, 16, 32] * 2)}
    timing = [(1.0, 0.0, 60), (1.0, 0.0, 60)]  # 60 one-second frames: every event starts after the end
    labels, why = _clip_labels(embeddings, tmp_path, timing, clip_frames=16, delay=5.0)
    assert set(labels) == {""}
    assert why == {"every event starts after the run's end at 60 s (onsets + 5 s delay)": ["sub-01_task-motor"],
                   "no *_events.tsv": ["sub-01_task-rest"]}
    line = _why_no_probe("block condition (per clip)", labels[labels != ""], why)
    assert line == ("block condition (per clip): not probed, no labelled clip (1 run(s) every event starts after "
                    "the run's end at 60 s (onsets + 5 s delay) (sub-01_task-motor); 1 run(s) no *_events.tsv "
                    "(sub-01_task-rest))")


def test_probe_compare_of_another_grid_is_one_line_naming_both():
    from flatprep.pipelines.cli.probe import _check_same_runs

    coarse = {"template": "fsaverage", "pixel_size_mm": 2.4, "shape": [96, 224], "n_valid_pixels": 13_000}
    fine = {"template": "fsaverage", "pixel_size_mm": 1.2, "shape": [224, 560], "n_valid_pixels": 77_763}
    main, other = {"grid": coarse, "clip_frames": 16, "runs": []}, {"grid": fine, "clip_frames": 16, "runs": []}
    with pytest.raises(ProbeError, match=r"--compare random: embeddings of flat maps on fsaverage 1.2 mm, 224 x 560, "
                                         r"77,763 valid pixels, the main ones on fsaverage 2.4 mm, 96 x 224"):
        _check_same_runs(main, other, "random")


def test_probe_traits_refuse_an_unknown_column_and_default_to_those_present(tmp_path):
    from flatprep.pipelines.cli.probe import _traits

    participants = {"01": {"participant_id": "sub-01", "group": "a", "age": "30"}}
    assert _traits(None, participants, tmp_path / "participants.tsv") == ["group"]
    assert _traits(["age"], participants, tmp_path / "participants.tsv") == ["age"]
    with pytest.raises(ProbeError, match=r"participants.tsv: no column 'nosuchcol' for --trait "
                                         r"\(columns: group, age\)"):
        _traits(["nosuchcol"], participants, tmp_path / "participants.tsv")


def test_probe_refuses_a_flatprep_folder_whose_runs_differ_from_the_embedded_ones(coarse_grid, shards, sample_bids,
                                                                                   tmp_path, caplog):
    """Another dataset's per-run folder (same file names, other data) is one line, not silently used."""
    import shutil

    import torch

    from flatprep.learn.embed import Encoder, write_embeddings
    from flatprep.learn.model import build_model
    from flatprep.pipelines.cli.probe import main

    torch.manual_seed(0)
    encoder = Encoder(build_model("micro", img_size=coarse_grid.shape, clip_frames=16, tubelet=16),
                      coarse_grid.pixels, clip_frames=16, normalize="frame", clip_value=3.0, clean_options=None,
                      grid_description=coarse_grid.describe(), source="in memory")
    runs, embeddings = encoder.embed_shards(shards)
    write_embeddings(tmp_path / "emb" / "embeddings.h5", runs, embeddings, encoder=encoder)
    other = tmp_path / "other"
    shutil.copytree(shards, other, ignore=shutil.ignore_patterns("shards"))
    first = other / runs[0]["source"]
    swapped = next(other / run["source"] for run in runs
                   if run["entities"]["subject"] != runs[0]["entities"]["subject"])
    shutil.copyfile(swapped, first)  # sub-01's file name, the other subject's data
    assert main([str(tmp_path / "emb"), str(other), str(sample_bids), str(tmp_path / "out")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"{first}: sha256 differs from run {runs[0]['label']} in "
                                                     "embeddings.h5 (FLATPREP_DIR is not the output whose runs")
    assert not (tmp_path / "out").exists()


def test_probe_trait_values_treat_n_a_as_missing(tmp_path):
    from flatprep.pipelines.cli.probe import trait_values
    from flatprep.tables import read_participants

    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tgroup\nsub-01\tA\nsub-02\tn/a\nsub-03\tB\n")
    values = trait_values(read_participants(path), np.array(["01", "02", "03", "04"]), "group")
    assert values.tolist() == ["A", "", "B", ""]
