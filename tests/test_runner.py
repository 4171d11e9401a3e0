"""The runner: shared output folders (locks, merged summaries, per-job work folders) and the TR rule end to end."""

import csv
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flatprep.h5 import validate_run
from flatprep.pipelines.cli.run import main
from flatprep.pipelines.runner import RunResult, job_work_dir, remove_empty_work, write_summaries

from builders import add_gifti_run, make_dataset, smooth_bold, write_dtseries, write_json

FAST = ["--pixel-size", "4.8", "--no-figures"]


def _rows(out: Path) -> dict:
    with (out / "runs.tsv").open(newline="") as handle:
        return {row["run"]: row for row in csv.DictReader(handle, delimiter="\t")}


def _write_many(out, job, n):
    for index in range(n):
        label = f"sub-{job}x{index}_task-rest_space-fsLR"
        write_summaries([RunResult(label, {"subject": f"{job}x{index}", "task": "rest", "space": "fsLR"}, "done")],
                        str(out))


def test_concurrent_summary_writers_lose_no_rows(tmp_path):
    context = multiprocessing.get_context("fork")
    jobs = [context.Process(target=_write_many, args=(tmp_path, job, 8)) for job in range(4)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
    assert [job.exitcode for job in jobs] == [0] * 4
    rows = _rows(tmp_path)
    assert len(rows) == 32 and {r["status"] for r in rows.values()} == {"done"}
    assert len(list(tmp_path.glob("sub-*.html"))) == 32


def _two_jobs(sample_bids, out, first, second) -> list[str]:
    """Run two participant jobs on ``out`` at once (``--participant-label first`` / ``second``); their logs."""
    jobs = [subprocess.Popen([sys.executable, "-m", "flatprep.pipelines.cli.run", str(sample_bids), str(out),
                              "participant", *FAST, "--participant-label", label],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for label in (first, second)]
    logs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], logs
    return logs


@pytest.mark.slow
def test_jobs_with_different_labels_share_one_output_folder(sample_bids, tmp_path):
    out = tmp_path / "shared"
    _two_jobs(sample_bids, out, "01", "02")
    rows = _rows(out)
    assert sorted(rows) == ["sub-01_task-motor_space-fsLR", "sub-01_task-rest_space-fsLR",
                            "sub-02_task-motor_space-fsLR", "sub-02_task-rest_space-fsLR"]
    assert {r["status"] for r in rows.values()} == {"done"}
    assert (out / "sub-01.html").exists() and (out / "sub-02.html").exists()
    assert all(validate_run(p) == [] for p in out.rglob("*_desc-flat_bold.h5"))
    assert not (out / ".work").exists()  # each job removed its own work folder


@pytest.mark.slow
def test_jobs_on_the_same_runs_do_each_run_once(sample_bids, tmp_path):
    out = tmp_path / "same"
    logs = _two_jobs(sample_bids, out, "01", "01")
    for label in ("sub-01_task-motor_space-fsLR", "sub-01_task-rest_space-fsLR"):
        statuses = sorted(status for log in logs for status in ("done", "complete (verified)")
                          if f"{label} {status}" in log)
        assert statuses == ["complete (verified)", "done"], logs  # the second job waited for the run, then found it complete
    assert {r["status"] for r in _rows(out).values()} <= {"done", "complete (verified)"} and len(_rows(out)) == 2
    assert all(validate_run(p) == [] for p in out.rglob("*_desc-flat_bold.h5"))


def test_each_job_has_its_own_work_folder_and_leaves_the_others(tmp_path):
    first, second = job_work_dir(tmp_path / ".work"), job_work_dir(tmp_path / ".work")
    assert first != second and first.parent == second.parent == tmp_path / ".work"
    first.mkdir(parents=True)
    (second / "run").mkdir(parents=True)
    remove_empty_work(first)
    assert not first.exists() and second.exists()  # the other job's folder (and so the parent) stay
    (second / "run").rmdir()
    remove_empty_work(second)
    assert not (tmp_path / ".work").exists()


def test_run_without_any_sidecar_works_from_its_header_in_ms(tmp_path, caplog):
    root, fmriprep = make_dataset(tmp_path / "bids")
    func = Path(fmriprep) / "sub-01" / "func"
    # A SeriesAxis step written in milliseconds, and no sidecar anywhere.
    write_dtseries(func / "sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii", 40, 2000.0)
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", *FAST]) == 0, caplog.text
    (row,) = _rows(out).values()
    assert float(row["tr_in"]) == 2.0 and int(row["frames_in"]) == 40 and int(row["frames_out"]) == 79


def test_tr_in_overrides_sidecars_and_headers_for_the_whole_command(tmp_path):
    root, fmriprep = make_dataset(tmp_path / "bids")
    add_gifti_run(fmriprep, "01", data=smooth_bold(40, rng=np.random.default_rng(0)), tr=12.0)
    out = tmp_path / "out"
    assert main([str(root), str(out), "participant", *FAST]) == 1
    (row,) = _rows(out).values()
    assert row["status"] == "failed" and row["error"].endswith(
        "sub-01_task-rest_hemi-L_space-fsaverage5_bold.json: RepetitionTime 12 s is outside the plausible range "
        "0.1-10 s; if it is right, give it explicitly (flatprep --tr-in SECONDS)")
    assert main([str(root), str(out), "participant", *FAST, "--tr-in", "12", "--tr", "12"]) == 0
    (row,) = _rows(out).values()
    assert row["status"] == "done" and float(row["tr_in"]) == 12.0



def test_output_folder_that_cannot_be_written_exits_2_with_one_line(tmp_path, monkeypatch, caplog):
    from flatprep.pipelines import outputs

    root, fmriprep = make_dataset(tmp_path / "bids")
    add_gifti_run(fmriprep, "01", data=smooth_bold(40, rng=np.random.default_rng(0)))
    out = tmp_path / "out"

    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(outputs, "write_text", refuse)
    assert main([str(root), str(out), "participant", *FAST]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"{out / '.bidsignore'}: cannot write the output folder (Permission denied)"]
    assert "Traceback" not in caplog.text


def test_completeness_rehashes_only_a_run_file_that_is_not_the_one_just_written(tmp_path, monkeypatch):
    import flatprep.h5
    from builders import write_flat_run

    from flatprep.pipelines.outputs import file_stamp
    from flatprep.pipelines.runner import completeness_problems

    run = tmp_path / "sub-01_task-rest_desc-flat_bold.h5"
    write_flat_run(run)
    write_json(run.with_suffix(".json"), {})
    hashed = []
    real = flatprep.h5.content_sha256
    monkeypatch.setattr(flatprep.h5, "content_sha256", lambda datasets: hashed.append(1) or real(datasets))
    stamp = file_stamp(run)
    assert completeness_problems(run, "x", written=stamp) == [] and not hashed
    write_flat_run(run, rng=np.random.default_rng(1))  # rewritten since (new inode): verified in full
    assert completeness_problems(run, "x", written=stamp) == [] and len(hashed) == 1
    assert completeness_problems(run, "x") == [] and len(hashed) == 2
    assert completeness_problems(run, "y", written=file_stamp(run)) == [f"{run}: made from other inputs or options"]
