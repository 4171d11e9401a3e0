"""MNI volume runs through the participant level: agreement with the surface path, and bad volumes."""

import html
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from flatprep.h5 import read_run
from flatprep.pipelines.bids import discover_runs
from flatprep.pipelines.cli.run import main

FAST = ["--pixel-size", "2.4"]
VOLUME = "space-MNI152NLin6Asym_res-2"


@pytest.fixture(scope="module")
def volume_bids(tmp_path_factory):
    """One subject, rest, fsLR and MNI152NLin6Asym volumes of the same simulated signal."""
    from flatprep.sample import write_sample_dataset

    root = tmp_path_factory.mktemp("volume") / "bids"
    write_sample_dataset(root, n_subjects=1, duration=40.0, tasks=("rest",), spaces=("fsLR", "MNI152NLin6Asym"),
                         seed=3)
    return root


@pytest.fixture(scope="module")
def both_outputs(volume_bids, tmp_path_factory):
    out = tmp_path_factory.mktemp("volume_out") / "flatprep"
    assert main([str(volume_bids), str(out), "participant", *FAST]) == 0  # surfaces preferred
    assert main([str(volume_bids), str(out), "participant", *FAST, "--space", "MNI152NLin6Asym"]) == 0
    return out


def test_surfaces_are_preferred_and_volumes_found_with_their_mask(volume_bids):
    (default,) = discover_runs(volume_bids)
    assert default.space == "fsLR"
    (spec,) = discover_runs(volume_bids, space="MNI152NLin6Asym")
    assert spec.resolution == "2" and spec.label == "sub-01_task-rest_space-MNI152NLin6Asym_res-2"
    assert [Path(p).name.split("_")[-2:] for p in spec.bold] == [["desc-preproc", "bold.nii.gz"],
                                                                 ["desc-brain", "mask.nii.gz"]]
    assert spec.confounds.endswith("_desc-confounds_timeseries.tsv")


def test_volume_without_resolution_is_found_with_its_mask(volume_bids, tmp_path):
    bids = tmp_path / "bids"
    shutil.copytree(volume_bids, bids)
    func = bids / "derivatives" / "fmriprep" / "sub-01" / "func"
    for path in func.glob("*space-MNI152NLin6Asym_res-2_*"):
        path.rename(path.with_name(path.name.replace("space-MNI152NLin6Asym_res-2", "space-MNI152NLin2009cAsym")))
    (spec,) = discover_runs(bids, space="MNI152NLin2009cAsym")
    assert spec.resolution is None and spec.label == "sub-01_task-rest_space-MNI152NLin2009cAsym"
    assert [Path(p).name for p in spec.bold] == ["sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz",
                                                 "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz"]


@pytest.mark.slow
def test_volume_run_agrees_with_the_surface_run(both_outputs):
    func = both_outputs / "sub-01" / "func"
    volume = read_run(func / f"sub-01_task-rest_{VOLUME}_desc-flat_bold.h5")
    surface = read_run(func / "sub-01_task-rest_space-fsLR_den-91k_desc-flat_bold.h5")
    assert volume.frames.shape == surface.frames.shape
    a, b = volume.frames.astype(np.float32), surface.frames.astype(np.float32)
    r = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)]
    # Same signal, independent noise per space: the sample's noise (median tSNR about 67, BOLD about 60 % of
    # the variance) caps the frame correlation near 0.85-0.9; a wrong mapping gives r near 0.
    assert np.median(r) > 0.8
    sidecar = json.loads((func / f"sub-01_task-rest_{VOLUME}_desc-flat_bold.json").read_text())
    assert sidecar["VolumeSampling"]["InputSpace"] == "MNI152NLin6Asym"
    assert sidecar["VolumeSampling"]["MedianRibbonCoverage"] > 0.95
    assert any("desc-brain_mask" in uri for uri in sidecar["Sources"])
    figure = both_outputs / "sub-01" / "figures" / f"sub-01_task-rest_{VOLUME}_desc-ribbon_flatmap.png"
    assert figure.exists()
    assert "ribbon coverage" in (both_outputs / "sub-01.html").read_text().lower()


@pytest.mark.slow
def test_group_level_takes_volume_runs(volume_bids, both_outputs, tmp_path):
    out = tmp_path / "flatprep"
    shutil.copytree(both_outputs, out)
    # The same acquisition in fsLR and MNI152NLin6Asym is packed once: in the space --space picks.
    assert main([str(volume_bids), str(out), "group", "--space", "MNI152NLin6Asym"]) == 0
    manifest = (out / "shards" / "manifest.tsv").read_text()
    assert "sub-01_task-rest_space-MNI152NLin6Asym_res-2\tshard-00000_flatclips.h5" in manifest
    assert "sub-01_task-rest_space-fsLR" not in manifest


def _copy_run(source: Path, task: str, space: str = "MNI152NLin6Asym_res-2") -> dict:
    """Copy the sample volume run under another task name; returns its (bold, mask, json) paths."""
    folder = source.parent
    stem = f"sub-01_task-{task}_space-{space}"  # space may carry _res-N
    paths = {"bold": folder / f"{stem}_desc-preproc_bold.nii.gz", "json": folder / f"{stem}_desc-preproc_bold.json",
             "mask": folder / f"{stem}_desc-brain_mask.nii.gz"}
    shutil.copy(source, paths["bold"])
    shutil.copy(str(source).replace(".nii.gz", ".json"), paths["json"])
    shutil.copy(str(source).replace("preproc_bold", "brain_mask"), paths["mask"])
    return paths


@pytest.mark.slow
def test_bad_volumes_fail_alone_with_one_line(volume_bids, tmp_path):
    bids = tmp_path / "bids"
    shutil.copytree(volume_bids, bids)
    func = bids / "derivatives" / "fmriprep" / "sub-01" / "func"
    good = func / f"sub-01_task-rest_{VOLUME}_desc-preproc_bold.nii.gz"
    _copy_run(good, "wrongspace", space="T1w")
    three_d = _copy_run(good, "threed")
    image = nib.load(three_d["bold"])
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj[..., 0]), image.affine), three_d["bold"])
    other_mask = _copy_run(good, "othermask")
    nib.save(nib.Nifti1Image(np.ones((97, 115, 97), np.uint8), image.affine), other_mask["mask"])
    native = _copy_run(good, "native")
    scanner = np.diag([3.0, 3.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(nib.load(native["bold"]).dataobj), scanner), native["bold"])
    nib.save(nib.Nifti1Image(np.asarray(nib.load(native["mask"]).dataobj), scanner), native["mask"])
    _copy_run(good, "nlin2009c", space="MNI152NLin2009cAsym")  # no res- entity, as fMRIPrep often writes it
    out = tmp_path / "out"
    assert main([str(bids), str(out), "participant", *FAST]) == 1
    lines = (out / "runs.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = {row["task"]: row for row in (dict(zip(header, line.split("\t"))) for line in lines[1:])}
    assert rows["rest"]["status"] == "done" and rows["nlin2009c"]["status"] == "done"
    sidecar = out / "sub-01" / "func" / "sub-01_task-nlin2009c_space-MNI152NLin2009cAsym_desc-flat_bold.json"
    sampling = json.loads(sidecar.read_text())["VolumeSampling"]
    assert sampling["InputSpace"] == "MNI152NLin2009cAsym" and "MNI152NLin6Asym" in sampling["Note"]
    expected = {
        "wrongspace": "volume space 'T1w' is not supported; flatprep samples volumes in MNI152NLin6Asym or",
        "threed": "expected a 4D BOLD run (x, y, z, time), found shape (91, 109, 91)",
        "othermask": "brain mask of shape (97, 115, 97) does not match the BOLD grid (91, 109, 91)",
        "native": "of the MNI cortical surface lies inside this volume's field of view",
    }
    for task, message in expected.items():
        assert rows[task]["status"] == "failed", task
        assert message in rows[task]["error"] and "\n" not in rows[task]["error"], rows[task]["error"]
        assert not list(out.rglob(f"*task-{task}*.h5"))
    # The subject report lists every failure and the MNI152NLin2009cAsym note among its warnings.
    report = (out / "sub-01.html").read_text()
    assert f"<h3>Errors ({len(expected)})</h3>" in report and html.escape(sampling["Note"]) in report
