"""Sample runs written as an HCP-pipelines release instead of BIDS.

``write_sample_dataset(..., layout="hcp")`` (``flatprep-sample --layout hcp``) writes::

    OUT_DIR/<subject>/MNINonLinear/Results/<fMRIName>/
        <fMRIName>_Atlas_MSMAll.dtseries.nii     the same CIFTI as the BIDS layout's space-fsLR_den-91k
        Movement_Regressors.txt                  12 columns: trans mm, rot degrees, then derivatives
        EVs/<condition>.txt                      task runs: onset, duration, amplitude
    OUT_DIR/sourcedata/flatprep-sample/ground_truth.json

Runs are named as HCP-YA names them: rest run k is ``rfMRI_REST<k>_<dir>`` and a
motor run ``tfMRI_MOTOR_<dir>``, the direction alternating LR, RL over the runs
of a task. With the same seed, the data are those of the BIDS layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..exceptions import SampleError

DIRECTIONS = ("LR", "RL")
#: The variant written (flatprep's default reading).
BOLD_SUFFIX = "_Atlas_MSMAll.dtseries.nii"


def check_hcp_options(*, n_sessions: int, n_runs: int, spaces) -> None:
    """What the HCP layout can hold: fs_LR CIFTI, no sessions, at most 2 motor runs (LR, RL)."""
    if n_sessions != 1:
        raise SampleError(f"n_sessions={n_sessions}: HCP-pipelines trees have no sessions; use 1 with layout 'hcp'")
    if n_runs > len(DIRECTIONS):
        raise SampleError(f"n_runs={n_runs}: HCP names hold {len(DIRECTIONS)} runs per task (LR, RL); "
                          f"use at most {len(DIRECTIONS)} with layout 'hcp'")
    if tuple(spaces) != ("fsLR",):
        raise SampleError(f"spaces {', '.join(spaces)}: HCP-pipelines trees hold fs_LR CIFTI only; "
                          "use spaces=('fsLR',) with layout 'hcp'")


def fmri_name(task: str, run_index: int) -> str:
    """HCP ``<fMRIName>`` of the 0-based ``run_index``-th run of a task."""
    direction = DIRECTIONS[run_index % len(DIRECTIONS)]
    if task == "rest":
        return f"rfMRI_REST{run_index // len(DIRECTIONS) + 1}_{direction}"
    return f"tfMRI_{task.upper()}_{direction}"


def movement_text(params: np.ndarray) -> str:
    """HCP ``Movement_Regressors.txt`` from (n_frames, 6) motion in mm and radians."""
    params = np.asarray(params, dtype=np.float64)
    table = np.hstack([params[:, :3], np.rad2deg(params[:, 3:])])
    derivative = np.vstack([np.zeros((1, 6)), np.diff(table, axis=0)])
    rows = np.hstack([table, derivative])
    return "".join("  ".join(f"{v: .6f}" for v in row) + "\n" for row in rows)


def write_hcp_run(writer, subject: str, name: str, *, dtseries: bytes, motion: np.ndarray, events) -> list[str]:
    """Every file of one run under ``<subject>/MNINonLinear/Results/<name>/``; returns their paths.

    ``events`` is (onset, duration, trial_type) sequences, or None for rest.
    """
    folder = Path(subject) / "MNINonLinear" / "Results" / name
    files = [folder / f"{name}{BOLD_SUFFIX}", folder / "Movement_Regressors.txt"]
    writer.write_bytes(files[0], dtseries)
    writer.write_text(files[1], movement_text(motion))
    if events is not None:
        onset, duration, trial_type = (np.asarray(v) for v in events)
        for condition in sorted(set(trial_type.tolist())):
            pick = trial_type == condition
            text = "".join(f"{o:.3f}\t{d:.3f}\t1\n" for o, d in zip(onset[pick], duration[pick]))
            files.append(writer.write_text(folder / "EVs" / f"{condition}.txt", text).relative_to(writer.root))
    return [str(f) for f in files]
