"""Discovery: a run is identified by every entity it has; sidecars by inheritance, confounds by the full key."""

import csv
import re
import shutil
import json
from pathlib import Path

import numpy as np
import pytest

from flatprep.h5 import read_run
from flatprep.pipelines.bids import discover_runs
from flatprep.pipelines.cli.run import main
from flatprep.pipelines.runner import Settings, expected_output

from builders import add_gifti_run, make_dataset, smooth_bold, write_confounds, write_func_gifti, write_json

N = 10242
T = 40


def _directions_run(fmriprep, rng):
    """sub-d with two runs that differ only in dir-AP / dir-PA, each with its own confounds and sidecars."""
    func = Path(fmriprep) / "sub-d" / "func"
    data = {}
    for direction, tr in (("AP", 2.0), ("PA", 1.5)):
        data[direction] = smooth_bold(T, rng=rng)
        for index, hemi in enumerate(("L", "R")):
            stem = f"sub-d_task-rest_dir-{direction}_hemi-{hemi}_space-fsaverage5_bold"
            write_func_gifti(func / f"{stem}.func.gii", data[direction][:, index * N:(index + 1) * N])
            write_json(func / f"{stem}.json", {"RepetitionTime": tr})
        write_confounds(func / f"sub-d_task-rest_dir-{direction}_desc-confounds_timeseries.tsv", T,
                        rng=rng)
    return data


def test_runs_that_differ_only_in_dir_are_two_runs_with_their_own_files(tmp_path, rng):
    root, fmriprep = make_dataset(tmp_path / "bids")
    _directions_run(fmriprep, rng)
    specs = {s.label: s for s in discover_runs(root)}
    assert sorted(specs) == ["sub-d_task-rest_dir-AP_space-fsaverage5", "sub-d_task-rest_dir-PA_space-fsaverage5"]
    for direction in ("AP", "PA"):
        spec = specs[f"sub-d_task-rest_dir-{direction}_space-fsaverage5"]
        assert dict(spec.key)["direction"] == direction
        assert spec.confounds.endswith(f"sub-d_task-rest_dir-{direction}_desc-confounds_timeseries.tsv")
        assert all(f"_dir-{direction}_" in p for p in (*spec.bold, *spec.sidecars)) and len(spec.sidecars) == 2
        out = expected_output(spec, Settings(output_dir=str(tmp_path / "out"), work_dir="", clean_options={}))
        assert out.name == f"sub-d_task-rest_dir-{direction}_space-fsaverage5_desc-flat_bold.h5"


def test_dir_runs_give_two_outputs_each_cleaned_with_its_own_confounds(tmp_path, rng):
    root, fmriprep = make_dataset(tmp_path / "bids")
    _directions_run(fmriprep, rng)
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "--pixel-size", "4.8", "--no-figures",
                 "--confounds", "motion"]) == 0
    files = sorted(out.rglob("*_desc-flat_bold.h5"))
    assert [f.name for f in files] == ["sub-d_task-rest_dir-AP_space-fsaverage5_desc-flat_bold.h5",
                                       "sub-d_task-rest_dir-PA_space-fsaverage5_desc-flat_bold.h5"]
    for path, direction, tr in zip(files, ("AP", "PA"), (2.0, 1.5)):
        run = read_run(path)
        assert run.attrs["entities"]["direction"] == direction and run.attrs["tr_in"] == tr
        sources = [Path(s["path"]).name for s in run.attrs["sources"]]
        assert f"sub-d_task-rest_dir-{direction}_desc-confounds_timeseries.tsv" in sources
        assert not any(f"dir-{'PA' if direction == 'AP' else 'AP'}" in name for name in sources)
    with (out / "runs.tsv").open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [json.loads(r["entities"])["direction"] for r in rows] == ["AP", "PA"]


def test_subject_labels_that_share_a_first_word_do_not_merge(tmp_path, rng):
    root, fmriprep = make_dataset(tmp_path / "bids")
    add_gifti_run(fmriprep, "a", data=smooth_bold(T, rng=rng))
    add_gifti_run(fmriprep, "a b", data=smooth_bold(T, rng=rng), tr=1.5)
    specs = {s.label: s for s in discover_runs(root)}
    good, broken = specs["sub-a_task-rest_space-fsaverage5"], specs["sub-a b_task-rest_space-fsaverage5"]
    assert not good.error and all("/sub-a/" in p for p in (*good.bold, *good.sidecars, good.confounds))
    assert broken.bold == () and broken.error.endswith(
        "sub-a b_task-rest_hemi-L_space-fsaverage5_bold.func.gii: sub label 'a b' is not valid BIDS; "
        "BIDS labels are letters and digits only ([a-zA-Z0-9]); rename the file")
    # with the label filter, pybids reads "sub-a b" as subject "a": it still fails alone, never merges
    specs = {s.label: s for s in discover_runs(root, participant_labels=["a"])}
    assert specs["sub-a b_task-rest_space-fsaverage5"].error and not specs["sub-a_task-rest_space-fsaverage5"].error


def test_non_ascii_label_fails_alone_and_summaries_are_written(tmp_path, rng, caplog):
    root, fmriprep = make_dataset(tmp_path / "bids")
    add_gifti_run(fmriprep, "01", data=smooth_bold(T, rng=rng))
    add_gifti_run(fmriprep, "\u00e901", data=smooth_bold(T, rng=rng))
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "--pixel-size", "4.8"]) == 1
    with (out / "runs.tsv").open(newline="") as handle:
        rows = {r["subject"]: r for r in csv.DictReader(handle, delimiter="\t")}
    assert rows["01"]["status"] == "done" and (out / "sub-01.html").exists()
    assert rows["\u00e901"]["status"] == "failed"
    assert rows["\u00e901"]["error"].endswith("sub-\u00e901_task-rest_hemi-L_space-fsaverage5_bold.func.gii: "
                                              "sub label '\u00e901' is not valid BIDS; BIDS labels are letters "
                                              "and digits only ([a-zA-Z0-9]); rename the file")
    assert "Traceback" not in caplog.text and not list(out.glob("sub-\u00e9*"))


def test_raw_sidecars_apply_by_inheritance_most_specific_first(tmp_path, rng):
    root, fmriprep = make_dataset(tmp_path / "bids")
    add_gifti_run(fmriprep, "01", data=smooth_bold(T, rng=rng), sidecar=False)
    top = write_json(root / "task-rest_bold.json", {"RepetitionTime": 2.0})
    subject = write_json(root / "sub-01" / "sub-01_task-rest_bold.json", {"RepetitionTime": 1.5})
    write_json(root / "task-motor_bold.json", {"RepetitionTime": 3.0})  # another task: never applies
    write_json(root / "sub-01" / "func" / "sub-01_task-rest_dir-AP_bold.json", {"RepetitionTime": 3.0})
    (spec,) = discover_runs(root)
    assert spec.sidecars == (str(subject), str(top))
    from flatprep.io import load_surface_bold, run_repetition_time

    assert run_repetition_time(load_surface_bold(spec.bold), spec.sidecars) == 1.5


def test_entity_that_output_names_cannot_carry_fails_alone(tmp_path, rng):
    root, fmriprep = make_dataset(tmp_path / "bids")
    data = smooth_bold(T, rng=rng)
    for index, hemi in enumerate(("L", "R")):
        write_func_gifti(Path(fmriprep) / "sub-01" / "func" /
                         f"sub-01_task-rest_proc-x_hemi-{hemi}_space-fsaverage5_bold.func.gii",
                         data[:, index * N:(index + 1) * N], tr=2.0)
    (spec,) = discover_runs(root)
    assert spec.error.endswith("sub-01_task-rest_proc-x_hemi-L_space-fsaverage5_bold.func.gii: entity 'proc' "
                               "cannot be carried by flatprep's output names (bids_specs/flatprep.json); "
                               "select runs with --bids-filter-file")


def test_a_participant_job_indexes_only_its_participants_folders():
    from flatprep.pipelines.bids import _ignored

    other = _ignored(["sub-01", "a"])[-1]
    assert all(other.search(p) for p in ("/sub-02", "/sub-02/func/x.json", "/sub-010/anat", "/sub-ab"))
    assert not any(other.search(p) for p in ("/sub-01", "/sub-01/func/x.json", "/sub-a/func", "/sub-a b/func",
                                             "/task-rest_bold.json", "/derivatives/fmriprep/sub-02"))
    assert len(_ignored(None)) == len(_ignored(["01"])) - 1  # no labels: pybids' defaults only


# --------------------------------------------------------------------------- where the dataset sits


def _entity_folders() -> list[str]:
    """A folder named like a key-label pair of every entity pybids knows (and ones like ``golden-data``)."""
    from flatprep.pipelines.entities import anchored_configs

    keys = sorted({re.search(r"([a-zA-Z]+)-\(", e["pattern"]).group(1) for c in anchored_configs(derivative=True)
                   for e in c["entities"] if re.search(r"([a-zA-Z]+)-\(", e.get("pattern", ""))})
    assert {"sub", "acq", "den", "res", "desc", "label", "sample", "hemi", "from"} <= set(keys)
    return [f"{key}-{'1' if key in ('run', 'echo', 'flip', 'inv', 'chunk') else 'x9'}" for key in keys] + [
        "golden-data", "sample-data", "den-91k", "mt-on", "hemi-L", "part-mag", "func", "anat"]


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("seconds",)} for row in rows]


@pytest.fixture(scope="module")
def placed_datasets(tmp_path_factory):
    """The same sample dataset under a plain folder and under folders named like every BIDS entity."""
    from flatprep.sample import write_sample_dataset

    base = tmp_path_factory.mktemp("placed")
    plain, nested = base / "plain" / "ds", base.joinpath(*_entity_folders(), "ds")
    for root in (plain, nested):
        write_sample_dataset(root, n_subjects=1, duration=30.0, tasks=("rest",), spaces=("fsLR", "MNI152NLin6Asym"),
                             seed=5)
    return plain, nested


def test_entities_come_from_names_not_from_the_folders_above_the_dataset(placed_datasets):
    plain, nested = placed_datasets
    for space in (None, "MNI152NLin6Asym"):
        specs = [discover_runs(root, space=space) for root in (plain, nested)]
        assert [s.label for s in specs[0]] == [s.label for s in specs[1]] == [
            "sub-01_task-rest_space-MNI152NLin6Asym_res-2" if space else "sub-01_task-rest_space-fsLR"]
        for one, other in zip(*specs):
            assert one.key == other.key and one.space == other.space and not one.error and not other.error
            assert one.entities == other.entities
            for name in ("bold", "sidecars"):
                assert [str(Path(p).relative_to(plain)) for p in getattr(one, name)] == \
                       [str(Path(p).relative_to(nested)) for p in getattr(other, name)]
        assert len(specs[0][0].bold) == (2 if space else 1)  # the volume's brain mask is found too


def test_outputs_and_runs_tsv_do_not_depend_on_the_parent_folder(placed_datasets, tmp_path):
    outputs = []
    for root in placed_datasets:
        out = tmp_path / root.parent.name / "out"
        assert main([str(root), str(out), "participant", "--pixel-size", "2.4", "--no-figures"]) == 0
        with (out / "runs.tsv").open(newline="") as handle:
            rows = _comparable(list(csv.DictReader(handle, delimiter="\t")))
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*_desc-flat_bold.*"))
        outputs.append((rows, files, read_run(out / rows[0]["out_file"]).frames))
    (rows, files, frames), (rows2, files2, frames2) = outputs
    assert rows == rows2 and rows[0]["status"] == "done"
    assert files == files2 == ["sub-01/func/sub-01_task-rest_space-fsLR_den-91k_desc-flat_bold.h5",
                               "sub-01/func/sub-01_task-rest_space-fsLR_den-91k_desc-flat_bold.json"]
    np.testing.assert_array_equal(frames, frames2)


def test_a_subjects_files_in_another_subjects_folder_get_their_own_failed_row(tmp_path, rng):
    root, fmriprep = make_dataset(tmp_path / "bids")
    for subject in ("01", "02"):
        add_gifti_run(fmriprep, subject, data=smooth_bold(T, rng=rng))
    func = Path(fmriprep) / "sub-01" / "func"
    for hemi in ("L", "R"):  # sub-02's run, written again inside sub-01's folder
        write_func_gifti(func / f"sub-02_task-rest_run-1_hemi-{hemi}_space-fsaverage5_bold.func.gii",
                         smooth_bold(T, rng=rng)[:, :N], tr=2.0)
        write_func_gifti(func / f"sub-02_task-rest_hemi-{hemi}_space-fsaverage5_bold.func.gii",
                         smooth_bold(T, rng=rng)[:, :N], tr=2.0)
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", "--pixel-size", "4.8", "--no-figures"]) == 1
    with (out / "runs.tsv").open(newline="") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert {run: row["status"] for run, row in rows.items()} == {
        "sub-01_task-rest_space-fsaverage5": "done", "sub-02_task-rest_space-fsaverage5": "done",
        "sub-01/func/sub-02_task-rest_space-fsaverage5": "failed", "sub-02_task-rest_run-1_space-fsaverage5": "failed"}
    assert rows["sub-01/func/sub-02_task-rest_space-fsaverage5"]["error"].endswith(
        "sub-01/func/sub-02_task-rest_hemi-L_space-fsaverage5_bold.func.gii: folder 'sub-01' does not match the file "
        "name (sub-02); BIDS labels are letters and digits only ([a-zA-Z0-9]); rename the file")


def test_a_run_in_two_derivative_folders_is_taken_from_the_first_with_a_warning(tmp_path, rng, caplog):
    root, fmriprep = make_dataset(tmp_path / "bids")
    add_gifti_run(fmriprep, "01", data=smooth_bold(T, rng=rng))
    older = root / "derivatives" / "fmriprep-old"
    shutil.copytree(fmriprep, older)
    (spec,) = discover_runs(root)
    assert all("/fmriprep/" in p for p in (*spec.bold, *spec.sidecars, spec.confounds))
    message = next(r.getMessage() for r in caplog.records if "the same run is in" in r.getMessage())
    assert message == (
        f"sub-01_task-rest_space-fsaverage5: the same run is in {fmriprep}/sub-01/func/"
        f"sub-01_task-rest_hemi-L_space-fsaverage5_bold.func.gii and {older}/sub-01/func/"
        f"sub-01_task-rest_hemi-L_space-fsaverage5_bold.func.gii; using {fmriprep} (the derivative named first: "
        "-d order, else by folder name; choose one with -d NAME=PATH)")
    (spec,) = discover_runs(root, derivatives={"old": older, "new": fmriprep})  # -d order decides
    assert all("/fmriprep-old/" in p for p in (*spec.bold, *spec.sidecars, spec.confounds))
    elsewhere = shutil.copytree(fmriprep, tmp_path / "elsewhere" / "fmriprep")  # the same folder name
    (spec,) = discover_runs(root, derivatives={"b": elsewhere, "a": fmriprep})
    assert all(p.startswith(str(elsewhere)) for p in (*spec.bold, *spec.sidecars, spec.confounds))


def test_two_files_of_one_run_in_one_folder_give_a_warning_and_the_stated_choice(tmp_path, caplog):
    root, fmriprep = make_dataset(tmp_path / "bids")
    func = Path(fmriprep) / "sub-01" / "func"
    for name in ("sub-01_task-rest_space-fsLR_den-170k_bold.dtseries.nii",
                 "sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii",
                 "sub-01_task-rest_space-fsLR_den-91k_desc-smoothed_bold.dtseries.nii"):
        (func / name).parent.mkdir(parents=True, exist_ok=True)
        (func / name).write_bytes(b"")
    (spec,) = discover_runs(root)
    assert spec.bold == (str(func / "sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii"),)
    assert (f"{func}/sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii: several files give this run: "
            "sub-01_task-rest_space-fsLR_den-91k_desc-smoothed_bold.dtseries.nii, "
            "sub-01_task-rest_space-fsLR_den-170k_bold.dtseries.nii; using the first with den-91k, by name"
            ) in caplog.text
