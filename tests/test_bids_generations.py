"""Discovery (pipelines/bids.py) of surface BOLD named as each fMRIPrep generation wrote it (tiny trees of the exact names)."""

from __future__ import annotations

import numpy as np
import pytest
from builders import make_dataset, write_confounds, write_func_gifti, write_json

from flatprep.exceptions import BIDSInputError
from flatprep.pipelines.bids import discover_runs

N_VERTICES = 10242  # fsaverage5
T = 4

# (generation, left BOLD name, right BOLD name, confounds name) for sub-01 task-rest run-1
GENERATIONS = [
    ("fmriprep-1.0-1.1", "sub-01_task-rest_run-1_bold_space-fsaverage5.L.func.gii",
     "sub-01_task-rest_run-1_bold_space-fsaverage5.R.func.gii", "sub-01_task-rest_run-1_bold_confounds.tsv"),
    ("fmriprep-1.2-20.2", "sub-01_task-rest_run-1_space-fsaverage5_hemi-L.func.gii",
     "sub-01_task-rest_run-1_space-fsaverage5_hemi-R.func.gii", "sub-01_task-rest_run-1_desc-confounds_regressors.tsv"),
    ("fmriprep-21-22", "sub-01_task-rest_run-1_space-fsaverage5_hemi-L_bold.func.gii",
     "sub-01_task-rest_run-1_space-fsaverage5_hemi-R_bold.func.gii",
     "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv"),
    ("fmriprep-23+", "sub-01_task-rest_run-1_hemi-L_space-fsaverage5_bold.func.gii",
     "sub-01_task-rest_run-1_hemi-R_space-fsaverage5_bold.func.gii",
     "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv"),
]


def _tree(root, names, *, subject="01"):
    root, fmriprep = make_dataset(root)
    func = fmriprep / f"sub-{subject}" / "func"
    data = np.ones((T, N_VERTICES), np.float32)
    paths = [write_func_gifti(func / name.replace("sub-01", f"sub-{subject}"), data) for name in names[:2]]
    confounds = write_confounds(func / names[2].replace("sub-01", f"sub-{subject}"), T)
    write_json(root / f"sub-{subject}" / "func" / f"sub-{subject}_task-rest_run-1_bold.json", {"RepetitionTime": 2.0})
    return root, paths, confounds


@pytest.mark.parametrize("generation, left, right, confounds", GENERATIONS, ids=[g[0] for g in GENERATIONS])
def test_discover_runs_finds_every_fmriprep_naming_generation(tmp_path, generation, left, right, confounds):
    root, paths, confounds_path = _tree(tmp_path / "bids", (left, right, confounds))
    (spec,) = discover_runs(root)
    assert dict(spec.key) == {"subject": "01", "task": "rest", "run": 1} and spec.space == "fsaverage5"
    assert spec.bold == tuple(str(p) for p in paths)  # left first
    assert spec.confounds == str(confounds_path)
    assert any(s.endswith("sub-01_task-rest_run-1_bold.json") for s in spec.sidecars)


def test_legacy_names_obey_the_participant_and_task_filters(tmp_path):
    _, left, right, confounds = GENERATIONS[0]
    root, _, _ = _tree(tmp_path / "bids", (left, right, confounds))
    _tree(tmp_path / "bids", (left, right, confounds), subject="02")
    assert [s.subject for s in discover_runs(root, participant_labels=["sub-02"])] == ["02"]
    with pytest.raises(BIDSInputError, match="no surface BOLD runs match the filters"):
        discover_runs(root, tasks=["motor"])


def test_mixed_generations_of_one_run_give_one_run(tmp_path):
    """The same run written twice under two generations' names is one run, not two."""
    root, _, _ = _tree(tmp_path / "bids", GENERATIONS[3][1:])
    _tree(tmp_path / "bids", GENERATIONS[1][1:])
    specs = discover_runs(root)
    assert len(specs) == 1


def test_fsnative_runs_carry_their_registration_spheres(tmp_path):
    root, fmriprep = make_dataset(tmp_path / "bids")
    func, anat = fmriprep / "sub-01" / "func", fmriprep / "sub-01" / "anat"
    for hemi in "LR":
        write_func_gifti(func / f"sub-01_task-rest_hemi-{hemi}_space-fsnative_bold.func.gii", np.ones((T, 5)))
        (anat).mkdir(parents=True, exist_ok=True)
        (anat / f"sub-01_hemi-{hemi}_desc-reg_sphere.surf.gii").write_bytes(b"")
    (spec,) = discover_runs(root)
    assert spec.space == "fsnative"
    assert [p.rsplit("/", 1)[1] for p in spec.surfaces[:2]] == [
        "sub-01_hemi-L_desc-reg_sphere.surf.gii", "sub-01_hemi-R_desc-reg_sphere.surf.gii"]
    assert spec.surfaces[2:] == ("", "")


def test_fmriprep_20_2_named_dataset_goes_through_participant_and_group(tmp_path):
    """Sample files renamed as fMRIPrep 20.2 LTS named them give the same flat frames, and shards."""
    import shutil

    import h5py

    from flatprep.pipelines.cli.run import main
    from flatprep.sample import write_sample_dataset

    current = tmp_path / "current"
    write_sample_dataset(current, n_subjects=2, tasks=("rest",), spaces=("fsaverage5",), duration=40.0, seed=4)
    legacy = tmp_path / "legacy"
    shutil.copytree(current, legacy)
    for path in sorted(legacy.glob("derivatives/fmriprep/sub-*/func/*")):
        if path.name.endswith("_bold.json"):
            path.unlink()  # the raw sidecar gives the TR
            continue
        name = path.name.replace("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv")
        for hemi in "LR":
            name = name.replace(f"_hemi-{hemi}_space-fsaverage5_bold.func.gii", f"_space-fsaverage5_hemi-{hemi}.func.gii")
        path.rename(path.with_name(name))
    assert sorted(p.name for p in legacy.glob("derivatives/fmriprep/sub-01/func/*")) == [
        "sub-01_task-rest_desc-confounds_regressors.tsv", "sub-01_task-rest_space-fsaverage5_hemi-L.func.gii",
        "sub-01_task-rest_space-fsaverage5_hemi-R.func.gii"]
    for root in (current, legacy):
        assert main([str(root), str(root / "derivatives" / "flatprep"), "participant", "--pixel-size", "2.4",
                     "--no-figures"]) == 0
    for subject in ("01", "02"):
        name = f"sub-{subject}/func/sub-{subject}_task-rest_space-fsaverage5_desc-flat_bold.h5"
        with h5py.File(current / "derivatives" / "flatprep" / name) as a, \
                h5py.File(legacy / "derivatives" / "flatprep" / name) as b:
            assert np.array_equal(a["frames"][()], b["frames"][()])
            assert a.attrs["n_dropped"] == b.attrs["n_dropped"] > 0  # non-steady-state columns were read
    assert main([str(legacy), str(legacy / "derivatives" / "flatprep"), "group",
                 "--split-ratios", "0.5", "0.5", "0"]) == 0
    manifest = (legacy / "derivatives" / "flatprep" / "shards" / "manifest.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in manifest[1:]] == [
        "sub-01_task-rest_space-fsaverage5", "sub-02_task-rest_space-fsaverage5"]


def test_fsnative_spheres_from_a_freesurfer_folder_beside_fmriprep(tmp_path):
    """fMRIPrep < 21 wrote derivatives/freesurfer (no dataset_description.json) beside derivatives/fmriprep."""
    root, fmriprep = make_dataset(tmp_path / "bids")
    for hemi in "LR":
        write_func_gifti(fmriprep / "sub-01" / "func" / f"sub-01_task-rest_space-fsnative_hemi-{hemi}.func.gii",
                         np.ones((T, 5)))
    surf = root / "derivatives" / "freesurfer" / "sub-01" / "surf"
    surf.mkdir(parents=True)
    for name in ("lh.sphere.reg", "rh.sphere.reg"):
        (surf / name).write_bytes(b"")
    (root / "derivatives" / "freesurfer" / "sub-01" / "label").mkdir()
    (root / "derivatives" / "freesurfer" / "sub-01" / "label" / "lh.cortex.label").write_text("")
    (spec,) = discover_runs(root)
    assert spec.space == "fsnative"
    assert spec.surfaces == (str(surf / "lh.sphere.reg"), str(surf / "rh.sphere.reg"),
                             str(surf.parent / "label" / "lh.cortex.label"), "")


# --------------------------------------------------------------------------- a derivative folder as BIDS_DIR

VOLUME_JSON = "sub-{s}_task-rest_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.json"


def _fmriprep_20_2(folder, subjects, rng):
    """An fMRIPrep 20.2 output folder: surface runs without sidecars, the TR beside the volume only."""
    from builders import smooth_bold

    write_json(folder / "dataset_description.json", {
        "Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.4.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "20.2.7"}]})
    for subject in subjects:
        func = folder / f"sub-{subject}" / "func"
        data = smooth_bold(40, rng=rng)
        for index, hemi in enumerate("LR"):
            write_func_gifti(func / f"sub-{subject}_task-rest_space-fsaverage5_hemi-{hemi}.func.gii",
                             data[:, index * N_VERTICES:(index + 1) * N_VERTICES])
        write_json(func / VOLUME_JSON.format(s=subject), {"RepetitionTime": 1.5, "SkullStripped": False})
        write_confounds(func / f"sub-{subject}_task-rest_desc-confounds_regressors.tsv", 40)
    return folder


def test_fmriprep_20_2_folder_alone_flattens_at_the_volume_sidecars_tr(tmp_path, rng):
    import csv

    from flatprep.pipelines.cli.run import main

    folder = _fmriprep_20_2(tmp_path / "ds000001-fmriprep", ("01", "02"), rng)
    empty = folder / "sub-02" / "func" / "sub-02_task-rest_space-fsaverage5_hemi-R.func.gii"
    empty.write_bytes(b"")  # a file whose content was never fetched
    (spec, _) = discover_runs(folder)
    assert spec.sidecars == (str(folder / "sub-01" / "func" / VOLUME_JSON.format(s="01")),)
    assert spec.dataset_names == {"ds000001-fmriprep": str(folder)}
    out = tmp_path / "out"
    assert main([str(folder), str(out), "participant", "--pixel-size", "4.8", "--no-figures"]) == 1
    with (out / "runs.tsv").open(newline="") as handle:
        rows = {row["subject"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert rows["01"]["status"] == "done" and float(rows["01"]["tr_in"]) == 1.5
    assert rows["02"]["status"] == "failed" and rows["02"]["error"].startswith(f"{empty}: not a readable GIFTI file")


def test_derivative_bids_dir_takes_the_raw_dataset_from_bids_raw_or_d_raw(tmp_path, rng):
    folder = _fmriprep_20_2(tmp_path / "fmriprep", ("01",), rng)
    raw, _ = make_dataset(tmp_path / "raw")
    top = write_json(raw / "task-rest_bold.json", {"RepetitionTime": 1.5})
    for kwargs in ({"bids_raw": raw}, {"derivatives": {"raw": raw}}, {"derivatives": {"raw": raw, "f": folder}}):
        (spec,) = discover_runs(folder, **kwargs)
        assert spec.sidecars == (str(top), str(folder / "sub-01" / "func" / VOLUME_JSON.format(s="01")))
        assert spec.dataset_names == {"raw": str(raw), "fmriprep": str(folder)}
    with pytest.raises(BIDSInputError, match="--bids-raw is for a derivative BIDS_DIR"):
        discover_runs(raw, bids_raw=raw)
    with pytest.raises(BIDSInputError, match="-d raw=PATH is for a derivative BIDS_DIR"):
        discover_runs(raw, derivatives={"raw": raw})
    from flatprep.pipelines.cli.parser import parse_args
    from flatprep.pipelines.cli.run import _discover

    (spec,) = _discover(parse_args([str(folder), str(tmp_path / "out"), "participant", "--bids-raw", str(raw)]))
    assert spec.sidecars[0] == str(top)
