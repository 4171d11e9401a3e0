"""SIGINT and SIGTERM stop a command promptly and cleanly; a rerun completes.

Each test starts the command as a process, waits for an observable event in
its log (a run or shard finished), sends the signal, and checks the exit
status, runs.tsv, that no partial file is left under a final name, and that
the same command then completes.
"""

import csv
import shutil
import signal
import subprocess
import sys

import pytest

from builders import file_digests

from flatprep.atomic import temporary_files
from flatprep.h5 import validate_run
from flatprep.validate import validate_output

RUN = [sys.executable, "-m", "flatprep.pipelines.cli.run"]


def _rows(out):
    with (out / "runs.tsv").open(newline="") as handle:
        return {row["run"]: row for row in csv.DictReader(handle, delimiter="\t")}




def _signal_after(command, marker: str, signum) -> tuple[int, str]:
    """Run ``command``, send ``signum`` once a stderr line contains ``marker``; return (exit status, stderr)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if marker in line:
            process.send_signal(signum)
            break
    lines += process.stderr.read().splitlines(keepends=True)
    return process.wait(timeout=120), "".join(lines)


def _no_partial_files(out):
    assert not (out / ".incoming").exists()
    assert not [p for p in temporary_files(out) if ".work" not in p.parts]
    for path in out.rglob("*_desc-flat_bold.h5"):
        assert validate_run(path) == []


@pytest.mark.parametrize("signum, code, extra", [(signal.SIGINT, 130, []), (signal.SIGTERM, 143, ["--nprocs", "2"])],
                         ids=["sigint-in-process", "sigterm-dask"])
def test_participant_stops_marks_unfinished_runs_and_a_rerun_completes(sample_bids, participant_out, tmp_path,
                                                                       signum, code, extra):
    out = tmp_path / "out"
    command = [*RUN, str(sample_bids), str(out), "participant", "--pixel-size", "2.4", "--no-figures", *extra]
    status, log = _signal_after(command, "[1/4]", signum)
    assert status == code, log
    name = signal.Signals(signum).name
    assert log.splitlines()[-1].endswith(f"ERROR interrupted by {name}: stopped; rerun the same command to finish "
                                         "the interrupted runs (finished runs are kept)"), log
    assert "Traceback" not in log
    statuses = [row["status"] for row in _rows(out).values()]
    assert len(statuses) == 4 and "interrupted" in statuses and set(statuses) <= {"done", "interrupted"}
    # A Dask worker may finish the swap of its run as the signal lands: any run file present is whole (below).
    assert {row["error"] for row in _rows(out).values() if row["status"] == "interrupted"} == {f"stopped by {name}"}
    (counts,) = [line for line in log.splitlines() if "participant level:" in line]
    assert counts.endswith(f"participant level: {statuses.count('done')} done, 0 redone, 0 complete (verified), "
                           f"0 failed, {statuses.count('interrupted')} interrupted")
    _no_partial_files(out)
    if signum == signal.SIGINT:  # in-process: the abandoned run's Nipype work folder went with it
        assert not (out / ".work").exists()
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {row["status"] for row in _rows(out).values()} <= {"done", "complete (verified)"}
    assert file_digests(out) == file_digests(participant_out)  # run files and sidecars (no figures here)


def test_group_stops_without_a_manifest_and_a_rerun_completes(sample_bids, participant_out, tmp_path):
    out = tmp_path / "flatprep"
    shutil.copytree(participant_out, out)
    command = [*RUN, str(sample_bids), str(out), "group", "--shard-size", "0.004", "--split-ratios", "0.5", "0.5",
               "0", "--no-figures"]
    status, log = _signal_after(command, "[1/", signal.SIGTERM)
    assert status == 143, log
    assert "interrupted by SIGTERM: stopped; no new manifest written" in log.splitlines()[-1] and "Traceback" not in log
    assert not (out / "shards" / "manifest.json").exists()
    assert not temporary_files(out)
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "complete (verified) and kept" in done.stderr and validate_output(out) == []


def test_a_signal_outside_any_run_ends_with_one_line_and_its_exit_status(caplog):
    import os

    from flatprep.pipelines.cli.common import command

    @command
    def main(argv=None):
        os.kill(os.getpid(), signal.SIGTERM)  # as scancel does
        raise AssertionError("not stopped")

    assert main([]) == 143
    assert caplog.messages == ["interrupted by SIGTERM: stopped; nothing partial was kept"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers of before are back


def test_train_saves_a_checkpoint_on_sigterm_and_resume_gives_the_same_losses(shards, tmp_path):
    import json

    def command(out_dir):
        settings = ["model_args.tubelet=4", "batch_size=2", "num_workers=0", "log_every=1", "eval_batches=1",
                    "steps=8", "save_every=0", "eval_every=0"]
        return [sys.executable, "-m", "flatprep.pipelines.cli.train", "--data", str(shards), "--out-dir",
                str(out_dir), *[a for s in settings for a in ("--set", s)]]

    def losses(out_dir):
        records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in records if "loss" in r}

    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    ending = whole.stderr.splitlines()[-3:]
    assert ending[0].split(" INFO ")[1].startswith("trained to step 8 of 8: loss ")
    assert ending[1].endswith(f"checkpoint: {tmp_path / 'whole' / 'checkpoints' / 'step-000008'}")
    stopped = tmp_path / "stopped"
    status, log = _signal_after(command(stopped), "step 3/8", signal.SIGTERM)
    assert status == 143, log
    (saved,) = (stopped / "checkpoints").glob("step-*")
    assert 3 <= int(saved.name.split("-")[1]) < 8  # the last finished step, saved although save_every=0
    assert log.splitlines()[-1].endswith(f"interrupted by SIGTERM: stopped; checkpoint of the last finished step in "
                                         f"{saved}; continue with: flatprep-train --data {shards} --out-dir {stopped} "
                                         "--set model_args.tubelet=4 --set batch_size=2 --set num_workers=0 "
                                         "--set log_every=1 --set eval_batches=1 --set steps=8 --set save_every=0 "
                                         "--set eval_every=0 --resume")
    resumed = subprocess.run([*command(stopped), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert losses(stopped) == losses(tmp_path / "whole")
    again = subprocess.run([*command(stopped), "--resume"], capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr.splitlines()[-1].endswith(
        f"nothing to do: {stopped / 'checkpoints' / 'step-000008'} is at step 8, the configured end "
        "(raise it with --set steps=N to train further)")
