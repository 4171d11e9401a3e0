"""A rerun never loses a complete output: failed and grid-changing reruns keep it, option changes say what changed.

pipelines/reruns.py and the participant level (pipelines/runner.py).
"""

import csv
import shutil

import pytest

from builders import DiskFull, file_digests

from flatprep.h5 import read_run_attrs, validate_run
from flatprep.pipelines.cli.run import main

REST = ["--participant-label", "01", "--task", "rest"]


def _rows(out):
    with (out / "runs.tsv").open(newline="") as handle:
        return {row["run"]: row for row in csv.DictReader(handle, delimiter="\t")}


def _digests(root):
    """sub-01's run files, sidecars and figures."""
    return file_digests(root, ("*.h5", "*.json", "*.png"), subject="sub-01")


@pytest.fixture
def earlier(participant_out, tmp_path):
    """A copy of the participant level (2.4 mm grid, no confounds, figures) that a rerun may change."""
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    return out


def test_failed_rerun_keeps_the_earlier_output_and_says_so(sample_bids, earlier, monkeypatch, caplog):
    import flatprep.h5

    before = _digests(earlier)
    monkeypatch.setattr(flatprep.h5, "open", DiskFull(budget=4096, match="task-rest"), raising=False)
    assert main([str(sample_bids), str(earlier), "participant", "--pixel-size", "2.4", "--confounds", "motion",
                 *REST]) == 1
    assert _digests(earlier) == before  # the run file, sidecar and five figures of the earlier request
    row = _rows(earlier)["sub-01_task-rest_space-fsLR"]
    assert row["status"] == "failed" and row["error"].endswith("cannot write (No space left on device); "
                                                               "free some space and rerun")
    assert row["error"].startswith(str(earlier / "sub-01" / "func"))  # the file's own name, not the staging one
    assert row["note"] == ("the earlier output stands (made with pixel size 2.4 mm, template fsaverage, confounds "
                           "none, TR 1 s, input sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii)")
    assert row["frames_out"] not in ("", "n/a")  # the row describes the output that stands
    report = (earlier / "sub-01.html").read_text()
    assert "the earlier output stands" in report and report.count("<img") == 10  # 5 figures x 2 runs
    assert not (earlier / ".incoming").exists()
    assert "earlier output stands" in caplog.text


def test_grid_change_is_refused_without_force_and_logged_with_force(sample_bids, earlier, caplog):
    caplog.set_level("INFO")
    h5 = next(earlier.glob("sub-01/func/sub-01_task-rest_*_desc-flat_bold.h5"))
    before = _digests(earlier)
    args = [str(sample_bids), str(earlier), "participant", "--pixel-size", "4.8", *REST]
    assert main(args) == 1
    assert _digests(earlier) == before
    row = _rows(earlier)["sub-01_task-rest_space-fsLR"]
    assert row["status"] == "failed"
    assert row["error"] == (f"{h5}: made on another grid (pixel size 2.4 → 4.8 mm); pass --force to replace it, "
                            "or write to another output folder")
    assert main([*args, "--force", "--confounds", "motion"]) == 0
    row = _rows(earlier)["sub-01_task-rest_space-fsLR"]
    assert row["status"] == "redone" and row["note"] == "pixel size 2.4 → 4.8 mm; confounds none → motion"
    assert "sub-01_task-rest_space-fsLR redone" in caplog.text and "pixel size 2.4 → 4.8 mm" in caplog.text
    assert read_run_attrs(h5)[1]["pixel_size_mm"] == 4.8 and validate_run(h5) == []
    assert len(list(earlier.glob("sub-01/figures/sub-01_task-rest_*.png"))) == 5
    assert _rows(earlier)["sub-01_task-motor_space-fsLR"]["status"] == "done"  # not part of this rerun
    assert not (earlier / ".incoming").exists()


def test_old_runs_table_saying_skipped_reads_as_complete(sample_bids, tmp_path):
    out = tmp_path / "out"
    args = [str(sample_bids), str(out), "participant", "--pixel-size", "4.8", "--no-figures", *REST]
    assert main(args) == 0
    table = out / "runs.tsv"
    table.write_text(table.read_text().replace("\tdone\t", "\tskipped\t"))
    assert main([*args[:-2], "--task", "motor"]) == 0  # another run: the old row is read and rewritten
    assert {r["run"]: r["status"] for r in _rows(out).values()} == {
        "sub-01_task-rest_space-fsLR": "complete (verified)", "sub-01_task-motor_space-fsLR": "done"}


def test_abandoned_staging_is_removed_and_the_rerun_completes(sample_bids, tmp_path):
    from flatprep.pipelines.reruns import staging_dir

    out = tmp_path / "out"
    args = [str(sample_bids), str(out), "participant", "--pixel-size", "4.8", "--no-figures", *REST]
    assert main(args) == 0
    # What a SIGKILL between the workflow and the swap leaves: a whole set under the staging folder.
    label = "sub-01_task-rest_space-fsLR"
    staged = staging_dir(out, label)
    shutil.copytree(out / "sub-01", staged / "sub-01")
    h5 = next(out.glob("sub-01/func/*.h5"))
    before = h5.read_bytes()
    assert main(args) == 0
    assert not staged.exists() and not (out / ".incoming").exists()
    assert _rows(out)[label]["status"] == "complete (verified)" and h5.read_bytes() == before


def test_hcp_rerun_with_a_variant_the_release_lacks_keeps_the_msmall_outputs(tmp_path):
    from flatprep.sample import write_sample_dataset

    release, out = tmp_path / "hcp", tmp_path / "out"
    write_sample_dataset(release, n_subjects=1, duration=60.0, seed=3, layout="hcp")
    args = [str(release), str(out), "participant", "--pixel-size", "4.8", "--task", "rest"]
    assert main(args) == 0
    before = _digests(out)
    assert len([k for k in before if k.endswith(".png")]) == 5
    assert main([*args, "--hcp-registration", "MSMSulc"]) == 1
    assert _digests(out) == before
    (row,) = _rows(out).values()
    assert row["status"] == "failed" and "rfMRI_REST1_LR_Atlas.dtseries.nii: no such file" in row["error"]
    assert row["note"].startswith("the earlier output stands (made with pixel size 4.8 mm")
    assert row["note"].endswith("input rfMRI_REST1_LR_Atlas_MSMAll.dtseries.nii)")
