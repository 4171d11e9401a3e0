"""flatprep on real schedulers: a Dask cluster by address and a single-node SLURM.

Outputs must be byte-identical to the in-process run (``participant_out``);
a dead worker gives a failed run with one line, no partial file, and a rerun
completes it. Everything listens on 127.0.0.1.
"""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flatprep.h5 import validate_run
from flatprep.pipelines.cli.run import main

from builders import file_digests
from clusters import SlurmNode, dask_cluster, exit_on_task, slurm_unavailable

FAST = ["--pixel-size", "2.4"]


def _rows(root: Path) -> list[dict]:
    with (root / "runs.tsv").open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _leftovers(root: Path) -> list[Path]:
    """Temporaries of interrupted writes (flatprep.atomic names them .<target>.*)."""
    return [p for p in root.rglob(".*") if p.is_file() and p.name not in (".bidsignore",)
            and ".work" not in p.parts]


# --------------------------------------------------------------------------- options


def test_slurm_options_are_read_and_checked(tmp_path, capsys):
    from flatprep.pipelines.cli.parser import parse_args

    base = [str(tmp_path), str(tmp_path / "derivatives" / "flatprep"), "participant", "--scheduler", "slurm"]
    args = parse_args([*base, "--slurm-partition", "gpu", "--slurm-walltime", "1-02:00:00", "--slurm-memory", "6GB"])
    assert (args.slurm_queue, args.slurm_walltime, args.slurm_memory) == ("gpu", "1-02:00:00", "6GB")
    assert parse_args([*base, "--slurm-queue", "short"]).slurm_queue == "short"
    for option, value, message in [("--slurm-memory", "lots", "a memory size such as 4GB"),
                                   ("--slurm-walltime", "2h", "a SLURM time such as 01:30:00")]:
        with pytest.raises(SystemExit) as exc:
            parse_args([*base, option, value])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"{option} must be {message}" in err and f"got {value!r}" in err


# --------------------------------------------------------------------------- Dask by address


@pytest.fixture(scope="module")
def dask_address():
    with dask_cluster(2) as (address, _):
        yield address


def test_a_job_missing_from_one_queue_listing_is_not_taken_for_ended(monkeypatch):
    """Only a job that SLURM no longer lists and no longer runs has ended. A replacement submitted while
    squeue answers, or one that squeue lists late, stays (it used to be reported as an ended job
    "state PENDING", which then stood in for the real reason a run failed)."""
    from flatprep.pipelines import cluster as slurm_jobs

    class Job:
        def __init__(self, job_id):
            self.job_id = job_id

    class Cluster:
        workers = {"w0": Job("7"), "w1": Job("8")}
        worker_spec = {"w0": None, "w1": None}
        scaled = []

        def scale(self, jobs):
            self.scaled.append(jobs)

    class Client:
        def scheduler_info(self):
            return {"workers": {"a": {"name": "w0"}, "b": {"name": "w1"}}}

    states = {"7": "JobState=OUT_OF_MEMORY Reason=OutOfMemory", "8": "JobState=PENDING Reason=None",
              "9": "JobState=PENDING Reason=None"}

    def call(command):
        if command[0] == "squeue":  # job 7 ended; 8 is listed late; 9 is submitted while squeue runs
            cluster.workers["w0-replacement"] = Job("9")
            return ""
        return states[command[-1]]

    cluster = Cluster()
    monkeypatch.setattr(slurm_jobs, "_call", call)
    jobs = slurm_jobs.SlurmJobs(cluster, Client())
    assert jobs.check() == ""
    assert list(jobs.ended) == ["7"] and jobs.ended["7"].startswith("SLURM job 7 state OUT_OF_MEMORY")
    assert set(cluster.workers) == {"w1", "w0-replacement"} and cluster.scaled == [2]
    assert jobs.explain("w0") == jobs.ended["7"]


def test_dask_scheduler_by_address_gives_the_same_bytes(dask_address, sample_bids, participant_out, tmp_path):
    out = tmp_path / "address"
    assert main([str(sample_bids), str(out), "participant", *FAST, "--no-figures",
                 "--scheduler", dask_address]) == 0
    assert {r["status"] for r in _rows(out)} == {"done"}
    assert file_digests(out) == file_digests(participant_out)
    # The group level on the same cluster writes the shards an in-process group level writes.
    reference = tmp_path / "reference"
    shutil.copytree(participant_out, reference)
    group = ["group", "--shard-size", "0.004"]
    assert main([str(sample_bids), str(reference), *group]) == 0
    assert main([str(sample_bids), str(out), *group, "--scheduler", dask_address]) == 0
    shards = file_digests(out / "shards", ("*.h5", "*.tsv", "*.json"))
    assert len(shards) >= 3 and shards == file_digests(reference / "shards", ("*.h5", "*.tsv", "*.json"))


def _runs_in_progress(out: Path) -> set[str]:
    """Labels of the runs whose Nipype work folder exists (made at a run's start, removed at its end)."""
    work = out / ".work"
    return {p.name for pattern in ("sub-*", "*/sub-*") for p in work.glob(pattern) if p.is_dir()}


def _run_and_kill_a_worker(command: list[str], out: Path, worker: subprocess.Popen) -> subprocess.CompletedProcess:
    """Start the participant level, SIGKILL ``worker`` while both workers run a task, wait for the end."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(_runs_in_progress(out)) >= 2:  # each worker has one thread: both are inside a run
            break
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    output, _ = process.communicate(timeout=180)
    return subprocess.CompletedProcess(command, process.returncode, output)


@pytest.mark.slow
def test_worker_killed_mid_run_is_reported_and_a_rerun_completes(sample_bids, participant_out, tmp_path):
    out = tmp_path / "killed"
    # allowed-failures 0: the scheduler gives up on a task at the first dead worker, so the failure path shows.
    with dask_cluster(2, env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}) as (address, workers):
        command = [sys.executable, "-m", "flatprep.pipelines.cli.run", str(sample_bids), str(out), "participant",
                   *FAST, "--no-figures", "--participant-label", "01", "--scheduler", address]
        killed = _run_and_kill_a_worker(command, out, workers[0])
        assert killed.returncode == 1, killed.stdout
        failed = [r for r in _rows(out) if r["status"] == "failed"]
        assert len(failed) == 1  # the run it was running; the other worker finished its own
        for row in failed:
            assert "its Dask worker died while running it (1 try)" in row["error"]
            assert f"FAILED {row['run']}: its Dask worker died" in killed.stdout
            assert not (out / row["out_file"]).exists()
        assert _leftovers(out) == []
        for path in out.rglob("*_desc-flat_bold.h5"):
            assert validate_run(path) == []
        assert main(command[3:]) == 0  # the rerun, in this process
    assert sorted(r["status"] for r in _rows(out)) == ["complete (verified)", "done"]
    assert file_digests(out, subject="sub-01") == file_digests(participant_out, subject="sub-01")


def test_worker_dead_while_writing_a_shard_fails_that_shard_and_a_rerun_completes(sample_bids, participant_out,
                                                                                  tmp_path):
    from dask.distributed import Client

    reference, out = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(participant_out, reference)
    shutil.copytree(participant_out, out)
    group = ["group", "--shard-size", "0.004"]
    assert main([str(sample_bids), str(reference), *group]) == 0
    # allowed-failures 0: the scheduler gives up on a task at the first dead worker, so the failure path shows.
    with dask_cluster(2, env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}) as (address, _):
        with Client(address, timeout=60) as client:
            client.register_plugin(exit_on_task("write-shard-00001_flatclips.h5"), name="exit-on-shard-1")
        command = [sys.executable, "-m", "flatprep.pipelines.cli.run", str(sample_bids), str(out), *group,
                   "--scheduler", address]
        killed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = killed.stdout + killed.stderr
    assert killed.returncode == 1, output
    assert "Traceback" not in output
    failed = re.findall(r"(shard-\d+_flatclips\.h5) failed: (.*)", output)
    assert "shard-00001_flatclips.h5" in dict(failed)
    for _, reason in failed:  # the dead worker's own task, and any queued on it
        assert reason.startswith("its Dask worker died while running it (1 try)")
    assert not (out / "shards" / "manifest.json").exists() and not (out / "shards" / "manifest.tsv").exists()
    assert _leftovers(out) == []
    written = set(re.findall(r"(shard-\d+_flatclips\.h5) written", output))
    assert set(json.loads((out / "shards" / "journal.json").read_text())) == written  # what the rerun may keep
    assert main([str(sample_bids), str(out), *group]) == 0  # the rerun, in this process
    assert not (out / "shards" / "journal.json").exists()
    assert file_digests(out / "shards", ("*.h5", "*.tsv", "*.json")) == file_digests(reference / "shards",
                                                                           ("*.h5", "*.tsv", "*.json"))


# --------------------------------------------------------------------------- SLURM


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A private single-node SLURM; skipped (one line) where it cannot start, unless CI requires it."""
    def unavailable(reason: str):
        if os.environ.get("FLATPREP_REQUIRE_SLURM") == "1":
            pytest.fail(f"FLATPREP_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)

    reason = slurm_unavailable()
    if reason:
        unavailable(reason)
    import dask

    node = SlurmNode(tmp_path_factory.mktemp("slurm"))
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(node.env)
    try:
        try:
            node.start()
        except RuntimeError as err:
            unavailable(f"SLURM did not start: {err}")
        # Scheduler, its dashboard and the workers on the loopback interface only.
        with dask.config.set({"jobqueue.slurm.interface": "lo",
                              "jobqueue.slurm.scheduler-options": {"dashboard_address": "127.0.0.1:0"}}):
            yield node
    finally:
        node.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


def _worker_jobs(node: SlurmNode, seen: int) -> list[dict]:
    return [job for job in node.jobs()[seen:] if job.get("Name") == "flatprep-worker"]


def test_slurm_runs_execute_as_jobs_with_the_given_options_and_the_same_bytes(slurm, sample_bids,
                                                                              participant_out, tmp_path):
    out = tmp_path / "slurm"
    seen = len(slurm.jobs())
    assert main([str(sample_bids), str(out), "participant", *FAST, "--participant-label", "01",
                 "--scheduler", "slurm", "--nprocs", "2", "--slurm-partition", "flatprep",
                 "--slurm-walltime", "00:10:00", "--slurm-memory", "2GB"]) == 0
    assert [r["status"] for r in _rows(out)] == ["done", "done"]
    jobs = _worker_jobs(slurm, seen)
    assert len(jobs) == 2, "one worker job per --nprocs"
    for job in jobs:
        assert job["Partition"] == "flatprep" and job["TimeLimit"] == "10" and job["NodeList"] == slurm.host
        assert "mem=2G" in job["Tres"] or "mem=1908M" in job["Tres"]
        log = out / ".work" / "slurm-logs" / f"flatprep-worker-{job['JobId']}.err"
        assert re.search(r"Registered to:\s+tcp://127\.0\.0\.1:\d+", log.read_text())  # its Dask worker joined
    # Flat maps, sidecars and figures: the same bytes as the in-process run; the report differs only by the
    # command line it names.
    patterns = ("*.h5", "*.json", "*.png")
    produced = file_digests(out, patterns, subject="sub-01")
    assert len(produced) == 2 * 2 + 2 * 5
    assert produced == file_digests(participant_out, patterns, subject="sub-01")
    command = re.compile(r"<code>flatprep [^<]*</code>")
    assert command.sub("", (out / "sub-01.html").read_text()) == command.sub(
        "", (participant_out / "sub-01.html").read_text())
    # The group level in worker jobs writes the shards an in-process group level writes.
    reference = tmp_path / "reference"
    shutil.copytree(out, reference, ignore=shutil.ignore_patterns(".work"))
    group = ["group", "--shard-size", "0.002", "--split-ratios", "1", "0", "0"]
    assert main([str(sample_bids), str(reference), *group]) == 0
    assert main([str(sample_bids), str(out), *group, "--scheduler", "slurm", "--nprocs", "2",
                 "--slurm-memory", "2GB"]) == 0
    shards = file_digests(out / "shards", ("*.h5", "*.tsv", "*.json"))
    assert len(shards) >= 3 and shards == file_digests(reference / "shards", ("*.h5", "*.tsv", "*.json"))
    assert len(_worker_jobs(slurm, seen)) == 4


@pytest.mark.slow
def test_slurm_job_over_its_memory_is_reported_by_name(slurm, sample_bids, tmp_path):
    out = tmp_path / "memory"
    seen = len(slurm.jobs())
    # A worker job starts in about 150 MiB; flattening a run (its imports, which stay) brings it past 160 MB
    # for good. A higher limit is only passed by the run's arrays, for under a second: between two of
    # SLURM's 1 s memory samples, the kill would depend on luck.
    code = main([str(sample_bids), str(out), "participant", "--participant-label", "01",
                 "--task", "rest", "--scheduler", "slurm", "--slurm-memory", "160MB"])
    assert code == 1
    [row] = _rows(out)
    assert row["status"] == "failed" and row["run"] == "sub-01_task-rest_space-fsLR"
    assert "exceeded its memory limit" in row["error"] and "--slurm-memory" in row["error"]
    assert not list(out.rglob("*.h5")) and _leftovers(out) == []
    assert [job["JobState"] for job in _worker_jobs(slurm, seen)][:2] == ["FAILED", "FAILED"]


def test_slurm_jobs_that_cannot_start_a_worker_fail_the_runs_instead_of_hanging(slurm, sample_bids, tmp_path):
    out = tmp_path / "tiny"
    code = main([str(sample_bids), str(out), "participant", *FAST, "--no-figures", "--participant-label", "01",
                 "--scheduler", "slurm", "--slurm-memory", "40MB"])
    assert code == 1
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    for row in rows:
        # Whether SLURM kills the job before or just after its worker registers depends on the machine's load;
        # either way the run fails naming the memory limit instead of hanging.
        assert "exceeded its memory limit" in row["error"] and "--slurm-memory" in row["error"]


@pytest.mark.slow
def test_scancel_of_a_busy_worker_job_retries_its_run_elsewhere(slurm, sample_bids, participant_out, tmp_path,
                                                                 caplog):
    out = tmp_path / "scancel"
    # Every sample run (not one subject's): runs take about a second now, so both workers stay busy long
    # enough for the cancel to land while one of them is inside a run.
    args = [str(sample_bids), str(out), "participant", *FAST, "--no-figures",
            "--scheduler", "slurm", "--nprocs", "2", "--slurm-memory", "2GB"]
    codes = []
    thread = threading.Thread(target=lambda: codes.append(main(args)))
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and thread.is_alive() and len(_runs_in_progress(out)) < 2:
        time.sleep(0.05)
    jobs = subprocess.run(["squeue", "-h", "-n", "flatprep-worker", "-o", "%i"], capture_output=True, text=True,
                          check=True).stdout.split()
    if len(jobs) < 2:  # on a fast machine both runs can end before the poll sees them busy
        thread.join(timeout=240)
        pytest.skip(f"the runs finished before a busy worker job could be cancelled (jobs seen: {jobs})")
    subprocess.run(["scancel", jobs[0]], check=True)
    thread.join(timeout=240)
    assert codes == [0]
    # The cancelled job's run is redone elsewhere, or found complete when it had finished writing first.
    assert {r["status"] for r in _rows(out)} <= {"done", "complete (verified)"}
    assert file_digests(out) == file_digests(participant_out)
    if f"SLURM job {jobs[0]} state CANCELLED" not in caplog.text:  # runs take about a second now
        pytest.skip(f"job {jobs[0]} had finished its run before scancel reached it: nothing to retry")
