"""Quality-based exclusion at the group level: ``--exclude "mean_fd>0.5" "tsnr<20"``.

Rules compare one recorded QC metric of a run with a number. A run that
matches any rule is left out before splits are assigned, and the rules and
the runs they left out (with the metric's value) are written to
manifest.json, so the same rules on the same runs give the same dataset.

Metrics (per run, over the stored frames' span, i.e. after dropped volumes):

``tsnr``
    Median temporal SNR over pixels with signal, from the mean and std stored
    in the per-run file (as the run reports show it).
``mean_fd``, ``max_fd``
    Framewise displacement (mm; fMRIPrep's ``framewise_displacement`` column,
    else Power's FD from the six motion parameters with a 50 mm head radius),
    from the confounds table the participant level read. The table is found
    through the path recorded in the per-run file and used only while its
    sha256 still matches the recorded one.
``censored_fraction``
    Fraction of frames with FD above :data:`flatprep.qc.FD_THRESHOLD` (fMRIPrep's
    default motion-outlier threshold).

A run without a metric that a rule needs (no confounds table, or a table
that moved or changed) is left out too, with that reason: a rule the run
cannot be checked against is not taken as passed.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .exceptions import InputError, ShardOptionsError

METRICS = ("mean_fd", "max_fd", "tsnr", "censored_fraction")
_OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_RULE = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")
_CONFOUNDS_SUFFIXES = ("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv", "Movement_Regressors.txt")


@dataclass(frozen=True)
class ExcludeRule:
    """One ``metric OP value`` rule; a run matching it is left out."""

    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def matches(self, value: float) -> bool:
        return bool(_OPERATORS[self.op](value, self.value))


def parse_rule(text: str) -> ExcludeRule:
    """``"mean_fd>0.5"`` -> ExcludeRule; a malformed rule raises ShardOptionsError naming it."""
    match = _RULE.match(text)
    if not match:
        raise ShardOptionsError(f"--exclude {text!r}: expected METRIC>VALUE (or <, >=, <=), e.g. 'mean_fd>0.5'")
    metric, op, number = match.groups()
    if metric not in METRICS:
        raise ShardOptionsError(f"--exclude {text!r}: unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    try:
        value = float(number)
    except ValueError:
        raise ShardOptionsError(f"--exclude {text!r}: {number!r} is not a number") from None
    if not math.isfinite(value):
        raise ShardOptionsError(f"--exclude {text!r}: the value must be finite")
    return ExcludeRule(metric, op, value)


def _confounds_source(sources: list[dict]) -> dict | None:
    return next((s for s in sources if str(s.get("path", "")).endswith(_CONFOUNDS_SUFFIXES)), None)


def motion_metrics(sources: list[dict], n_dropped: int) -> tuple[dict, str]:
    """``mean_fd``, ``max_fd``, ``censored_fraction`` from a run's recorded confounds table.

    Returns
    -------
    metrics : dict
        Empty when they cannot be computed.
    why : str
        Why they are missing ("" when present).
    """
    from .cache import file_digest
    from .io import read_confounds
    from .qc import FD_THRESHOLD, framewise_displacement

    source = _confounds_source(sources)
    if source is None:
        return {}, "no confounds table was read for this run"
    path = Path(source["path"])
    if not path.is_file():
        return {}, f"its confounds table {path} is no longer there"
    if source.get("sha256") and file_digest(path) != source["sha256"]:
        return {}, f"its confounds table {path} changed since the participant level (sha256 differs)"
    try:
        fd = framewise_displacement(read_confounds(path))
    except InputError as err:
        return {}, str(err)
    if fd is None:
        return {}, f"its confounds table {path} has no framewise_displacement or motion columns"
    kept = fd[n_dropped:]
    kept = kept[np.isfinite(kept)]
    if not kept.size:
        return {}, f"its confounds table {path} has no FD values after the dropped volumes"
    return {"mean_fd": round(float(kept.mean()), 4), "max_fd": round(float(kept.max()), 4),
            "censored_fraction": round(float((kept > FD_THRESHOLD).mean()), 4)}, ""


def run_metrics(path: str | Path, sources: list[dict], n_dropped: int, needed: set[str]) -> tuple[dict, str]:
    """The QC metrics in ``needed`` of the per-run file at ``path`` (those it has), and why others are missing."""
    from .h5 import open_h5
    from .qc import run_quality

    metrics, why = {}, ""
    if "tsnr" in needed:
        with open_h5(path) as handle:
            metrics["tsnr"] = run_quality(handle["mean"][()], handle["std"][()])["tsnr_median"]
    if needed & {"mean_fd", "max_fd", "censored_fraction"}:
        motion, why = motion_metrics(sources, n_dropped)
        metrics |= motion
    return metrics, why


def apply_rules(runs: list, output_dir: str | Path, facts: dict, rules: list[ExcludeRule]) -> tuple[list, list[dict]]:
    """Runs that match no rule, and ``run``, ``source``, ``reason``, ``metrics`` for each left out.

    ``facts`` maps a run's label to its :class:`flatprep.recipe.RunFacts` (sources, dropped volumes).
    """
    if not rules:
        return list(runs), []
    needed = {rule.metric for rule in rules}
    kept, left_out = [], []
    for run in runs:
        fact = facts[run.label]
        metrics, why = run_metrics(Path(output_dir) / run.source, fact.sources, fact.n_dropped, needed)
        missing = sorted(needed - set(metrics))
        hits = [f"{rule} (measured {metrics[rule.metric]:g})" for rule in rules
                if rule.metric in metrics and rule.matches(metrics[rule.metric])]
        if missing:
            hits.append(f"{', '.join(missing)} unknown: {why}")
        if hits:
            left_out.append({"run": run.label, "source": run.source, "reason": "excluded: " + "; ".join(hits),
                             "metrics": metrics})
        else:
            kept.append(run)
    return kept, left_out
