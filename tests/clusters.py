"""Real schedulers for the cluster tests: a Dask scheduler with workers, and a single-node SLURM.

Everything listens on 127.0.0.1 only, on free ports, with its state in a
temporary folder, and is stopped afterwards. SLURM needs root and the Debian
packages ``slurm-wlm`` and ``munge`` (``.ci/debian-packages.sh`` installs them);
:func:`slurm_unavailable` says in one line why it cannot start here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol", "scancel")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- Dask


def _start_scheduler(python: list[str], quiet: dict, log: Path, *, tries: int = 3, timeout: float = 60.0):
    """A ``dask scheduler`` listening on a free port of 127.0.0.1: ``(address, process)``.

    The port is free when chosen but may be taken before the scheduler binds it (other processes pick
    free ports too); a scheduler that exits is started again on another port. A client is only made
    once the port accepts connections: distributed's Client waits for ever on a scheduler that died.
    """
    for _ in range(tries):
        port = free_port()
        with log.open("ab") as stderr:
            process = subprocess.Popen([*python, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                                        str(port), "--no-dashboard"], **quiet, stderr=stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return f"tcp://127.0.0.1:{port}", process
            time.sleep(0.1)
        _stop(process)
    raise RuntimeError(f"no Dask scheduler listened after {tries} tries; its log: {log}")


@contextmanager
def dask_cluster(n_workers: int = 2, *, env: dict | None = None):
    """A ``dask scheduler`` and ``n_workers`` single-thread ``dask worker`` processes (no nanny) on 127.0.0.1.

    Yields ``(address, workers)``: the scheduler address and the worker processes.
    """
    import tempfile

    from dask.distributed import Client

    python = [sys.executable, "-m"]
    quiet = {"stdout": subprocess.DEVNULL, "env": os.environ | (env or {})}
    log = Path(tempfile.mkdtemp(prefix="dask-cluster-")) / "scheduler.log"
    address, scheduler = _start_scheduler(python, quiet, log)
    workers = [subprocess.Popen([*python, "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
                                 "--host", "127.0.0.1", "--no-dashboard", "--name", f"worker-{i}"],
                                **quiet, stderr=subprocess.DEVNULL)
               for i in range(n_workers)]
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=60)
        yield address, workers
    finally:
        for process in [*workers, scheduler]:
            _stop(process)


def exit_on_task(key: str):
    """A worker plugin that ends its worker process at once (as SIGKILL would) when it starts task ``key``.

    Register it with ``client.register_plugin``. The class is local, so it
    travels to the workers by value: they need not import this module.
    """
    from distributed import WorkerPlugin

    class ExitOnTask(WorkerPlugin):
        def transition(self, key_, start, finish, **kwargs):
            if key_ == key and finish == "executing":
                os._exit(1)

    return ExitOnTask()


# --------------------------------------------------------------------------- SLURM


def slurm_unavailable() -> str:
    """Why a private SLURM cannot start here ('' when it can)."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "SLURM test needs root (slurmd runs jobs as their user)"
    missing = [p for p in SLURM_PROGRAMS if shutil.which(p) is None]
    if missing:
        return f"SLURM test needs the slurm-wlm and munge packages ({', '.join(missing)} not found)"
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        return "SLURM test needs dask-jobqueue (pip install 'flatprep[slurm]')"
    return ""


def _slurm_conf(root: Path, host: str, ports: tuple[int, int]) -> str:
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    real_memory = int(mem_kb / 1024 * 0.9)  # below what slurmd measures, or it drains the node
    return f"""\
ClusterName=flatprep-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
# No accounting database (sacct needs slurmdbd): finished jobs are listed in the jobcomp file.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
# Memory limits are enforced by polling every second: a job over its --mem is killed.
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
ReturnToService=2
MpiDefault=none
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory={real_memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=flatprep Nodes={host} Default=NO MaxTime=INFINITE State=UP
"""


class SlurmNode:
    """A private single-node SLURM (munged, slurmctld, slurmd) under ``root``; ``SLURM_CONF`` points at it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.jobcomp = self.root / "log" / "jobcomp.txt"
        self.env = {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60.0) -> None:
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        ports = (free_port(), free_port())
        while ports[1] == ports[0]:
            ports = (ports[0], free_port())
        self.conf.write_text(_slurm_conf(self.root, self.host, ports))
        m = self.root / "munge"
        self._run(["munged", "--force", f"--socket={m}/munge.sock", f"--key-file={key}",
                   f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/seed"])
        self._run(["slurmctld", "-f", str(self.conf)])
        self._run(["slurmd", "-f", str(self.conf), "-N", self.host])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node_state() == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM node not idle after {timeout:.0f} s (state {self.node_state()!r}); "
                           f"logs in {self.root / 'log'}")

    def _run(self, command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ | self.env)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command[:1])} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def node_state(self) -> str:
        try:
            return self._run(["sinfo", "-h", "-n", self.host, "-o", "%t"]).split()[0]
        except (RuntimeError, IndexError):
            return ""

    def jobs(self) -> list[dict]:
        """Finished jobs from the jobcomp file: one dict of its ``Key=Value`` fields per job."""
        text = self.jobcomp.read_text() if self.jobcomp.exists() else ""
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if line.strip()]

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel every job, wait for the queue to drain, then stop slurmd, slurmctld and munged (in that order:
        a job step whose controller is gone retries its completion message for ever)."""
        deadline = time.monotonic() + timeout
        subprocess.run(["scancel", "--user", "root"], capture_output=True, timeout=60, env=os.environ | self.env)
        while time.monotonic() < deadline and self._run_quiet(["squeue", "-h", "-o", "%i"]).strip():
            time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munge/munged"):
            pid_file = self.root / f"{name}.pid"
            if pid_file.exists():
                _terminate(int(pid_file.read_text().split()[0]), deadline)

    def _run_quiet(self, command: list[str]) -> str:
        try:
            return self._run(command)
        except (RuntimeError, subprocess.TimeoutExpired):
            return ""


def _terminate(pid: int, deadline: float) -> None:
    """SIGTERM a daemon we started, SIGKILL it if it is still there at ``deadline`` (at least 5 s)."""
    try:
        os.kill(pid, signal.SIGTERM)
        end = max(deadline, time.monotonic() + 5)
        while time.monotonic() < end and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a daemon's zombie, not reaped by init here, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state not in ("Z", "X")
