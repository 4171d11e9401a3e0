"""HCP-pipelines input: names, motion regressors, EVs, discovery, and agreement with the same data in BIDS."""

from __future__ import annotations

import csv
import json
import logging
import warnings

import h5py
import numpy as np
import pytest

from flatprep.exceptions import BIDSInputError, InputError
from flatprep.hcp import read_hcp_events, read_movement_regressors
from flatprep.pipelines.hcp import detect_layout, discover_hcp_runs, parse_fmri_name

SEED, DURATION = 11, 60.0


@pytest.mark.parametrize("name, entities", [
    ("rfMRI_REST1_LR", {"task": "rest", "acquisition": None, "direction": "LR", "run": 1}),
    ("rfMRI_REST2_RL", {"task": "rest", "acquisition": None, "direction": "RL", "run": 2}),
    ("tfMRI_MOTOR_RL", {"task": "motor", "acquisition": None, "direction": "RL", "run": None}),
    ("tfMRI_WM_LR", {"task": "wm", "acquisition": None, "direction": "LR", "run": None}),
    ("rfMRI_REST1_7T_PA", {"task": "rest", "acquisition": "7T", "direction": "PA", "run": 1}),
    ("tfMRI_MOVIE1_7T_AP", {"task": "movie", "acquisition": "7T", "direction": "AP", "run": 1}),
    ("rfMRI_REST1_AP", {"task": "rest", "acquisition": None, "direction": "AP", "run": 1}),
    ("tfMRI_CARIT_PA", {"task": "carit", "acquisition": None, "direction": "PA", "run": None}),
    ("tfMRI_MOTOR", None),  # a level-2 analysis folder, not a run
    ("T1w", None),
])
def test_parse_fmri_name_maps_hcp_names_to_bids_entities(name, entities):
    assert parse_fmri_name(name) == entities


def test_read_movement_regressors_gives_fmriprep_names_and_radians(tmp_path):
    path = tmp_path / "Movement_Regressors.txt"
    path.write_text("0.1 0.2 0.3 90 0 -180 0 0 0 0 0 0\n0.2 0.2 0.3 45 0 0 0.1 0 0 -45 0 180\n")
    columns = read_movement_regressors(path, n_timepoints=2)
    np.testing.assert_allclose(columns["trans_x"], [0.1, 0.2])
    np.testing.assert_allclose(columns["rot_x"], [np.pi / 2, np.pi / 4])
    np.testing.assert_allclose(columns["rot_z_derivative1"], [0, np.pi])
    with pytest.raises(InputError, match="2 rows but the BOLD run has 3 frames"):
        read_movement_regressors(path, n_timepoints=3)
    path.write_text("0.1 0.2 0.3 1 2 3\n")
    with pytest.raises(InputError, match=r"Movement_Regressors.txt: 6 columns, expected the 12"):
        read_movement_regressors(path)


def test_read_hcp_events_merges_conditions_by_onset_and_skips_sync(tmp_path):
    (tmp_path / "rh.txt").write_text("30 12 1\n")
    (tmp_path / "lf.txt").write_text("10 12 1\n50 12 1\n")
    (tmp_path / "Sync.txt").write_text("0.5\n")
    (tmp_path / "empty.txt").write_text("")
    events = read_hcp_events(sorted(tmp_path.glob("*.txt")))
    assert events["trial_type"].tolist() == ["lf", "rh", "lf"]
    np.testing.assert_allclose(events["onset"], [10, 30, 50])
    (tmp_path / "bad.txt").write_text("1 2\n")
    with pytest.raises(InputError, match="bad.txt: 2 columns, expected 3"):
        read_hcp_events([tmp_path / "bad.txt"])


@pytest.fixture(scope="module")
def same_data(tmp_path_factory):
    """One sample subject written as an HCP release and as BIDS (fs_LR), same seed: the same CIFTI data."""
    from flatprep.sample import write_sample_dataset

    root = tmp_path_factory.mktemp("layouts")
    write_sample_dataset(root / "hcp", n_subjects=1, duration=DURATION, seed=SEED, layout="hcp")
    write_sample_dataset(root / "bids", n_subjects=1, duration=DURATION, seed=SEED, spaces=("fsLR",))
    return root


def _participant(source, out, *extra):
    from flatprep.pipelines.cli.run import main

    return main([str(source), str(out), "participant", "--pixel-size", "2.4", "--no-figures",
                 "--dummy-scans", "2", *extra])


def test_hcp_release_gives_the_flat_frames_of_its_bids_equivalent(same_data):
    assert _participant(same_data / "hcp", same_data / "out_hcp") == 0
    assert _participant(same_data / "bids", same_data / "out_bids") == 0
    pairs = {"sub-01_task-rest_dir-LR_run-1": "sub-01_task-rest", "sub-01_task-motor_dir-LR": "sub-01_task-motor"}
    for hcp_label, bids_label in pairs.items():
        name = "_space-fsLR_den-91k_desc-flat_bold.h5"
        with h5py.File(same_data / "out_hcp" / "sub-01" / "func" / f"{hcp_label}{name}") as a, \
                h5py.File(same_data / "out_bids" / "sub-01" / "func" / f"{bids_label}{name}") as b:
            assert a["frames"].shape == b["frames"].shape
            assert np.array_equal(a["frames"][()], b["frames"][()])
            assert a.attrs["tr_in"] == b.attrs["tr_in"]
            entities = json.loads(a.attrs["entities"])
            sources = json.loads(a.attrs["sources"])
        assert entities["direction"] == "LR" and entities["space"] == "fsLR"
        assert sources[0]["uri"].startswith("bids:hcp:01/MNINonLinear/Results/")
        assert sources[0]["uri"].endswith("_Atlas_MSMAll.dtseries.nii")


def test_hcp_task_evs_are_stored_with_the_run(same_data):
    truth = json.loads((same_data / "hcp" / "sourcedata" / "flatprep-sample" / "ground_truth.json").read_text())
    expected = next(r["events"] for r in truth["subjects"][0]["runs"] if r["task"] == "motor")
    path = same_data / "out_hcp" / "sub-01" / "func" / "sub-01_task-motor_dir-LR_space-fsLR_den-91k_desc-flat_bold.h5"
    with h5py.File(path) as handle:
        events = json.loads(handle.attrs["events"])
    assert [e["trial_type"] for e in events] == [e["trial_type"] for e in expected]
    np.testing.assert_allclose([e["onset"] for e in events], [e["onset"] for e in expected], atol=1e-3)


def test_hcp_movement_regressors_match_the_fmriprep_confounds(same_data):
    hcp = read_movement_regressors(same_data / "hcp" / "01" / "MNINonLinear" / "Results" / "rfMRI_REST1_LR"
                                   / "Movement_Regressors.txt")
    with (same_data / "bids" / "derivatives" / "fmriprep" / "sub-01" / "func"
          / "sub-01_task-rest_desc-confounds_timeseries.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    for name in ("trans_x", "rot_y"):
        np.testing.assert_allclose(hcp[name], [float(r[name]) for r in rows], atol=2e-5)


def test_hcp_output_goes_through_motion_regression_and_the_group_level(same_data):
    from flatprep.pipelines.cli.run import main

    out = same_data / "out_hcp_motion"
    assert _participant(same_data / "hcp", out, "--confounds", "motion", "--task", "rest") == 0
    assert [p.name for p in out.glob("sub-01/func/*.h5")] == [
        "sub-01_task-rest_dir-LR_run-1_space-fsLR_den-91k_desc-flat_bold.h5"]
    assert main([str(same_data / "hcp"), str(out), "group", "--split-ratios", "1", "0", "0"]) == 0
    manifest = (out / "shards" / "manifest.tsv").read_text()
    assert "sub-01_task-rest_dir-LR_run-1_space-fsLR_den-91k" in manifest


def test_other_hcp_variants_are_chosen_by_flag_and_a_missing_one_fails_alone(same_data, tmp_path, caplog):
    release = same_data / "hcp"
    specs = discover_hcp_runs(release, registration="MSMSulc", fix="hp2000")
    assert [s.bold[0].rsplit("/", 1)[1] for s in specs] == [
        "tfMRI_MOTOR_LR_Atlas_hp2000_clean.dtseries.nii", "rfMRI_REST1_LR_Atlas_hp2000_clean.dtseries.nii"]
    caplog.set_level(logging.ERROR)
    assert _participant(release, tmp_path / "out", "--hcp-registration", "MSMSulc", "--task", "rest") == 1
    assert "rfMRI_REST1_LR_Atlas.dtseries.nii: no such file" in caplog.text


def test_hcp_filters_and_layout_detection(same_data, tmp_path):
    release = same_data / "hcp"
    assert detect_layout(release) == "hcp" and detect_layout(same_data / "bids") == "bids"
    assert [dict(s.key)["task"] for s in discover_hcp_runs(release, tasks=["motor"])] == ["motor"]
    with pytest.raises(BIDSInputError, match="no HCP runs"):
        discover_hcp_runs(release, participant_labels=["sub-99"])
    with pytest.raises(BIDSInputError, match="fs_LR CIFTI only; --space fsaverage5"):
        discover_hcp_runs(release, space="fsaverage5")
    mixed = tmp_path / "mixed"
    (mixed / "100206" / "MNINonLinear" / "Results").mkdir(parents=True)
    (mixed / "dataset_description.json").write_text("{}")
    with pytest.raises(BIDSInputError, match="holds both a BIDS dataset .* --input-layout bids or hcp"):
        detect_layout(mixed)
    assert detect_layout(mixed, "hcp") == "hcp"


def test_mixed_layout_on_the_command_line_fails_with_one_line(tmp_path, caplog):
    mixed = tmp_path / "mixed"
    (mixed / "100206" / "MNINonLinear" / "Results").mkdir(parents=True)
    (mixed / "dataset_description.json").write_text("{}")
    from flatprep.pipelines.cli.run import main

    caplog.set_level(logging.ERROR)
    assert main([str(mixed), str(tmp_path / "out"), "participant"]) == 2
    assert caplog.records[-1].getMessage().count("\n") == 0
    assert "choose one with --input-layout" in caplog.text


def test_bids_only_options_on_an_hcp_release_fail_with_one_line(same_data, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    assert _participant(same_data / "hcp", tmp_path / "out", "--session-label", "1", "-d",
                        f"fmriprep={same_data}") == 2
    message = caplog.records[-1].getMessage()
    assert message.count("\n") == 0 and message.startswith(str(same_data / "hcp"))
    assert "an HCP release takes no -d/--derivatives, --session-label (BIDS input only" in message
    assert not (tmp_path / "out" / "runs.tsv").exists()


def test_hcp_run_without_movement_regressors_fails_alone_under_motion_regression(same_data, tmp_path, caplog):
    import shutil

    release = tmp_path / "hcp"
    shutil.copytree(same_data / "hcp", release)
    (release / "01" / "MNINonLinear" / "Results" / "rfMRI_REST1_LR" / "Movement_Regressors.txt").unlink()
    caplog.set_level(logging.ERROR)
    assert _participant(release, tmp_path / "out", "--confounds", "motion") == 1
    with (tmp_path / "out" / "runs.tsv").open() as handle:
        rows = {row["task"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert rows["motor"]["status"] == "done" and rows["rest"]["status"] == "failed"
    assert rows["rest"]["error"].endswith("needs the run's confounds (fMRIPrep *_desc-confounds_timeseries.tsv or "
                                          "HCP Movement_Regressors.txt), but none were given; pass confounds= or "
                                          "use confounds_strategy='none'")
    assert rows["rest"]["error"].startswith(str(release / "01" / "MNINonLinear" / "Results" / "rfMRI_REST1_LR"))


def test_hcp_events_after_the_run_end_are_warned_naming_the_file(tmp_path):
    (tmp_path / "rh.txt").write_text("30 12 1\n")
    (tmp_path / "lf.txt").write_text("10 12 1\n500 12 1\n")
    with pytest.warns(UserWarning, match=r"lf.txt: 1 of 2 event\(s\) end after the run's end \(last at 512 s, the run "
                                         r"lasts 60 s\); check that this file belongs to this run and is in seconds"):
        events = read_hcp_events(sorted(tmp_path.glob("*.txt")), run_seconds=60.0)
    assert events["onset"].tolist() == [10, 30, 500]  # kept as given
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_hcp_events([tmp_path / "rh.txt"], run_seconds=60.0)


def test_an_hcp_run_with_an_event_past_its_end_is_stored_with_a_warning(same_data, tmp_path):
    import shutil

    release = tmp_path / "hcp"
    shutil.copytree(same_data / "hcp", release)
    evs = release / "01" / "MNINonLinear" / "Results" / "tfMRI_MOTOR_LR" / "EVs"
    late = sorted(p for p in evs.glob("*.txt") if p.name != "Sync.txt")[0]
    late.write_text(late.read_text() + "500 12 1\n")
    with pytest.warns(UserWarning, match=rf"{late}: 1 of \d+ event\(s\) end after the run's end \(last at 512 s"):
        assert _participant(release, tmp_path / "out", "--task", "motor") == 0


def test_an_hcp_subject_folder_with_a_control_character_fails_alone(same_data, tmp_path):
    import shutil

    release = tmp_path / "hcp"
    shutil.copytree(same_data / "hcp", release)
    shutil.copytree(release / "01", release / "0\n2")
    assert _participant(release, tmp_path / "out", "--task", "rest") == 1
    with (tmp_path / "out" / "runs.tsv").open(newline="") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert rows["sub-01_task-rest_dir-LR_run-1_space-fsLR"]["status"] == "done"
    assert rows["sub-0\\n2"]["status"] == "failed" and rows["sub-0\\n2"]["error"] == (
        f"{release}/0\\n2: subject folder name is not a BIDS label (letters and digits only); rename the folder")
    assert (tmp_path / "out" / "sub-01.html").exists()
