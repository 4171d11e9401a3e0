"""Reruns trust only verified files; faults while writing end in one line naming the file.

Participant level (pipelines/runner.py, interfaces.py) and group level
(pipelines/group.py) after deleted, corrupted or half-written outputs, and
with ENOSPC injected into the write path.
"""

import csv
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from builders import DiskFull, flip_bytes_in_frames

from flatprep.atomic import _host, temporary_files
from flatprep.cache import file_digest
from flatprep.h5 import open_h5, validate_run
from flatprep.pipelines.cli.run import main
from flatprep.validate import validate_output

COARSE = ["--pixel-size", "4.8"]


def _rows(out):
    with (out / "runs.tsv").open(newline="") as handle:
        return {row["run"]: row for row in csv.DictReader(handle, delimiter="\t")}


def _status(out):
    return {label: row["status"] for label, row in _rows(out).items()}


def _one(out, pattern):
    (path,) = out.rglob(pattern)
    return path


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and p.suffix in (".h5", ".json", ".png") and ".work" not in p.parts}


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --------------------------------------------------------------------------- participant level


def test_deleted_run_file_is_redone_even_when_the_workflow_is_cached(sample_bids, tmp_path):
    out = tmp_path / "out"
    args = [str(sample_bids), str(out), "participant", *COARSE, "--no-figures", "--keep-work",
            "--participant-label", "01", "--task", "rest"]
    assert main(args) == 0
    h5 = _one(out, "*_desc-flat_bold.h5")
    before = h5.read_bytes()
    # The frames go from the projection straight into the run file: nothing in the kept work folder holds them.
    with open_h5(h5) as handle:
        frames_bytes = handle["frames"].nbytes
    work = [p for p in (out / ".work").rglob("*") if p.is_file()]
    assert work and max(p.stat().st_size for p in work) < frames_bytes / 4
    h5.unlink()
    # Debris of a killed write, beside the file: removed by the next run.
    debris = h5.parent / f".{h5.name}.{_dead_pid()}-{_host()}.k1ll3d_x.tmp"
    debris.write_bytes(b"partial")
    assert main(args) == 0
    assert list(_status(out).values()) == ["done"]
    assert h5.read_bytes() == before and validate_run(h5) == []
    assert not debris.exists() and not [p for p in temporary_files(out) if ".work" not in p.parts]


def test_corrupt_run_file_is_redone_on_rerun(sample_bids, participant_out, tmp_path):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    reference = _digests(participant_out)
    h5 = _one(out, "sub-02_task-rest*_desc-flat_bold.h5")
    flip_bytes_in_frames(h5)
    assert "content checksum mismatch" in validate_run(h5)[0]
    assert main([str(sample_bids), str(out), "participant", "--pixel-size", "2.4", "--no-figures"]) == 0
    status = _status(out)
    assert [label for label, s in status.items() if s == "done"] == ["sub-02_task-rest_space-fsLR"]
    assert _rows(out)["sub-02_task-rest_space-fsLR"]["note"] == (
        f"the earlier output was not complete: {h5}: content checksum mismatch (its data changed after it was "
        "written, or the file is corrupt); rerun the participant level for this run")
    assert _digests(out) == reference  # the same bytes as the first time


def test_missing_figures_are_redone_on_rerun(sample_bids, participant_out, tmp_path):
    """What SIGKILL during the QC figures leaves: the run file and 1 of its 5 figures."""
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    reference = _digests(participant_out)
    figures = sorted(out.glob("sub-01/figures/sub-01_task-motor_*.png"))
    assert len(figures) == 5  # no coverage map: every valid pixel has signal
    for path in figures[1:]:
        path.unlink()
    assert main([str(sample_bids), str(out), "participant", "--pixel-size", "2.4",
                 "--participant-label", "01"]) == 0
    assert _status(out)["sub-01_task-motor_space-fsLR"] == "done"
    assert _status(out)["sub-01_task-rest_space-fsLR"] == "complete (verified)"
    assert all(path.exists() for path in figures)
    h5_and_json = {k: v for k, v in reference.items() if not k.endswith(".png")}
    assert {k: v for k, v in _digests(out).items() if not k.endswith(".png")} == h5_and_json


def _fill_disk_while_writing_figure(monkeypatch):
    import builtins

    import flatprep.render

    disk = DiskFull(match="desc-tsnr")

    def full(file, mode="r", *args, **kwargs):
        return (disk if "task-rest" in str(file) else builtins.open)(file, mode, *args, **kwargs)

    monkeypatch.setattr(flatprep.render, "open", full, raising=False)
    return "desc-tsnr_flatmap.png"


def _fill_disk_while_writing_run(monkeypatch):
    import flatprep.h5

    monkeypatch.setattr(flatprep.h5, "open", DiskFull(budget=4096, match="task-rest"), raising=False)
    return "desc-flat_bold.h5"


@pytest.mark.parametrize("fill", [_fill_disk_while_writing_figure, _fill_disk_while_writing_run],
                         ids=["figure", "run-file"])
def test_disk_full_fails_that_run_with_one_line_and_the_others_finish(sample_bids, tmp_path, monkeypatch, fill):
    target = fill(monkeypatch)
    out = tmp_path / "out"
    assert main([str(sample_bids), str(out), "participant", *COARSE, "--participant-label", "01"]) == 1
    rows = _rows(out)
    rest, motor = rows["sub-01_task-rest_space-fsLR"], rows["sub-01_task-motor_space-fsLR"]
    assert rest["status"] == "failed" and motor["status"] == "done"
    assert rest["error"].startswith(str(out / "sub-01")) and rest["error"].split(":")[0].endswith(target)
    assert rest["error"].endswith(": cannot write (No space left on device); free some space and rerun")
    # Nothing of the failed run is left: no run file, no orphan sidecar, no figure, no temporary.
    # The work folder keeps the crash file; lock files stay by design (flatprep.locks).
    assert not [p for p in out.rglob("*task-rest*") if not {".work", ".locks"} & set(p.parts)]
    assert not temporary_files(out / "sub-01")
    assert len(list(out.glob("sub-01/figures/*task-motor*.png"))) == 5
    assert validate_run(_one(out, "*task-motor*_desc-flat_bold.h5")) == []


# --------------------------------------------------------------------------- group level


def _group(sample_bids, out, *extra):
    return main([str(sample_bids), str(out), "group", "--shard-size", "0.004", "--split-ratios", "0.5", "0.5", "0",
                 "--no-figures", *extra])


def test_group_refuses_a_corrupt_run_file_and_validate_reports_it(sample_bids, participant_out, tmp_path, caplog):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    h5 = _one(out, "sub-01_task-motor*_desc-flat_bold.h5")
    flip_bytes_in_frames(h5)
    assert _group(sample_bids, out) == 1
    assert f"refused: {h5}: content checksum mismatch" in caplog.text
    manifest = (out / "shards" / "manifest.tsv").read_text()
    assert "sub-01_task-motor" not in manifest and manifest.count("\n") == 4  # header + the 3 good runs
    problems = validate_output(out)
    assert any(p.startswith(f"{h5}: content checksum mismatch") for p in problems)
    assert any(p.startswith(f"{h5}: per-run file present but not listed") for p in problems)


def test_group_rerun_rewrites_a_corrupt_shard_and_records_its_new_checksum(sample_bids, participant_out, tmp_path,
                                                                           caplog):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    assert _group(sample_bids, out) == 0
    shard = sorted((out / "shards").glob("shard-*.h5"))[0]
    good = file_digest(shard)
    flip_bytes_in_frames(shard)
    assert any(p.startswith(f"{shard}: sha256 differs from manifest.json") for p in validate_output(out))
    assert _group(sample_bids, out) == 0  # no --force: the rerun must not keep the corrupt file
    assert (f"{shard}: sha256 differs from the one recorded when it was written (the file changed or is corrupt); "
            "rewriting it") in caplog.text
    recorded = {s["file"]: s["sha256"] for s in json.loads((out / "shards" / "manifest.json").read_text())["shards"]}
    assert recorded[shard.name] == file_digest(shard) == good
    assert validate_output(out) == []


def test_disk_full_while_writing_a_shard_leaves_no_manifest_and_no_temporary(sample_bids, participant_out, tmp_path,
                                                                             monkeypatch, caplog):
    import flatprep.h5

    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    monkeypatch.setattr(flatprep.h5, "open", DiskFull(budget=0, match="shard-00001"), raising=False)
    assert _group(sample_bids, out) == 1
    shard = out / "shards" / "shard-00001_flatclips.h5"
    assert f"{shard}: cannot write (No space left on device); free some space and rerun" in caplog.text
    assert not shard.exists() and not (out / "shards" / "manifest.json").exists()
    assert not temporary_files(out)
    assert "Traceback" not in caplog.text
    journal = json.loads((out / "shards" / "journal.json").read_text())
    assert f"{out / 'shards' / 'journal.json'}: a group level started writing shards and did not finish" in \
        "\n".join(validate_output(out))
    finished = sorted(p.name for p in (out / "shards").glob("shard-*.h5"))
    assert sorted(journal) == finished and "shard-00000_flatclips.h5" in finished
    monkeypatch.undo()
    caplog.clear()
    caplog.set_level("INFO")
    assert _group(sample_bids, out) == 0  # the rerun verifies and keeps the finished shards, writes the lost one
    for name in finished:
        assert f"{name} kept" in caplog.text and file_digest(out / "shards" / name) == journal[name]
    assert f"{shard.name} written" in caplog.text
    assert not (out / "shards" / "journal.json").exists() and validate_output(out) == []


def test_sigkill_during_the_figures_then_rerun_redoes_them(sample_bids, tmp_path):
    import signal
    import time

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "flatprep.pipelines.cli.run", str(sample_bids), str(out), "participant",
               *COARSE, "--participant-label", "01", "--task", "rest"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # The run is written in its staging folder and swapped in whole (pipelines/reruns.py).
    staged = out / ".incoming" / "sub-01_task-rest_space-fsLR" / "sub-01" / "figures"
    while time.time() < deadline and not list(staged.glob("*.png")) and process.poll() is None:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    left = list(staged.glob("*.png"))
    if not 1 <= len(left) < 5:
        pytest.skip(f"the kill landed outside the figures ({len(left)} of 5 written)")
    assert not list(out.glob("sub-01/figures/*.png")) and not list(out.glob("sub-01/func/*"))  # nothing swapped in
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert not (out / ".incoming").exists()
    assert list(_status(out).values()) == ["done"]
    assert len(list(out.glob("sub-01/figures/*.png"))) == 5
    assert not [p for p in temporary_files(out) if ".work" not in p.parts]
