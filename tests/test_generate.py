"""Tests of the sample-subject writer: flatprep.sample.generate, the package face flatprep.sample and
the flatprep-sample command."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from flatprep.clean import MOTION_COLUMNS
from flatprep.sample import simulate as sim
from flatprep.sample import SampleError, check_sample_options, write_sample_dataset

N_SUBJECTS = 4
DURATION = 120.0
N_FS5 = 10242
FMRIPREP = Path("derivatives") / "fmriprep"


# --------------------------------------------------------------------------- fixtures and readers


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """4 subjects (groups A, B, A, B; TR 0.8, 1.5, 2.0, 0.8), rest + motor, fsaverage5 + fsLR, 120 s."""
    root = tmp_path_factory.mktemp("sample") / "bids"
    return write_sample_dataset(root, n_subjects=N_SUBJECTS, duration=DURATION, seed=0)


@pytest.fixture(scope="module")
def truth(dataset):
    return json.loads(dataset.ground_truth.read_text())


@pytest.fixture(scope="module")
def labels():
    from flatprep.atlases import load_labels

    yeo = load_labels("yeo7", "fsaverage5")
    return yeo.labels, list(yeo.names)


@pytest.fixture(scope="module")
def images(dataset, truth):
    """Every image of the dataset, loaded once with nibabel.

    Returns
    -------
    dict
        ``(subject, task)`` -> {"fsaverage5": (n_frames, 2 * 10242) float32 data,
        "gifti": [GiftiImage L, R], "cifti_header": Cifti2Header, "cifti_shape", "cifti_finite"}.
    """
    out = {}
    for subject in truth["subjects"]:
        for run in subject["runs"]:
            gifti = [nib.load(dataset.root / path) for path in run["files"]["fsaverage5"]]
            cifti = nib.load(dataset.root / run["files"]["fsLR"][0])
            out[subject["participant_id"][4:], run["task"]] = {
                "gifti": gifti,
                "fsaverage5": np.hstack([np.stack([a.data for a in image.darrays]) for image in gifti]),
                "cifti_header": cifti.header,
                "cifti_shape": cifti.shape,
                "cifti_finite": bool(np.isfinite(np.asarray(cifti.dataobj)).all()),
            }
    return out


def _small_dataset(root: Path, seed: int):
    return write_sample_dataset(root, n_subjects=2, duration=60.0, seed=seed)


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """The same small dataset written twice with seed 0 and once with seed 1."""
    base = tmp_path_factory.mktemp("repeat")
    return [_small_dataset(base / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))]


def _run_files(root: Path, subject: str, task: str) -> dict[str, Path]:
    folder = root / FMRIPREP / f"sub-{subject}" / "func"
    stem = f"sub-{subject}_task-{task}"
    return {
        "L": folder / f"{stem}_hemi-L_space-fsaverage5_bold.func.gii",
        "R": folder / f"{stem}_hemi-R_space-fsaverage5_bold.func.gii",
        "cifti": folder / f"{stem}_space-fsLR_den-91k_bold.dtseries.nii",
        "confounds": folder / f"{stem}_desc-confounds_timeseries.tsv",
        "events": root / f"sub-{subject}" / "func" / f"{stem}_events.tsv",
        "raw_json": root / f"sub-{subject}" / "func" / f"{stem}_bold.json",
    }


def _read_fslr_cortex(path: Path) -> np.ndarray:
    """CIFTI cortex on full fs_LR 32k hemispheres: (n_frames, 2 * 32492), NaN on the medial wall."""
    image = nib.load(path)
    data = np.asarray(image.dataobj)
    out = np.full((len(data), 2 * 32492), np.nan, dtype=np.float32)
    for name, indices, model in image.header.get_axis(1).iter_structures():
        offset = {"CIFTI_STRUCTURE_CORTEX_LEFT": 0, "CIFTI_STRUCTURE_CORTEX_RIGHT": 32492}.get(name)
        if offset is not None:
            out[:, offset + model.vertex] = data[:, indices]
    return out


def _read_tsv(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    return {name: [row[i] for row in rows[1:]] for i, name in enumerate(rows[0])}


def _numbers(values: list[str]) -> np.ndarray:
    return np.array([np.nan if v == "n/a" else float(v) for v in values])


def _steady(data: np.ndarray, confounds: dict) -> tuple[np.ndarray, int]:
    """Drop the volumes flagged non-steady-state: (n_frames - n_dummy, ...), n_dummy."""
    n_dummy = sum(name.startswith("non_steady_state_outlier") for name in confounds)
    return data[n_dummy:], n_dummy


def _nuisance(n_frames: int, confounds: dict, n_dummy: int) -> np.ndarray:
    """Constant, cubic trend and the six motion parameters: (n_frames, 10)."""
    trend = np.linspace(-1, 1, n_frames)
    motion = [_numbers(confounds[name])[n_dummy:] for name in MOTION_COLUMNS]
    return np.column_stack([np.ones(n_frames), trend, trend ** 2, trend ** 3, *motion])


def _rest_run(dataset, images: dict, subject: dict) -> tuple[np.ndarray, int, dict]:
    """A subject's steady-state rest frames on fsaverage5 (float64), its dummy count and confounds."""
    label = subject["participant_id"][4:]
    confounds = _read_tsv(_run_files(dataset.root, label, "rest")["confounds"])
    data, n_dummy = _steady(images[label, "rest"]["fsaverage5"].astype(np.float64), confounds)
    return data, n_dummy, confounds


def _residuals(data: np.ndarray, design: np.ndarray) -> np.ndarray:
    return data - design @ np.linalg.lstsq(design, data, rcond=None)[0]


# --------------------------------------------------------------------------- files


def test_sample_dataset_is_deterministic(repeated):
    first, second, other = repeated
    assert first.files == second.files == other.files
    digests = [{f: hashlib.sha256((r.root / f).read_bytes()).hexdigest() for f in r.files} for r in repeated]
    assert digests[0] == digests[1]
    data_files = [f for f in first.files if f.name.endswith((".func.gii", ".dtseries.nii", "_events.tsv",
                                                             "_timeseries.tsv", "participants.tsv"))]
    assert len(data_files) == 4 * 4 + 2 + 1  # 4 runs x (2 GIFTI, CIFTI, confounds), 2 events, participants
    assert all(digests[0][f] != digests[2][f] for f in data_files)


def test_sample_files_load_with_nibabel(images, truth):
    for subject in truth["subjects"]:
        for run in subject["runs"]:
            loaded = images[subject["participant_id"][4:], run["task"]]
            for image in loaded["gifti"]:
                assert len(image.darrays) == run["n_frames"]
                array = image.darrays[0]
                assert array.data.shape == (N_FS5,) and array.data.dtype == np.float32
                assert array.intent == nib.nifti1.intent_codes["NIFTI_INTENT_TIME_SERIES"]
            assert np.isfinite(loaded["fsaverage5"]).all()
            assert loaded["cifti_shape"] == (run["n_frames"], 91282) and loaded["cifti_finite"]
            brain_models = loaded["cifti_header"].get_axis(1)
            assert (brain_models.vertex >= 0).sum() == 59412
            assert "CIFTI_STRUCTURE_THALAMUS_LEFT" in set(brain_models.name)


def test_sample_repetition_time_agrees_everywhere(dataset, truth, images):
    seen = set()
    for subject in truth["subjects"]:
        label = subject["participant_id"][4:]
        for run in subject["runs"]:
            tr = run["repetition_time"]
            files = _run_files(dataset.root, label, run["task"])
            sidecars = [files["raw_json"], files["L"].with_name(files["L"].name.replace(".func.gii", ".json")),
                        files["cifti"].with_name(files["cifti"].name.replace(".dtseries.nii", ".json"))]
            for sidecar in sidecars:
                content = json.loads(sidecar.read_text())
                assert content["RepetitionTime"] == tr and content["TaskName"] == run["task"]
            loaded = images[label, run["task"]]
            for gifti in loaded["gifti"]:
                assert float(gifti.meta["TimeStep"]) == pytest.approx(tr * 1000)  # milliseconds
                assert float(gifti.darrays[-1].meta["TimeStep"]) == pytest.approx(tr * 1000)
            series = loaded["cifti_header"].get_axis(0)
            assert series.step == pytest.approx(tr) and series.unit == "SECOND"
            assert run["n_frames"] == round(DURATION / tr)
            seen.add(tr)
    assert seen == {0.8, 1.5, 2.0}


def test_sample_bids_metadata(dataset, truth):
    root = dataset.root
    participants = _read_tsv(root / "participants.tsv")
    assert list(participants) == ["participant_id", "age", "sex", "group", "amplitude"]
    assert participants["group"] == ["A", "B", "A", "B"]
    assert participants["amplitude"] == ["low", "low", "high", "high"]  # crossed with the group
    assert set(json.loads((root / "participants.json").read_text())) == {"age", "sex", "group", "amplitude"}
    derivative = json.loads((root / FMRIPREP / "dataset_description.json").read_text())
    assert derivative["DatasetType"] == "derivative" and derivative["GeneratedBy"][0]["Name"] == "flatprep-sample"
    assert not list(root.glob("sub-*/func/*task-rest*_events.tsv"))
    events = _read_tsv(_run_files(root, "01", "motor")["events"])
    assert list(events) == ["onset", "duration", "trial_type"]
    assert set(events["trial_type"]) == {"left_hand", "right_hand"}
    motor = next(r for r in truth["subjects"][0]["runs"] if r["task"] == "motor")
    assert _numbers(events["onset"]).tolist() == [e["onset"] for e in motor["events"]]
    assert set(truth) >= {"model", "options", "networks", "subjects", "conventions"}
    assert truth["model"]["coupled_networks"] == ["Default", "Frontoparietal"]


def test_sample_confounds_match_dummies_and_spikes(dataset, truth, images):
    for subject in truth["subjects"]:
        run = subject["runs"][0]
        files = _run_files(dataset.root, subject["participant_id"][4:], run["task"])
        confounds = _read_tsv(files["confounds"])
        assert list(confounds)[:4] == ["trans_x", "trans_x_derivative1", "trans_x_derivative1_power2",
                                       "trans_x_power2"]
        fd = _numbers(confounds["framewise_displacement"])
        assert np.isnan(fd[0]) and np.isfinite(fd[1:]).all()
        n_dummy = run["n_dummy"]
        assert 2 <= n_dummy <= 5
        for index in range(n_dummy):
            assert _numbers(confounds[f"non_steady_state_outlier{index:02d}"]).nonzero()[0].tolist() == [index]
        assert f"non_steady_state_outlier{n_dummy:02d}" not in confounds
        data = images[subject["participant_id"][4:], run["task"]]["fsaverage5"].astype(np.float64)
        frame_mean = data.mean(axis=1)
        assert frame_mean[0] > 1.3 * np.median(frame_mean[n_dummy:])  # non-steady-state: brighter
        assert np.all(frame_mean[n_dummy:] < 1.05 * np.median(frame_mean[n_dummy:]))
        spikes = np.array(run["spike_frames"])
        assert np.all(fd[spikes] > 0.5) and np.all(fd[spikes + 1] > 0.5)
        flagged = {int(np.flatnonzero(_numbers(values))[0])
                   for name, values in confounds.items() if name.startswith("motion_outlier")}
        assert set(spikes) <= flagged
        # the data jump where the head moves: DVARS-like change, spikes vs the other steady frames
        change = np.sqrt((np.diff(data[n_dummy:] / data[n_dummy:].mean(0), axis=0) ** 2).mean(axis=1))
        at_spike = change[spikes - n_dummy - 1]
        quiet = np.delete(change, np.r_[spikes - n_dummy - 1, spikes - n_dummy])
        assert at_spike.min() > 2 * np.median(quiet)


# --------------------------------------------------------------------------- signal properties


def test_sample_bold_fraction_and_baseline(dataset, truth, images, labels):
    cortex = labels[0] > 0
    for subject in truth["subjects"]:
        for run in subject["runs"]:
            assert all(1.0 <= value <= 2.0 for value in run["bold_percent"].values())
        label = subject["participant_id"][4:]
        confounds = _read_tsv(_run_files(dataset.root, label, "rest")["confounds"])
        data, _ = _steady(images[label, "rest"]["fsaverage5"].astype(np.float64), confounds)
        mean = data.mean(axis=0)
        assert 500 < np.median(mean[cortex]) < 2000
        assert np.percentile(mean, 1) > 100 and np.percentile(mean, 99) < 5000
        trend = np.linspace(-1, 1, len(data))
        detrended = _residuals(data, np.column_stack([np.ones(len(data)), trend, trend ** 2, trend ** 3]))
        percent = detrended.std(axis=0)[cortex] / mean[cortex] * 100
        assert 1.0 <= np.median(percent) <= 2.0


def test_sample_noise_levels_in_ground_truth(truth):
    for subject in truth["subjects"]:
        for run in subject["runs"]:
            for space, levels in run["noise"].items():
                median, low, high = levels["tsnr"]
                assert 45 <= median <= 75 and 30 <= low <= median <= high <= 100, (space, levels)
                assert 0.45 <= levels["bold_fraction"][0] <= 0.75, (space, levels)


def test_subject_maps_share_topography_with_small_deformations():
    from flatprep.sample import generate

    model = sim.SignalModel()
    names = list(generate._network_names())
    voxel_fields = sim.draw_smooth_fields(np.random.default_rng(0), len(names), scale=model.spatial_scale)
    geometry = generate.build_geometry("fsaverage5", model=model, voxel_fields=voxel_fields)
    maps = [generate.subject_maps(geometry, sim.draw_smooth_fields(np.random.default_rng(seed), 3,
                                                                   scale=model.spatial_scale),
                                  model=model, amplitude_gain=1.0) for seed in (1, 2)]
    cortex = geometry.cortex
    winners = [networks[:, cortex].argmax(axis=0) for networks, _ in maps]
    agreement = np.mean(winners[0] == winners[1])
    assert 0.75 < agreement < 0.99  # the same networks in the same places, not identical
    shared = geometry.networks[:, cortex].argmax(axis=0)
    assert all(0.8 < np.mean(w == shared) < 0.995 for w in winners)
    left_hand = [task[0] for _, task in maps]  # right somatomotor cortex only
    assert all(t[geometry.point_hemi == 0].max() == 0 and t[geometry.point_hemi == 1].max() > 0.5 for t in left_hand)
    gained, _ = generate.subject_maps(geometry, sim.draw_smooth_fields(np.random.default_rng(1), 3, scale=0.25),
                                      model=model, amplitude_gain=1.3)
    ratio = gained[:, cortex].sum(axis=1) / maps[0][0][:, cortex].sum(axis=1)
    expected = np.where(np.array(names) == model.amplitude_network, 1.3, 1.0)
    np.testing.assert_allclose(ratio, expected, rtol=1e-9)


def test_sample_amplitude_trait_is_local(dataset, truth, images, labels):
    yeo, names = labels
    ratio = {"low": [], "high": []}
    for subject in truth["subjects"]:
        data, n_dummy, confounds = _rest_run(dataset, images, subject)
        design = _nuisance(len(data), confounds, n_dummy)
        percent = _residuals(data / data.mean(axis=0), design).std(axis=0)
        visual, motor = (np.median(percent[yeo == names.index(n)]) for n in ("Visual", "Somatomotor"))
        ratio[subject["amplitude"]].append(visual / motor)
    assert min(ratio["high"]) > max(ratio["low"]) + 0.1, ratio


def test_sample_smooth_on_sphere(images):
    from scipy.spatial import cKDTree

    from flatprep.spaces import fsaverage_positions

    positions = fsaverage_positions("fsaverage5", "L")
    _, neighbours = cKDTree(positions).query(positions, k=2)
    neighbour = neighbours[:, 1]
    distant = np.random.default_rng(0).permutation(len(positions))
    data = images["02", "rest"]["fsaverage5"][10:, :N_FS5].astype(np.float64)
    mean = data.mean(axis=0)
    frame = (data[30] - mean) / mean
    for field, close in ((np.log(mean), 0.98), (frame, 0.6)):  # thermal noise is white in space
        assert np.corrcoef(field, field[neighbour])[0, 1] > close
        assert abs(np.corrcoef(field, field[distant])[0, 1]) < 0.1


def test_sample_spaces_agree_after_projection(dataset, images, coarse_grid):
    files = _run_files(dataset.root, "01", "rest")
    fs5 = coarse_grid.operator("fsaverage5").project(images["01", "rest"]["fsaverage5"])
    fslr = coarse_grid.operator("fsLR").project(_read_fslr_cortex(files["cifti"]))
    valid = np.isfinite(fslr).all(axis=0)
    assert valid.mean() > 0.95
    mean5, mean_lr = fs5[5:].mean(axis=0), fslr[5:].mean(axis=0)
    assert np.corrcoef(mean5[valid], mean_lr[valid])[0, 1] > 0.99
    for frame in (20, 80):
        deviation5, deviation_lr = fs5[frame] - mean5, fslr[frame] - mean_lr
        assert np.corrcoef(deviation5[valid], deviation_lr[valid])[0, 1] > 0.85


def _task_t_values(root: Path, subject: dict, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OLS betas (percent) and t-values of each motor condition at every fsaverage5 vertex: 2 x (n_conditions, 2 * 10242)."""
    files = _run_files(root, subject["participant_id"][4:], "motor")
    confounds = _read_tsv(files["confounds"])
    raw = raw.astype(np.float64)
    data, n_dummy = _steady(raw, confounds)
    events = _read_tsv(files["events"])
    model = sim.SignalModel()
    task = sim.task_timecourses(
        sim.Events(_numbers(events["onset"]), _numbers(events["duration"]), np.array(events["trial_type"])),
        model.conditions, n_frames=len(raw), tr=subject["repetition_time"])[n_dummy:]
    design = np.column_stack([task, _nuisance(len(data), confounds, n_dummy)])
    percent = data / data.mean(axis=0) * 100
    beta, *_ = np.linalg.lstsq(design, percent, rcond=None)
    residual = percent - design @ beta
    variance = (residual ** 2).sum(axis=0) / (len(data) - design.shape[1])
    scale = np.diag(np.linalg.inv(design.T @ design))[: task.shape[1]]
    return beta[: task.shape[1]], beta[: task.shape[1]] / np.sqrt(np.outer(scale, variance))


def test_sample_glm_finds_task_conditions(dataset, truth, images, labels):
    yeo, names = labels
    hemi = np.repeat([0, 1], N_FS5)
    motor = yeo == names.index("Somatomotor")
    elsewhere = np.isin(yeo, [names.index("Visual"), names.index("Default")])
    expected = {"left_hand": 1, "right_hand": 0}  # contralateral hemisphere
    contra, ipsi, other, effect = [], [], [], []
    for subject in truth["subjects"]:
        betas, t_values = _task_t_values(dataset.root, subject,
                                         images[subject["participant_id"][4:], "motor"]["fsaverage5"])
        for row, condition in enumerate(sim.SignalModel().conditions):
            side = expected[condition]
            contra.append(np.median(t_values[row, motor & (hemi == side)]))
            ipsi.append(np.median(t_values[row, motor & (hemi != side)]))
            other.append(abs(np.median(t_values[row, elsewhere & (hemi == 0)])
                             - np.median(t_values[row, elsewhere & (hemi == 1)])))
            effect.append(np.median(betas[row, motor & (hemi == side)]) - np.median(betas[row, motor & (hemi != side)]))
    contra, ipsi, other, effect = map(np.array, (contra, ipsi, other, effect))
    # the somatomotor network fluctuates in both hemispheres at once, so the difference between the
    # hemispheres isolates the block response: about task_percent (2 %) times the subject's gain
    assert np.all((effect > 1.0) & (effect < 3.0)), effect
    # OLS t-values ignore the slow network fluctuations, which correlate with the one block of each
    # condition in these 2-minute runs by chance; the contralateral cortex still stands out
    assert np.all(contra - ipsi > 1.0) and np.mean(contra - ipsi) > 2.0, (contra, ipsi)
    # networks without a task pattern show no such difference between the hemispheres
    assert np.mean(contra - ipsi) > other.mean() + 1.5, (contra - ipsi, other)


def test_sample_group_coupling_differs(dataset, truth, images, labels):
    yeo, names = labels
    coupling = {"A": [], "B": []}
    for subject in truth["subjects"]:
        data, n_dummy, confounds = _rest_run(dataset, images, subject)
        fd = np.nan_to_num(_numbers(confounds["framewise_displacement"])[n_dummy:])
        keep = (fd < 0.5) & (np.r_[fd[1:], 0.0] < 0.5)  # censor both frames of each jump
        trend = np.column_stack([np.ones(len(data)), np.linspace(-1, 1, len(data))])
        clean = _residuals(data / data.mean(axis=0), trend)[keep]
        default, frontoparietal = (clean[:, yeo == names.index(name)].mean(axis=1)
                                   for name in ("Default", "Frontoparietal"))
        measured = np.corrcoef(default, frontoparietal)[0, 1]
        assert measured == pytest.approx(subject["coupling"], abs=0.25)
        coupling[subject["group"]].append(measured)
    a, b = np.array(coupling["A"]), np.array(coupling["B"])
    assert b.min() > a.max()
    spread = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    assert b.mean() - a.mean() > max(0.2, 2 * spread)


# --------------------------------------------------------------------------- discovery


def test_sample_pybids_finds_runs(dataset, tmp_path):
    from bids import BIDSLayout

    root = write_sample_dataset(tmp_path / "sessions", n_subjects=1, n_sessions=2, n_runs=2, tasks=("rest",),
                                spaces=("fsaverage5",), duration=30.0, seed=3).root
    layout = BIDSLayout(root, validate=False, derivatives=True)
    assert layout.get_sessions() == ["01", "02"] and layout.get_runs() == [1, 2]
    found = layout.get(subject="01", session="02", task="rest", run=2, space="fsaverage5", hemi="R",
                       suffix="bold", extension=".func.gii")
    assert [f.filename for f in found] == ["sub-01_ses-02_task-rest_run-2_hemi-R_space-fsaverage5_bold.func.gii"]
    assert found[0].get_metadata()["RepetitionTime"] == 0.8
    layout = BIDSLayout(dataset.root, validate=False, derivatives=True)
    assert layout.get_subjects() == ["01", "02", "03", "04"] and layout.get_tasks() == ["motor", "rest"]
    cifti = layout.get(subject="03", task="motor", space="fsLR", den="91k", suffix="bold",
                       extension=".dtseries.nii")
    assert len(cifti) == 1 and cifti[0].get_metadata()["RepetitionTime"] == 2.0
    assert len(layout.get(subject="02", desc="confounds", suffix="timeseries", extension=".tsv")) == 2
    assert len(layout.get(suffix="events", extension=".tsv")) == N_SUBJECTS


# --------------------------------------------------------------------------- validation and command line


@pytest.mark.parametrize(("options", "message"), [
    ({"spaces": ("fsaverage4",)}, r"unknown space 'fsaverage4'; known spaces: fsaverage5, fsaverage6, fsLR"),
    ({"tasks": ("rest", "nback")}, r"unknown task 'nback'; known tasks: rest, motor"),
    ({"tasks": ()}, r"no task given"),
    ({"duration": 30.0}, r"duration 30 s is too short: .* at least 50 s"),
    ({"duration": 20.0, "tasks": ("rest",)}, r"duration 20 s is too short: .* at least 26 s"),
    ({"n_subjects": 0}, r"n_subjects must be a positive integer, got 0"),
    ({"seed": -1}, r"seed must be a non-negative integer, got -1"),
])
def test_check_sample_options_names_the_value(tmp_path, options, message):
    settings = {"n_subjects": 4, "n_sessions": 1, "n_runs": 1, "tasks": ("rest", "motor"),
                "spaces": ("fsaverage5",), "duration": 180.0, "seed": 0, "model": sim.SignalModel(),
                "overwrite": False} | options
    with pytest.raises(SampleError, match=message):
        check_sample_options(tmp_path / "new", **settings)


def test_write_sample_dataset_refuses_non_empty_folder_unless_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    options = {"n_subjects": 1, "tasks": ("rest",), "spaces": ("fsaverage5",), "duration": 30.0}
    with pytest.raises(SampleError, match=rf"{tmp_path}: folder is not empty.*--overwrite"):
        write_sample_dataset(tmp_path, **options)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    result = write_sample_dataset(tmp_path, overwrite=True, **options)
    assert (tmp_path / "notes.txt").read_text() == "keep me" and result.ground_truth.exists()


def test_write_sample_dataset_rejects_impossible_coupling(tmp_path):
    model = sim.SignalModel(background_correlation=0.6)
    with pytest.raises(SampleError, match=r"group 'A': network coupling .* singular .* lower the coupling"):
        write_sample_dataset(tmp_path / "out", model=model, n_subjects=2, tasks=("rest",), duration=30.0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--subjects", "0"], "--subjects must be a positive integer, got '0'"),
    (["--duration", "abc"], "--duration must be a positive number of seconds, got 'abc'"),
    (["--seed", "-2"], "--seed must be a non-negative integer, got '-2'"),
    (["--spaces", "fsaverage5,fsLR32"], "unknown space 'fsLR32'"),
    (["--duration", "10"], "duration 10 s is too short"),
    # what an HCP-pipelines tree cannot hold
    (["--layout", "hcp", "--sessions", "2"], "HCP-pipelines trees have no sessions"),
    (["--layout", "hcp", "--spaces", "fsaverage5"], "HCP-pipelines trees hold fs_LR CIFTI only"),
    (["--layout", "hcp", "--runs", "3"], "use at most 2 with layout 'hcp'"),
])
def test_cli_bad_arguments_exit_2(tmp_path, capsys, argv, message):
    from flatprep.pipelines.cli.sample import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_writes_dataset(tmp_path, capsys):
    from flatprep.pipelines.cli.sample import main

    code = main([str(tmp_path / "out"), "--subjects", "1", "--tasks", "rest", "--spaces", "fsaverage5",
                 "--duration", "30", "--seed", "5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "sub-01 (1/1):" in printed and "wrote 12 files" in printed
    assert (tmp_path / "out" / "sourcedata" / "flatprep-sample" / "ground_truth.json").exists()
