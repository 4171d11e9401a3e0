"""Discovery in an HCP-pipelines release: the second front end, yielding the same run specs as BIDS.

An HCP release (HCP-YA S1200 3T/7T, HCP Lifespan) holds one folder per subject::

    HCP_DIR/<subject>/MNINonLinear/Results/<fMRIName>/
        <fMRIName>_Atlas_MSMAll.dtseries.nii           MSMAll registration (default)
        <fMRIName>_Atlas.dtseries.nii                  MSMSulc registration
        <fMRIName>_Atlas_MSMAll_hp2000_clean.dtseries.nii   ICA-FIX cleaned (also _hp0_clean)
        Movement_Regressors.txt                        12 columns: the motion confounds
        EVs/<condition>.txt                            task events (onset, duration, amplitude)

Each ``<fMRIName>`` becomes BIDS entities (table in the README)::

    rfMRI_REST1_LR      -> task-rest   dir-LR run-1
    tfMRI_MOTOR_RL      -> task-motor  dir-RL
    rfMRI_REST1_7T_PA   -> task-rest   acq-7T dir-PA run-1
    tfMRI_MOVIE1_7T_AP  -> task-movie  acq-7T dir-AP run-1
    rfMRI_REST1_AP      -> task-rest   dir-AP run-1      (Lifespan)

Exactly one file per run is read (the chosen variant), so one output never
mixes variants of a run. Everything after discovery is shared with BIDS input.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from flatprep.exceptions import BIDSInputError

from .bids import RunSpec, failed_spec, printable, run_key

logger = logging.getLogger(__name__)

#: Surface registration -> file-name part.
REGISTRATIONS = {"MSMAll": "_Atlas_MSMAll", "MSMSulc": "_Atlas"}
#: ICA-FIX cleaning -> file-name part.
FIX_VARIANTS = {"none": "", "hp2000": "_hp2000_clean", "hp0": "_hp0_clean"}
LAYOUTS = ("auto", "bids", "hcp")
#: Entities in the order BIDS writes them, for run labels.
_LABEL_ORDER = (("sub", "subject"), ("task", "task"), ("acq", "acquisition"), ("dir", "direction"), ("run", "run"))
_LABEL = re.compile(r"[a-zA-Z0-9]+")
_FMRI_NAME = re.compile(
    r"^(?P<kind>rfMRI|tfMRI)_(?P<task>[A-Za-z]+?)(?P<run>\d*)(?:_(?P<acq>7T))?_(?P<dir>LR|RL|AP|PA)$")


def parse_fmri_name(name: str) -> dict | None:
    """BIDS entities of an HCP ``<fMRIName>``; None for folders that are not one run.

    >>> parse_fmri_name("rfMRI_REST1_7T_PA")
    {'task': 'rest', 'acquisition': '7T', 'direction': 'PA', 'run': 1}
    """
    match = _FMRI_NAME.match(name)
    if match is None:
        return None
    entities = {"task": match["task"].lower(), "acquisition": match["acq"], "direction": match["dir"],
                "run": int(match["run"]) if match["run"] else None}
    return entities


def variant_suffix(registration: str = "MSMAll", fix: str = "none") -> str:
    """File-name ending of a variant, e.g. ``_Atlas_MSMAll.dtseries.nii``."""
    if registration not in REGISTRATIONS:
        raise BIDSInputError(f"unknown HCP registration {registration!r}; choose from {', '.join(REGISTRATIONS)}")
    if fix not in FIX_VARIANTS:
        raise BIDSInputError(f"unknown HCP FIX variant {fix!r}; choose from {', '.join(FIX_VARIANTS)}")
    return f"{REGISTRATIONS[registration]}{FIX_VARIANTS[fix]}.dtseries.nii"


def hcp_subjects(root: Path) -> list[Path]:
    """Subject folders of an HCP release (those with ``MNINonLinear/Results``)."""
    return sorted(p for p in root.iterdir() if (p / "MNINonLinear" / "Results").is_dir()) if root.is_dir() else []


def detect_layout(root: str | Path, layout: str = "auto") -> str:
    """``"bids"`` or ``"hcp"`` for an input folder; with ``layout`` other than auto, that one.

    Raises
    ------
    BIDSInputError
        When auto-detection finds both layouts (or neither) in the folder.
    """
    if layout not in LAYOUTS:
        raise BIDSInputError(f"unknown input layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if layout != "auto":
        return layout
    root = Path(root)
    is_bids = (root / "dataset_description.json").exists()
    subjects = hcp_subjects(root)
    if is_bids and subjects:
        raise BIDSInputError(
            f"{root}: holds both a BIDS dataset (dataset_description.json) and HCP-pipelines subject folders "
            f"({subjects[0].name}/MNINonLinear/Results, ...); choose one with --input-layout bids or hcp")
    return "hcp" if subjects else "bids"


def _run_spec(subject: str, folder: Path, suffix: str, names: dict) -> RunSpec | None:
    entities = parse_fmri_name(folder.name)
    if entities is None:
        if any(folder.glob("*_Atlas*.dtseries.nii")):
            logger.warning("%s: skipped; %r is not an HCP run name (rfMRI_<TASK><n>[_7T]_<LR|RL|AP|PA> or "
                           "tfMRI_...)", folder, folder.name)
        return None
    bold = folder / f"{folder.name}{suffix}"
    if not bold.exists():
        others = sorted(p.name for p in folder.glob(f"{folder.name}_Atlas*.dtseries.nii"))
        if not others:
            return None  # no dense time series here (e.g. a level-2 analysis folder)
        # Kept so that the run fails alone, naming the file it needed.
        logger.warning("%s: no %s; this folder has %s (choose with --hcp-registration / --hcp-fix)",
                       folder, bold.name, ", ".join(others))
    movement = folder / "Movement_Regressors.txt"
    events = tuple(str(p) for p in sorted((folder / "EVs").glob("*.txt")))
    values = {"subject": subject, **entities}
    label = "_".join(f"{short}-{values[name]}" for short, name in _LABEL_ORDER if values.get(name) is not None)
    return RunSpec(key=run_key(values), space="fsLR", label=f"{label}_space-fsLR", bold=(str(bold),),
                   confounds=str(movement) if movement.exists() else None, events=events,
                   dataset_names=names)


def discover_hcp_runs(
    hcp_dir: str | Path,
    *,
    participant_labels: list[str] | None = None,
    tasks: list[str] | None = None,
    registration: str = "MSMAll",
    fix: str = "none",
    space: str | None = None,
) -> list[RunSpec]:
    """Find every run of an HCP-pipelines release.

    Parameters
    ----------
    hcp_dir : path
        Folder of subject folders (``<subject>/MNINonLinear/Results``).
    participant_labels, tasks : list of str, optional
        Filters as for BIDS (``sub-`` prefixes accepted; tasks as mapped, e.g. ``rest``, ``motor``).
    registration : {"MSMAll", "MSMSulc"}, default="MSMAll"
    fix : {"none", "hp2000", "hp0"}, default="none"
        Read the ICA-FIX cleaned variant.
    space : str, optional
        Only ``fsLR`` exists in these trees.

    Returns
    -------
    list of RunSpec, sorted by label
    """
    root = Path(hcp_dir).resolve()
    suffix = variant_suffix(registration, fix)
    if space not in (None, "fsLR"):
        raise BIDSInputError(f"{root}: HCP-pipelines trees hold fs_LR CIFTI only; --space {space} is not available")
    wanted = {label.removeprefix("sub-") for label in participant_labels or []}
    subjects = [p for p in hcp_subjects(root) if not wanted or p.name in wanted]
    names = {"hcp": str(root)}
    specs = []
    for subject in subjects:
        if not _LABEL.fullmatch(subject.name):  # fails alone: its name would break output names and runs.tsv
            specs.append(failed_spec(f"sub-{printable(subject.name)}", f"{printable(str(subject))}: subject folder "
                                      "name is not a BIDS label (letters and digits only); rename the folder", names))
            continue
        for folder in sorted((subject / "MNINonLinear" / "Results").iterdir()):
            spec = _run_spec(subject.name, folder, suffix, names) if folder.is_dir() else None
            if spec is not None and (not tasks or dict(spec.key).get("task") in tasks):
                specs.append(spec)
    if not specs:
        raise BIDSInputError(
            f"{root}: no HCP runs (*/MNINonLinear/Results/<fMRIName>/<fMRIName>{suffix}) match "
            f"participants {sorted(wanted) or '(all)'} and tasks {tasks or '(all)'}")
    return sorted(specs, key=lambda s: s.label)
