"""The participant level end to end on the sample subjects."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from flatprep.atomic import temporary_files
from flatprep.h5 import read_run, validate_run
from flatprep.pipelines.cli.run import main

from builders import file_digests

GOLDEN = Path(__file__).parent / "data" / "participant_outputs.txt"
FAST = ["--pixel-size", "2.4"]


def _outputs(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and ".work" not in p.parts and ".locks" not in p.parts)


def _statuses(root: Path) -> list[str]:
    lines = (root / "runs.tsv").read_text().splitlines()
    column = lines[0].split("\t").index("status")
    return sorted(line.split("\t")[column] for line in lines[1:])


def test_outputs_match_the_golden_list(participant_out):
    assert _outputs(participant_out) == GOLDEN.read_text().split()


def test_run_files_hold_the_flat_frames_and_their_provenance(participant_out, sample_bids):
    files = sorted(participant_out.rglob("*_desc-flat_bold.h5"))
    assert len(files) == 4
    run = read_run(files[0])
    assert run.frames.dtype == np.float16 and run.mask.shape == (112, 288)
    assert run.frames.shape[1] == run.mask.sum() and run.frames.shape[0] >= 16
    assert run.attrs["tr_out"] == 1.0 and run.attrs["tr_in"] in (0.8, 1.5, 2.0)
    # z-scored per vertex, then averaged by the operator: close to unit scale
    assert 0.5 < float(np.std(run.frames.astype(np.float32))) < 1.2
    assert run.grid["space"] == "fsLR" and run.grid["pixel_size_mm"] == 2.4
    for source in run.attrs["sources"]:
        assert source["sha256"] == hashlib.sha256(Path(source["path"]).read_bytes()).hexdigest()
        assert source["uri"].startswith(("bids:raw:", "bids:fmriprep:"))
    assert run.attrs["entities"]["subject"] in ("01", "02")


def test_derivative_is_indexed_by_pybids(participant_out):
    from bids import BIDSLayout

    layout = BIDSLayout(str(participant_out), validate=False, is_derivative=True)
    found = layout.get(desc="flat", extension=".h5", return_type="object")
    assert len(found) == 4
    assert {f.entities["subject"] for f in found} == {"01", "02"}
    assert {f.entities["task"] for f in found} == {"rest", "motor"}
    description = (participant_out / "dataset_description.json").read_text()
    assert '"DatasetType": "derivative"' in description and "SourceDatasets" in description
    assert "*.h5" in (participant_out / ".bidsignore").read_text()


def test_runs_table_and_reports(participant_out):
    lines = (participant_out / "runs.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    for row in rows:
        assert float(row["tr_out"]) == 1.0 and int(row["frames_out"]) >= 16
        assert int(row["zero_variance_vertices"]) == 0  # the medial wall is not counted
        assert float(row["tsnr_median"]) > 1
    # FD over the kept volumes, from the confounds table, by the rule the group level's --exclude applies
    from flatprep.exclusion import motion_metrics
    from flatprep.h5 import read_run_attrs

    for row in rows:
        attrs, _ = read_run_attrs(participant_out / row["out_file"])
        expected, _ = motion_metrics(attrs["sources"], attrs["n_dropped"])
        assert 0 < float(row["mean_fd"]) <= float(row["max_fd"])
        assert (float(row["mean_fd"]), float(row["max_fd"])) == (expected["mean_fd"], expected["max_fd"])
    report = (participant_out / "sub-01.html").read_text()
    assert report.count("<img") == 10  # 5 figures x 2 runs (no coverage map: every valid pixel has signal)
    assert "desc-coverage" not in report
    for src in __import__("re").findall(r"src='([^']+)'", report):
        assert (participant_out / src).exists()


def test_rerun_verifies_complete_runs_and_force_redoes_them(sample_bids, participant_out, tmp_path):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    before = file_digests(out)
    assert main([str(sample_bids), str(out), "participant", *FAST, "--no-figures"]) == 0
    assert _statuses(out) == ["complete (verified)"] * 4
    assert file_digests(out) == before
    assert main([str(sample_bids), str(out), "participant", *FAST, "--force",
                 "--participant-label", "sub-01", "--task", "rest"]) == 0
    assert _statuses(out) == ["complete (verified)"] * 3 + ["redone"]
    assert file_digests(out) == before  # same inputs and options: same bytes


def test_changed_options_redo_the_run(sample_bids, tmp_path):
    out = tmp_path / "out"
    args = [str(sample_bids), str(out), "participant", "--pixel-size", "4.8", "--no-figures",
            "--participant-label", "01", "--task", "rest"]
    assert main(args) == 0
    assert main(args) == 0
    assert _statuses(out) == ["complete (verified)"]
    assert main([*args, "--confounds", "motion"]) == 0
    assert _statuses(out) == ["redone"]


def test_two_dask_workers_give_the_same_files(sample_bids, participant_out, tmp_path):
    out = tmp_path / "dask"
    assert main([str(sample_bids), str(out), "participant", *FAST, "--nprocs", "2", "--no-figures"]) == 0
    reference = file_digests(participant_out, ("*.h5",))
    assert file_digests(out, ("*.h5",)) == reference


def test_sigkill_mid_run_then_rerun_gives_identical_files(sample_bids, participant_out, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "flatprep.pipelines.cli.run", str(sample_bids), str(out), "participant",
               *FAST, "--no-figures"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The event: the first run file appears. The process is frozen at once (SIGSTOP), so however fast the
    # machine, the kill lands before the last run, wherever the next one is (often inside its write).
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not list(out.rglob("*_desc-flat_bold.h5")):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGSTOP)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = list(out.rglob("*_desc-flat_bold.h5"))
    assert 1 <= len(written) < 4, "the kill should land between the first and the last run"
    # A run file being written when the kill lands is only a temporary (hidden, *.tmp): every file under a
    # run's name is whole.
    assert not [p for p in out.rglob(".*.h5*") if p not in temporary_files(out)]
    for path in written:
        assert validate_run(path) == []
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert file_digests(out) == file_digests(participant_out)
    assert not temporary_files(out, skip=(".work",))  # the killed writer's temporary, if any, is gone
