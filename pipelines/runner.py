"""Run the participant level: one Dask task per run, each running its own Nipype workflow.

A task never raises (except when the command is interrupted): it returns a
:class:`RunResult` whose status is one of :data:`STATUSES`, so one broken run
never stops the others. A run is written beside its earlier outputs and
swapped in only when complete (:mod:`.reruns`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from flatprep import __version__
from flatprep.flatmap import DEFAULT_PIXEL_SIZE

from .bids import RunSpec, output_entities

logger = logging.getLogger(__name__)

#: A run's outcome: written for the first time (or after an incomplete one), replacing a complete earlier
#: output (``note`` says why), already complete for the same inputs and options (its checksum verified),
#: failed (``error`` says why; ``note`` says whether the earlier output stands), or not finished.
DONE, REDONE, COMPLETE, FAILED, INTERRUPTED = "done", "redone", "complete (verified)", "failed", "interrupted"
STATUSES = (DONE, REDONE, COMPLETE, FAILED, INTERRUPTED)
#: What runs.tsv files written before flatprep said "complete (verified)" read.
_OLD_STATUSES = {"skipped": COMPLETE}

RUNS_COLUMNS = ["run", "subject", "session", "task", "acquisition", "direction", "run_number", "space", "resolution",
                "status", "error", "note", "frames_in", "frames_out", "tr_in", "tr_out", "dropped_volumes",
                "zero_variance_vertices", "tsnr_median", "mean_fd", "max_fd", "seconds", "out_file", "entities"]


@dataclass(frozen=True)
class Settings:
    """Everything that shapes a run's output (picklable; sent to every task).

    Attributes
    ----------
    output_dir, work_dir : str
    clean_options : dict
        :class:`flatprep.clean.CleanOptions` as a dict.
    template, pixel_size, patch_size, method : grid and operator settings
    clip_frames : int
        Frames per HDF5 chunk.
    force : bool
        Redo runs whose output is complete.
    tr_in : float or None
        Input TR in seconds for every run, instead of the sidecars' and headers'.
    keep_work : bool
        Keep each run's Nipype work folder after success.
    with_figures : bool
        Write QC figures.
    """

    output_dir: str
    work_dir: str
    clean_options: dict
    template: str = "fsaverage"
    pixel_size: float = DEFAULT_PIXEL_SIZE
    patch_size: int = 16
    method: str = "linear"
    clip_frames: int = 16
    force: bool = False
    keep_work: bool = False
    with_figures: bool = True
    tr_in: float | None = None

    def output_options(self) -> dict:
        """The settings that change the output (part of each run's inputs key)."""
        keys = ("clean_options", "template", "pixel_size", "patch_size", "method", "clip_frames", "tr_in")
        return {k: getattr(self, k) for k in keys}


@dataclass
class RunResult:
    """Outcome of one run."""

    label: str
    entities: dict
    status: str
    error: str = ""
    note: str = ""
    out_file: str = ""
    stats: dict = field(default_factory=dict)
    qc_summary: dict = field(default_factory=dict)
    seconds: float = 0.0

    def row(self) -> dict:
        s, e = self.stats, self.entities
        return {
            "run": self.label, "subject": e.get("subject"), "session": e.get("session"), "task": e.get("task"),
            "acquisition": e.get("acquisition"), "direction": e.get("direction"), "run_number": e.get("run"),
            "space": e.get("space"), "resolution": e.get("resolution"),
            "status": self.status, "error": self.error.replace("\t", " ").replace("\n", " "),
            "note": self.note.replace("\t", " ").replace("\n", " "),
            "frames_in": s.get("n_timepoints_in"), "frames_out": s.get("n_timepoints_out"),
            "tr_in": s.get("tr_in"), "tr_out": s.get("tr_out"), "dropped_volumes": s.get("n_dropped"),
            "zero_variance_vertices": s.get("n_zero_variance"), "tsnr_median": self.qc_summary.get("tsnr_median"),
            "mean_fd": self.qc_summary.get("mean_fd"), "max_fd": self.qc_summary.get("max_fd"),
            "seconds": round(self.seconds, 2), "out_file": self.out_file,
            # Every entity of the run (dir, echo, ...), with labels as written ("01" stays "01").
            "entities": json.dumps({k: str(v) if isinstance(v, int) else v for k, v in e.items()}, sort_keys=True),
        }


def sources_of(spec: RunSpec) -> list[dict]:
    """Input files with BIDS URI and sha256 (missing files are listed without a checksum)."""
    from flatprep.cache import file_digest

    from .outputs import bids_uri

    files = [*spec.bold, *spec.sidecars, *([spec.confounds] if spec.confounds else []), *spec.events,
             *(s for s in spec.surfaces if s)]
    out = []
    for path in files:
        digest = file_digest(path) if Path(path).is_file() else None
        out.append({"path": str(path), "uri": bids_uri(path, spec.dataset_names), "sha256": digest})
    return out


def inputs_key(sources: list[dict], settings: Settings) -> str:
    """Hash of the input contents, the output options and the flatprep version."""
    text = json.dumps({"inputs": [s["sha256"] for s in sources], "options": settings.output_options(),
                       "version": __version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def expected_output(spec: RunSpec, settings: Settings) -> Path:
    from .outputs import derivative_path

    return derivative_path(settings.output_dir, spec.entities | {"desc": "flat", "suffix": "bold", "extension": ".h5"})


def expected_figures(spec: RunSpec, settings: Settings) -> list[Path]:
    """The QC figures a complete run has (none with ``--no-figures``; motion only with confounds)."""
    from .outputs import run_figure_paths

    if not settings.with_figures:
        return []
    return run_figure_paths(settings.output_dir, spec.entities, with_motion=bool(spec.confounds))


def completeness_problems(out_file: Path, key: str, figures: list[Path] = (), *,
                          written: dict | None = None) -> list[str]:
    """Why a run's outputs are not complete and trustworthy (empty when they are).

    Complete means: the ``.h5`` opens, its content checksum verifies, it was
    made from the same inputs and options (``key``), its sidecar exists, and
    every expected figure exists. ``written`` (:func:`.outputs.file_stamp`
    taken by the ``flatten`` node in this process) skips re-hashing a file that is still
    the one this process just wrote and checksummed while writing; every
    other check stays, and a later run verifies the checksum in full.
    """
    from flatprep.h5 import read_run_attrs, validate_run

    from .outputs import same_file

    problems = validate_run(out_file, check_values=False, check_checksum=not same_file(out_file, written))
    if problems:
        return problems
    if read_run_attrs(out_file)[0].get("inputs_key") != key:
        return [f"{out_file}: made from other inputs or options"]
    missing = [p for p in [out_file.with_suffix(".json"), *figures] if not p.exists()]
    return [f"{p}: missing" for p in missing]


_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def _reason(error: BaseException) -> str:
    """The original error line of a failed node (Nipype wraps it in its own exception)."""
    text = str(error)
    found = [m.group(2) for line in text.splitlines() if (m := _ERROR_LINE.match(line.strip()))]
    if found:
        return found[-1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _remove_outputs(spec: RunSpec, settings: Settings) -> None:
    """Remove a failed run's outputs so nothing partial or stale stays behind."""
    from .outputs import FIGURES, figure_path

    out_file = expected_output(spec, settings)
    paths = [out_file, out_file.with_suffix(".json")]
    paths += [figure_path(settings.output_dir, spec.entities, d, s) for d, s, _ in FIGURES]
    for path in paths:
        path.unlink(missing_ok=True)


def job_work_dir(work_dir) -> Path:
    """This job's own folder under ``work_dir`` (jobs sharing an output folder never share work)."""
    import socket
    import uuid

    return Path(work_dir) / f"job-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_empty_work(job_dir) -> None:
    """Remove a job's work folder and its parent when empty (another job may still be using the parent)."""
    for folder in (Path(job_dir), Path(job_dir).parent):
        try:
            folder.rmdir()
        except OSError:  # not empty (kept work, another job) or already gone
            return


def run_lock_path(output_dir, label: str) -> Path:
    """The lock file a job holds while it works on run ``label`` in ``output_dir``."""
    return Path(output_dir) / ".locks" / f"{label}.lock"


def _lost_run(spec: RunSpec, settings: Settings, reason: str) -> RunResult:
    """The result of a run whose worker died: failed; it wrote only in its staging folder, which is removed."""
    from .reruns import remove_staging

    logger.error("%s: %s", spec.label, reason)
    remove_staging(settings.output_dir, spec.label)
    out_file = expected_output(spec, settings)
    result = RunResult(spec.label, spec.entities, FAILED, error=reason)
    result.out_file = str(out_file.relative_to(settings.output_dir))
    if out_file.exists():
        result.note = "the earlier output was left as it was"
    return result


def process_run(spec: RunSpec, settings: Settings) -> RunResult:
    """Flatten one run through its Nipype workflow, holding the run's lock. Never raises, except
    :class:`~flatprep.exceptions.Interrupted` (the command was asked to stop).

    Another job on the same output folder working on the same run is waited
    for; the run is then usually complete and reported ``complete (verified)``.
    """
    from flatprep.allocator import retain_freed_memory
    from flatprep.locks import file_lock, is_locked

    retain_freed_memory()  # in this worker, each run reuses the pages the last one freed (no effect on values)
    start = time.perf_counter()
    result = RunResult(spec.label, spec.entities, FAILED, error=spec.error)
    if spec.error:
        return result
    lock = run_lock_path(settings.output_dir, spec.label)
    try:
        if is_locked(lock):
            logger.info("%s: waiting for another flatprep job that holds %s", spec.label, lock)
        with file_lock(lock):
            _process_locked(spec, settings, result)
    except Exception as error:  # the lock file cannot be made: report it as this run's failure
        result.error = _reason(error)
    result.seconds = time.perf_counter() - start
    return result


def _process_locked(spec: RunSpec, settings: Settings, result: RunResult) -> None:
    """Fill ``result``: complete (verified), or written beside the earlier output and swapped in, or failed
    (a complete earlier output then stands)."""
    from flatprep.exceptions import OutputConflictError

    from .reruns import earlier_output, grid_changes, option_changes, remove_staging, staging_dir

    earlier = None
    try:
        sources = sources_of(spec)
        key = inputs_key(sources, settings)
        out_file = expected_output(spec, settings)
        figures = expected_figures(spec, settings)
        result.out_file = str(out_file.relative_to(settings.output_dir))
        logger.debug("%s: space %s, input %s", spec.label, spec.space, spec.bold[0])
        earlier, incomplete = earlier_output(out_file, figures)
        if earlier is not None and earlier["attrs"].get("inputs_key") == key and not settings.force:
            result.status = COMPLETE
            result.stats, result.qc_summary = _summary_from_file(out_file)
            return
        changes = option_changes(earlier, settings, sources) if earlier is not None else []
        other_grid = grid_changes(earlier, settings) if earlier is not None else []
        if other_grid and not settings.force:  # the name does not carry the grid: never replace it silently
            raise OutputConflictError(f"{out_file}: made on another grid ({'; '.join(other_grid)}); pass --force "
                                      "to replace it, or write to another output folder")
        _write_and_swap(spec, settings, sources, key, result)
        if earlier is not None:
            result.status = REDONE
            result.note = "; ".join(changes) or ("--force" if settings.force else "inputs or options changed")
        elif incomplete:
            result.note = f"the earlier output was not complete: {incomplete}"
    except Exception as error:  # one broken run must not stop the others
        result.status = FAILED
        # Name the file where it belongs, not where it was being written.
        staging = str(staging_dir(settings.output_dir, spec.label))
        result.error = _reason(error).replace(staging + os.sep, settings.output_dir.rstrip(os.sep) + os.sep)
        logger.error("%s: %s", spec.label, result.error)
        _after_failure(spec, settings, result, earlier)
    finally:
        remove_staging(settings.output_dir, spec.label)


def _write_and_swap(spec: RunSpec, settings: Settings, sources: list[dict], key: str, result: RunResult) -> None:
    """Run the workflow into the run's staging folder, verify every file, then move them over the old ones."""
    from dataclasses import replace

    from flatprep.exceptions import RunFileError

    from .outputs import run_figure_paths
    from .reruns import staging_dir, swap_in

    staging = staging_dir(settings.output_dir, spec.label)
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's files are never trusted
    staged = replace(settings, output_dir=str(staging))
    outputs = _run_workflow(spec, staged, sources, key)
    # Trust the files, not the workflow's word: a cached node must never stand in for them.
    problems = completeness_problems(expected_output(spec, staged), key, expected_figures(spec, staged),
                                     written=outputs.get("written"))
    if problems:
        raise RunFileError(f"not written by the workflow: {problems[0]}")
    swap_in(staging, settings.output_dir, run_figure_paths(settings.output_dir, spec.entities, with_ribbon=True))
    result.stats = dict(outputs.get("stats") or {})
    result.qc_summary = dict(outputs.get("qc_summary") or {}) | _motion_numbers(sources, result.stats.get("n_dropped"))
    result.status = DONE


def _after_failure(spec: RunSpec, settings: Settings, result: RunResult, earlier: dict | None) -> None:
    """A complete earlier output stands (the row keeps its numbers and says so); anything else is removed."""
    from .reruns import describe

    if earlier is None:
        _remove_outputs(spec, settings)
        return
    result.note = f"the earlier output stands (made with {describe(earlier)})"
    try:
        result.stats, result.qc_summary = _summary_from_file(expected_output(spec, settings))
    except Exception:  # the numbers are a courtesy: the failure itself is what the row reports
        pass


def _summary_from_file(out_file: Path) -> tuple[dict, dict]:
    """Cleaning statistics and QC numbers of a complete run file."""
    from flatprep.h5 import open_h5, read_run_attrs
    from flatprep.qc import run_quality

    attrs, _ = read_run_attrs(out_file)
    with open_h5(out_file) as handle:
        n_out = int(handle["frames"].shape[0])
        quality = run_quality(handle["mean"][()], handle["std"][()])
    stats = {"tr_in": attrs["tr_in"], "tr_out": attrs["tr_out"], "n_timepoints_in": attrs.get("n_timepoints_in"),
             "n_timepoints_out": n_out, "n_dropped": attrs.get("n_dropped"),
             "n_zero_variance": attrs.get("n_zero_variance")}
    return stats, quality | _motion_numbers(attrs.get("sources") or [], attrs.get("n_dropped"))


def _motion_numbers(sources: list[dict], n_dropped) -> dict:
    """Mean and max framewise displacement (mm) over the kept volumes, by the rule ``--exclude`` applies
    (:func:`flatprep.exclusion.motion_metrics`); empty when the run has no usable confounds table."""
    from flatprep.exclusion import motion_metrics

    metrics, _ = motion_metrics(sources, int(n_dropped or 0))
    return {name: metrics[name] for name in ("mean_fd", "max_fd") if name in metrics}


def _run_workflow(spec: RunSpec, settings: Settings, sources: list[dict], key: str) -> dict:
    """Run the run's Nipype workflow, writing under ``settings.output_dir``; return its stats and stamps."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    from flatprep.exceptions import Interrupted
    from nipype import config, logging as nipype_logging

    from .workflows import init_flatten_wf

    work = Path(settings.work_dir) / spec.label
    work.mkdir(parents=True, exist_ok=True)
    config.update_config({
        "execution": {"crashdump_dir": str(work), "crashfile_format": "txt", "stop_on_first_crash": "true",
                      "remove_unnecessary_outputs": "false", "create_report": "false"},
        # Failures are reported once by the runner; the traceback stays in the crash file.
        "logging": {"workflow_level": "CRITICAL", "interface_level": "WARNING"},
        "monitoring": {"enabled": "false"},
    })
    nipype_logging.update_logging(config)
    workflow = init_flatten_wf(
        space=spec.space, output_dir=settings.output_dir, clean_options=settings.clean_options,
        template=settings.template, pixel_size=settings.pixel_size, patch_size=settings.patch_size,
        method=settings.method, clip_frames=settings.clip_frames, with_figures=settings.with_figures,
        tr_in=settings.tr_in, name=re.sub(r"\W", "_", spec.label) + "_wf",
    )
    workflow.base_dir = str(work)
    inputs = workflow.get_node("inputnode").inputs
    inputs.bold_files = list(spec.bold)
    inputs.sidecars = list(spec.sidecars)
    if spec.confounds:
        inputs.confounds_file = spec.confounds
    inputs.entities = spec.entities
    inputs.sources = sources
    inputs.inputs_key = key
    inputs.surfaces = list(spec.surfaces)
    inputs.events_files = list(spec.events)
    try:
        graph = workflow.run(plugin="Linear")
    except Interrupted:  # nothing to inspect in an abandoned run's work folder (a failed one keeps its crash file)
        if not settings.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        raise
    # Nipype drops identity nodes from the executed graph: read the producing nodes.
    results = {node.name: node.result.outputs for node in graph.nodes()}
    outputs = {"stats": results["flatten"].stats, "written": results["flatten"].written}
    if "figures" in results:
        outputs["qc_summary"] = results["figures"].summary
    if not settings.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return outputs


# --------------------------------------------------------------------------- fan-out


def _report(progress, result: RunResult) -> None:
    detail = "".join(f"; {text}" for text in (result.error, result.note) if text)
    level = logging.ERROR if result.status == FAILED else logging.INFO
    progress.item(f"{result.label} {result.status} ({result.seconds:.1f} s){detail}", level=level)


def make_client(scheduler: str, nprocs: int, slurm: dict | None = None):
    """A Dask client for ``local``, ``slurm`` or a scheduler address (None for in-process)."""
    if scheduler == "in-process":
        return None
    from dask.distributed import Client

    # distributed sets its loggers to INFO when imported; keep cluster chatter out of the run log.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # libraries' messages only at -vv
        logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler == "local":
        import dask
        from dask.distributed import LocalCluster

        from .cluster import ALLOWED_FAILURES

        dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES})
        cluster = LocalCluster(n_workers=nprocs, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster)
    if scheduler == "slurm":
        from .cluster import slurm_cluster

        return Client(slurm_cluster(nprocs, dict(slurm or {})))
    return Client(scheduler)


def run_all(specs: list[RunSpec], settings: Settings, *, scheduler: str = "in-process", nprocs: int = 1,
            slurm: dict | None = None, stop_on_first_crash: bool = False) -> list[RunResult]:
    """Process every run, in-process or on a Dask cluster; results in input order.

    Temporary files and staging folders that killed runs left in the output
    folder are removed first. On :class:`~flatprep.exceptions.Interrupted`
    no further run starts, the cluster is shut down, and the exception is
    raised again with ``results`` set: every run not finished is ``interrupted``.
    """
    from flatprep.atomic import remove_stale_temporaries
    from flatprep.exceptions import Interrupted
    from flatprep.progress import Progress

    from .reruns import remove_abandoned_staging

    for path in remove_stale_temporaries(settings.output_dir, skip=(".work", Path(settings.work_dir).name)):
        logger.info("removed %s (left by a killed run)", path)
    for path in remove_abandoned_staging(settings.output_dir, partial(run_lock_path, settings.output_dir)):
        logger.info("removed %s (a run that was stopped before it finished)", path)
    results: dict[int, RunResult] = {}
    progress = Progress(len(specs), desc="participant", unit="run", logger=logger)
    client = None
    try:
        client = make_client(scheduler, nprocs, slurm)
        if client is None:
            _run_in_process(specs, settings, results, progress, stop_on_first_crash)
        else:
            _run_on_cluster(client, specs, settings, results, progress, stop_on_first_crash)
    except Interrupted as stop:
        for index, spec in enumerate(specs):
            if index not in results:
                results[index] = RunResult(spec.label, spec.entities, INTERRUPTED, error=f"stopped by {stop.name}")
        stop.results = [results[i] for i in sorted(results)]
        raise
    finally:
        progress.close()
        close_client(client)
    return [results[i] for i in sorted(results)]


def _run_in_process(specs, settings, results, progress, stop_on_first_crash) -> None:
    for index, spec in enumerate(specs):
        results[index] = process_run(spec, settings)
        _report(progress, results[index])
        if stop_on_first_crash and results[index].status == FAILED:
            break


def _run_on_cluster(client, specs, settings, results, progress, stop_on_first_crash) -> None:
    from .cluster import gather

    futures = {client.submit(process_run, spec, settings, pure=False, key=f"flatten-{spec.label}"): i
               for i, spec in enumerate(specs)}
    try:
        for index, result, error in gather(client, futures):
            if error:  # the task itself did not return: its worker died
                result = _lost_run(specs[index], settings, error)
            results[index] = result
            _report(progress, result)
            if stop_on_first_crash and result.status == FAILED:
                break
    finally:  # finished, stopped at the first crash, or interrupted: nothing more starts
        client.cancel([f for f, i in futures.items() if i not in results])


def close_client(client) -> None:
    """Close a Dask client and the cluster it started (no-op for in-process runs)."""
    if client is None:
        return
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


# --------------------------------------------------------------------------- summaries


def _row_entities(row: dict) -> dict:
    """BIDS entities of a runs.tsv row (every entity, from its ``entities`` column when it has one)."""
    if row.get("entities") not in (None, "", "n/a"):
        return output_entities(json.loads(row["entities"]))
    names = {"subject": "subject", "session": "session", "task": "task", "acquisition": "acquisition",
             "direction": "direction", "run_number": "run", "space": "space", "resolution": "resolution"}
    entities = {v: row[k] for k, v in names.items() if row.get(k) not in (None, "", "n/a")}
    if "run" in entities:
        entities["run"] = int(entities["run"])
    return output_entities(entities)


def summaries_lock_path(output_dir) -> Path:
    """The lock file held while ``runs.tsv`` and the reports of ``output_dir`` are updated."""
    return Path(output_dir) / ".locks" / "summaries.lock"


def write_summaries(results: list[RunResult], output_dir: str, *, command: str | None = None) -> Path:
    """Update ``runs.tsv`` (one row per run ever processed) and each participant's report.

    ``command`` (the job's command line) is shown in the reports.

    Jobs sharing ``output_dir`` take turns: the table is read, merged by run
    (this job's rows replace the same runs' rows) and written under a file lock.
    """
    from flatprep.locks import file_lock
    from flatprep.tables import read_tsv, write_tsv

    output_dir = Path(output_dir)
    table = output_dir / "runs.tsv"
    with file_lock(summaries_lock_path(output_dir)):
        rows = {}
        if table.exists():
            rows = {row["run"]: row | {"status": _OLD_STATUSES.get(row["status"], row["status"])}
                    for row in read_tsv(table)}
        for result in results:
            rows[result.label] = result.row()
        write_tsv(table, [rows[k] for k in sorted(rows)], RUNS_COLUMNS)
        _write_reports(rows, {r.entities.get("subject") for r in results}, output_dir, command)
    return table


def _write_reports(rows: dict, subjects: set, output_dir: Path, command: str | None = None) -> None:
    """The report of each subject in ``subjects`` with a valid BIDS label, from all its rows."""
    from .report import write_participant_report

    by_subject = defaultdict(list)
    for row in rows.values():
        by_subject[row["subject"]].append(row)
    for subject in sorted(s for s in subjects if s and re.fullmatch(r"[a-zA-Z0-9]+", s)):
        write_participant_report(output_dir, subject, by_subject[subject], command=command)
