"""Readers for the files beside an HCP-pipelines run: motion regressors and task EVs.

An HCP-pipelines release stores each run as
``<subject>/MNINonLinear/Results/<fMRIName>/<fMRIName>_Atlas_MSMAll.dtseries.nii``
(read by :func:`flatprep.io.load_cifti_dtseries`), with

* ``Movement_Regressors.txt``: 12 whitespace-separated columns, no header:
  translations x, y, z (mm), rotations x, y, z (degrees), then their temporal
  derivatives in the same order;
* ``EVs/<condition>.txt``: one file per condition, 3 columns (onset and duration
  in seconds from the first frame, amplitude); ``Sync.txt`` holds a scanner sync
  time, not trials.

They are returned under fMRIPrep's names and units (rotations in radians), so
cleaning, QC and probes treat both layouts alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .exceptions import InputError
from .tables import read_text

#: fMRIPrep's names for the 12 columns of Movement_Regressors.txt, in file order.
MOVEMENT_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                    "trans_x_derivative1", "trans_y_derivative1", "trans_z_derivative1",
                    "rot_x_derivative1", "rot_y_derivative1", "rot_z_derivative1")
MOVEMENT_FILE = "Movement_Regressors.txt"
#: EV files that hold no trials.
NON_EV_FILES = ("Sync.txt",)


def _read_table(path: Path, what: str) -> np.ndarray:
    """A whitespace-separated numeric table: (n_rows, n_columns) float64 (0 rows for an empty file)."""
    rows = []
    for line_no, line in enumerate(read_text(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            raise InputError(f"{path}: line {line_no} of {what} is not all numbers: {line.strip()[:60]!r}") from None
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise InputError(f"{path}: {what} rows have {sorted(widths)} fields; every row must have the same number")
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), widths.pop() if widths else 0)


def read_movement_regressors(path: str | Path, *, n_timepoints: int | None = None) -> dict[str, np.ndarray]:
    """HCP ``Movement_Regressors.txt`` as fMRIPrep-named confound columns.

    Parameters
    ----------
    path : path
    n_timepoints : int, optional
        Checked against the row count.

    Returns
    -------
    dict of str -> ndarray, float64, shape (n_timepoints,)
        ``trans_*`` (mm), ``rot_*`` (radians, converted from HCP's degrees) and
        their ``*_derivative1`` (same units).
    """
    path = Path(path)
    table = _read_table(path, "HCP movement regressors")
    if table.shape[1] != len(MOVEMENT_COLUMNS):
        raise InputError(f"{path}: {table.shape[1]} columns, expected the {len(MOVEMENT_COLUMNS)} of HCP's "
                         "Movement_Regressors.txt (translations mm, rotations deg, then their derivatives)")
    if n_timepoints is not None and table.shape[0] != n_timepoints:
        raise InputError(f"{path}: {table.shape[0]} rows but the BOLD run has {n_timepoints} frames")
    degrees = np.array([name.startswith("rot_") for name in MOVEMENT_COLUMNS])
    table = np.where(degrees, np.deg2rad(table), table)
    return {name: table[:, index].copy() for index, name in enumerate(MOVEMENT_COLUMNS)}


def read_hcp_events(paths, *, run_seconds: float | None = None) -> dict[str, np.ndarray]:
    """Task EV files as one BIDS-style events table, sorted by onset.

    Parameters
    ----------
    paths : sequence of path
        ``EVs/<condition>.txt`` files; the condition (file stem) becomes
        ``trial_type``. ``Sync.txt`` and empty files contribute nothing.
    run_seconds : float, optional
        Length of the run (frames x TR): a file with events that end after it
        is warned about, naming the file (:func:`flatprep.io.warn_events_past_end`).

    Returns
    -------
    dict
        ``onset``, ``duration`` (float64, seconds from the first frame) and
        ``trial_type`` (str), each of shape (n_events,).
    """
    onsets, durations, types = [], [], []
    for path in (Path(p) for p in paths):
        if path.name in NON_EV_FILES:
            continue
        table = _read_table(path, "HCP EV file")
        if table.shape[0] and table.shape[1] != 3:
            raise InputError(f"{path}: {table.shape[1]} columns, expected 3 (onset, duration, amplitude) "
                             "as in HCP EV files")
        onsets.append(table[:, 0] if table.size else np.zeros(0))
        durations.append(table[:, 1] if table.size else np.zeros(0))
        if run_seconds is not None:
            from .io import warn_events_past_end

            warn_events_past_end(onsets[-1], durations[-1], run_seconds, source=path)
        types += [path.stem] * table.shape[0]
    onset = np.concatenate(onsets) if onsets else np.zeros(0)
    order = np.argsort(onset, kind="stable")
    return {"onset": onset[order], "duration": (np.concatenate(durations) if durations else np.zeros(0))[order],
            "trial_type": np.asarray(types, dtype=str)[order]}


def events_records(events: dict[str, np.ndarray]) -> list[dict]:
    """An events table as a JSON-ready list of ``{onset, duration, trial_type}``."""
    return [{"onset": float(o), "duration": float(d), "trial_type": str(t)}
            for o, d, t in zip(events["onset"], events["duration"], events["trial_type"])]
