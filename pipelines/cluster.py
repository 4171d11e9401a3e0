"""Dask clusters for flatprep: SLURM worker jobs, and waiting on tasks while workers die.

A worker that dies while running a task (killed, out of memory, its SLURM job
cancelled or over its limits) makes the Dask scheduler retry the task on
another worker; once it has died on ``allowed-failures + 1`` workers the task
is reported as failed, with one line saying why. For SLURM, worker jobs that
end are replaced, and jobs that end before their worker starts are reported
instead of waited on forever.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

# Clusters flatprep starts retry a task once: a run whose worker died twice is reported as failed.
ALLOWED_FAILURES = 1
# Worker jobs that may end before their worker joins the scheduler before flatprep stops waiting.
MAX_JOBS_LOST_AT_START = 2
# Seconds between checks of the worker jobs while tasks run.
POLL_SECONDS = 2.0
JOB_NAME = "flatprep-worker"


def slurm_cluster(nprocs: int, options: dict):
    """Start a dask-jobqueue ``SLURMCluster`` of ``nprocs`` single-core worker jobs.

    Parameters
    ----------
    nprocs : int
        Worker jobs (runs processed at once).
    options : dict
        ``queue`` (partition), ``account``, ``walltime``, ``memory`` per job and
        ``log_directory`` (job logs ``flatprep-worker-<jobid>.out/.err``); empty
        values leave the dask-jobqueue configuration (``~/.config/dask/jobqueue.yaml``
        or ``DASK_JOBQUEUE__SLURM__*`` variables, e.g. the network interface) in charge.

    Notes
    -----
    SLURM alone enforces each job's memory: the Dask nanny does not restart its
    worker at 95 % of the limit, so a run that needs more memory than
    ``memory`` ends its job, and the job's end is reported by name.
    """
    import dask

    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as err:
        raise RuntimeError("--scheduler slurm needs dask-jobqueue: pip install 'flatprep[slurm]'") from err
    given = {k: v for k, v in options.items() if v}
    if given.get("log_directory"):
        Path(given["log_directory"]).mkdir(parents=True, exist_ok=True)
    dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES})
    prologue = [*(dask.config.get("jobqueue.slurm.job-script-prologue", None) or []),
                "export DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE=False"]
    cluster = SLURMCluster(cores=1, processes=1, job_name=JOB_NAME, job_script_prologue=prologue, **given)
    cluster.scale(jobs=nprocs)
    return cluster


def _call(command: list[str]) -> str | None:
    """The output of a SLURM command, or None when it failed (controller busy or unreachable)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


#: SLURM job states of a job that has not ended (scontrol's JobState).
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING"})


def job_end(job_id: str, log_dir: str | None) -> str | None:
    """One line on how a SLURM job ended: its state and reason, and a memory or time kill from its log;
    None while SLURM still has it pending or running (it was missing from a queue listing, not ended)."""
    info = _call(["scontrol", "show", "job", str(job_id)]) or ""
    state = re.search(r"JobState=(\S+)", info)
    if state and state.group(1) in ACTIVE_STATES:
        return None
    reason = re.search(r"Reason=(\S+)", info)
    line = f"state {state.group(1) if state else 'unknown'}"
    log = Path(log_dir or ".") / f"{JOB_NAME}-{job_id}.err"
    text = log.read_text(errors="replace") if log.is_file() else ""
    memory = re.search(r"exceeded memory limit \((\d+) > (\d+)\)", text)
    if memory:
        used, limit = (int(v) / 2**20 for v in memory.groups())
        return f"{line}, exceeded its memory limit ({used:.0f} MiB > {limit:.0f} MiB; raise --slurm-memory)"
    if "DUE TO TIME LIMIT" in text:
        return f"{line}, reached its walltime (raise --slurm-walltime)"
    if reason and reason.group(1) != "None":
        line += f" ({reason.group(1)})"
    return f"{line}; see {log}" if text else line


class SlurmJobs:
    """Watch the worker jobs of a dask-jobqueue cluster: replace jobs that end, say how they ended."""

    def __init__(self, cluster, client):
        self.cluster, self.client = cluster, client
        self.log_dir = getattr(getattr(cluster, "_dummy_job", None), "log_directory", None)
        self.joined: set[str] = set()  # worker names that reached the scheduler (one per job)
        self.ended: dict[str, str] = {}  # job id -> how it ended
        self.latest: dict[str, tuple[float, str]] = {}  # worker name -> (when, job id) of its latest ended job
        self.lost_at_start: list[str] = []

    def check(self) -> str:
        """Replace ended jobs; return why waiting is pointless (empty while workers can still come)."""
        self.joined |= {w.get("name") for w in self.client.scheduler_info().get("workers", {}).values()}
        # The jobs before the listing: a replacement submitted while squeue runs is not in its answer
        # and must not be taken for a job that ended.
        submitted = [(name, job) for name, job in list(self.cluster.workers.items()) if getattr(job, "job_id", None)]
        listed = _call(["squeue", "-h", "-o", "%i", "--me", "-n", JOB_NAME])
        if listed is None:
            return ""  # no answer this time: ask again at the next poll
        queued = set(listed.split())
        n_ended = 0
        for name, job in submitted:
            end = None if job.job_id in queued else job_end(job.job_id, self.log_dir)
            if end is None:
                continue
            n_ended += 1
            self.ended[job.job_id] = f"SLURM job {job.job_id} {end}"
            logger.warning("%s ended: %s", name, self.ended[job.job_id])
            self.latest[name] = (time.monotonic(), job.job_id)
            if name not in self.joined:
                self.lost_at_start.append(f"{self.ended[job.job_id]}, before its worker started")
            self.joined.discard(name)
            if self.cluster.workers.get(name) is job:  # not a replacement submitted since the listing
                del self.cluster.workers[name]  # scale() submits a replacement under the same name
        if n_ended:
            self.cluster.scale(jobs=len(self.cluster.worker_spec))
        return self.lost_at_start[-1] if len(self.lost_at_start) >= MAX_JOBS_LOST_AT_START else ""

    def explain(self, worker_name: str, *, recent: float = 60.0, wait_seconds: float = 15.0) -> str:
        """How the job of a dead worker ended ('' when it still runs: the worker alone died)."""
        self.check()
        when, job_id = self.latest.get(worker_name, (-recent, ""))
        if time.monotonic() - when < recent:
            return self.ended[job_id]
        job_id = getattr(self.cluster.workers.get(worker_name), "job_id", None)
        deadline = time.monotonic() + wait_seconds
        while job_id and job_id not in self.ended and time.monotonic() < deadline:
            time.sleep(0.5)  # a job killed with its worker leaves the queue within seconds
            self.check()
        return self.ended.get(job_id, "")


def failure_reason(error: BaseException, jobs: SlurmJobs | None = None) -> str:
    """One line for a task that raised on a cluster (a dead worker, or any other error)."""
    from distributed.scheduler import KilledWorker

    if not isinstance(error, KilledWorker):
        return f"{type(error).__name__}: {error}"
    tries = error.allowed_failures + 1
    line = f"its Dask worker died while running it ({tries} tr{'y' if tries == 1 else 'ies'})"
    detail = jobs.explain(error.last_worker.name) if jobs is not None else ""
    return f"{line}: {detail}" if detail else f"{line}; killed, or out of memory (see the worker log)"


def gather(client, futures: dict) -> Iterator[tuple[int, object, str]]:
    """Yield ``(index, result, error)`` for each future as it finishes; ``error`` is '' on success.

    ``futures`` maps each Dask future to its index. A task whose workers died
    yields its reason instead of raising; when the worker jobs of a SLURM
    cluster cannot start, every unfinished task yields that reason and the
    wait ends.
    """
    from distributed import wait

    cluster = getattr(client, "cluster", None)
    jobs = SlurmJobs(cluster, client) if type(cluster).__name__ == "SLURMCluster" else None
    pending = set(futures)
    while pending:
        try:
            done, pending = wait(pending, timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        for future in done:
            try:
                result, error = future.result(), ""
            except Exception as err:  # one run's failure must not stop the others
                result, error = None, failure_reason(err, jobs)
            yield futures[future], result, error
        stop = jobs.check() if jobs is not None and pending else ""
        if stop:
            client.cancel(list(pending))
            for future in sorted(pending, key=futures.get):
                yield futures[future], None, stop
            return
