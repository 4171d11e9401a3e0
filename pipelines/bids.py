"""Discovery: find the surface BOLD runs of a BIDS dataset and its fMRIPrep derivatives.

Each run becomes a small picklable :class:`RunSpec` (paths and entities only),
which is all a Dask task needs to process it.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flatprep.exceptions import BIDSInputError

logger = logging.getLogger(__name__)

#: Preferred input space when a run has several (finest sampling of the 1.2 mm grid first). Surfaces
#: come before MNI volumes: they were sampled from each subject's own cortex, volumes from a group ribbon.
SPACE_PREFERENCE = ("fsaverage", "fsaverage6", "fsLR", "fsaverage5", "MNI152NLin6Asym", "MNI152NLin2009cAsym")
#: Volume BOLD files (fMRIPrep ``*_space-<MNI>[_res-N]_desc-preproc_bold.nii.gz``).
_VOLUME_EXTENSIONS = (".nii.gz", ".nii")
#: Preferred resolution when a volume space comes in several (fMRIPrep's res-2 grid first).
_RESOLUTION_PREFERENCE = ("2",)
_RUN_ENTITIES = ("subject", "session", "task", "acquisition", "run")




@dataclass(frozen=True)
class RunSpec:
    """One run in one surface space: what a task needs to flatten it.

    Attributes
    ----------
    subject, session, task, acquisition : str or None
    run : int or None
    space : str
        Input space name (``fsaverage5``, ``fsaverage6``, ``fsaverage``, ``fsLR``).
    bold : tuple of str
        ``(left.func.gii, right.func.gii)`` or ``(dtseries.nii,)``.
    sidecars : tuple of str
        JSON sidecars, most specific first (derivative, then raw).
    confounds : str or None
        fMRIPrep confounds TSV.
    dataset_names : dict
        ``{"raw": BIDS_DIR, name: derivative folder}`` for BIDS URIs in outputs.
    resolution : str or None
        ``res-`` entity of a volume input (kept in the output names).
    """

    subject: str
    session: str | None
    task: str
    acquisition: str | None
    run: int | None
    space: str
    bold: tuple
    sidecars: tuple = ()
    confounds: str | None = None
    dataset_names: dict = field(default_factory=dict, hash=False, compare=False)
    resolution: str | None = None

    @property
    def entities(self) -> dict:
        """BIDS entities of the output (None values dropped)."""
        return output_entities({k: getattr(self, k) for k in _RUN_ENTITIES}
                               | {"space": self.space, "resolution": self.resolution})

    @property
    def label(self) -> str:
        """Readable run name, e.g. ``sub-01_ses-1_task-rest_run-1_space-fsLR``."""
        keys = (("sub", self.subject), ("ses", self.session), ("task", self.task),
                ("acq", self.acquisition), ("run", self.run), ("space", self.space), ("res", self.resolution))
        return "_".join(f"{k}-{v}" for k, v in keys if v is not None)

    def to_dict(self) -> dict:
        return asdict(self)


def output_entities(values: dict) -> dict:
    """Entities of a run's outputs: None dropped; fs_LR outputs carry ``den-91k`` as fMRIPrep's inputs do."""
    values = {k: v for k, v in values.items() if v is not None}
    if values.get("space") == "fsLR":
        values["density"] = "91k"
    return values


def _check_derivative(name: str, path: Path) -> Path:
    if not path.is_dir():
        raise BIDSInputError(f"{path}: derivatives folder {name!r} does not exist")
    description = path / "dataset_description.json"
    if not description.exists():
        raise BIDSInputError(
            f"{path}: derivatives folder {name!r} has no dataset_description.json; "
            "BIDS derivatives must have one (fMRIPrep writes it)"
        )
    try:
        json.loads(description.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BIDSInputError(f"{description}: not valid JSON ({err})") from err
    return path


def find_derivatives(bids_dir: Path, derivatives: dict[str, str | Path] | None) -> dict[str, Path]:
    """Derivative folders to search: the given ones, else ``BIDS_DIR/derivatives/*``."""
    if derivatives:
        return {name: _check_derivative(name, Path(p).resolve()) for name, p in derivatives.items()}
    root = bids_dir / "derivatives"
    found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}
    if not found:
        raise BIDSInputError(
            f"{bids_dir}: no derivatives found under {root}; run fMRIPrep with surface outputs "
            "or name them with -d fmriprep=PATH"
        )
    return {name: _check_derivative(name, path) for name, path in found.items()}


def _strip_sub(labels):
    return [label[4:] if label.startswith("sub-") else label for label in labels] if labels else None


def discover_runs(
    bids_dir: str | Path,
    *,
    derivatives: dict[str, str | Path] | None = None,
    participant_labels: list[str] | None = None,
    session_labels: list[str] | None = None,
    tasks: list[str] | None = None,
    space: str | None = None,
    bids_filters: dict | None = None,
) -> list[RunSpec]:
    """Find every surface BOLD run.

    Parameters
    ----------
    bids_dir : path
        Raw BIDS dataset (``dataset_description.json`` required).
    derivatives : dict, optional
        ``{name: path}`` of derivative folders; default: every folder in
        ``BIDS_DIR/derivatives``.
    participant_labels, session_labels, tasks : list of str, optional
        Filters (``sub-`` prefixes are accepted and removed).
    space : str, optional
        Use only this input space; default: the preferred one each run has
        (fsaverage, fsaverage6, fsLR, fsaverage5).
    bids_filters : dict, optional
        Extra pybids filters applied to the BOLD query (e.g. ``{"acquisition": "mb"}``).

    Returns
    -------
    list of RunSpec, sorted by label
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

    bids_dir = Path(bids_dir).resolve()
    if not (bids_dir / "dataset_description.json").exists():
        raise BIDSInputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    deriv = find_derivatives(bids_dir, derivatives)
    try:
        # Sidecars are read per run; indexing metadata would also fail on real fMRIPrep
        # CIFTI sidecars, whose "space" key ("HCP grayordinates") conflicts with space-fsLR.
        layout = BIDSLayout(str(bids_dir), validate=False, derivatives=[str(p) for p in deriv.values()],
                            indexer=BIDSLayoutIndexer(index_metadata=False))
    except Exception as err:  # pybids raises several types for unusable folders
        raise BIDSInputError(f"{bids_dir}: pybids cannot index the dataset ({err})") from err
    query = dict(bids_filters or {})
    if participant_labels:
        query["subject"] = _strip_sub(participant_labels)
    if session_labels:
        query["session"] = [s[4:] if s.startswith("ses-") else s for s in session_labels]
    if tasks:
        query["task"] = tasks
    files = layout.get(suffix="bold", extension=[".func.gii", ".dtseries.nii", *_VOLUME_EXTENSIONS],
                       scope="derivatives", return_type="object", **query)
    groups: dict[tuple, dict] = defaultdict(dict)
    for bold in files:
        ents = bold.get_entities()
        if "space" not in ents or (_is_volume(bold.path) and ents.get("desc") != "preproc"):
            continue
        key = tuple(ents.get(k) for k in _RUN_ENTITIES)
        groups[key].setdefault(ents["space"], []).append(bold)
    names = {"raw": str(bids_dir)} | {name: str(path) for name, path in deriv.items()}
    specs = []
    for key, by_space in groups.items():
        chosen = _choose_space(by_space, space)
        if chosen is None:
            continue
        spec = _make_spec(layout, key, chosen, by_space[chosen], names)
        if spec is not None:
            specs.append(spec)
    if not specs:
        wanted = f" in space {space}" if space else ""
        raise BIDSInputError(
            f"{bids_dir}: no surface BOLD runs{wanted} match the filters {query or '(none)'} "
            f"in derivatives {', '.join(str(p) for p in deriv.values())}"
        )
    return sorted(specs, key=lambda s: s.label)


def _choose_space(by_space: dict, space: str | None) -> str | None:
    if space is not None:
        return space if space in by_space else None
    for name in SPACE_PREFERENCE:
        if name in by_space:
            return name
    # A run whose only volumes are in another space (e.g. T1w) is kept, to fail with a clear message.
    return next((name for name, files in sorted(by_space.items()) if all(_is_volume(f.path) for f in files)), None)


def _is_volume(path: str) -> bool:
    """A NIfTI volume (``.nii[.gz]``), not a CIFTI ``.dtseries.nii``."""
    return "." + Path(path).name.split(".", 1)[-1] in _VOLUME_EXTENSIONS


def _volume_inputs(layout, files, space: str, filters: dict) -> tuple[tuple, str | None]:
    """``(bold,)`` or ``(bold, brain mask)`` of a volume run, and its ``res-`` entity.

    Of several resolutions, res-2 is preferred, else the first in name order; the brain
    mask must carry the run's entities, space and resolution.
    """
    from bids.layout import Query

    volumes = sorted((f for f in files if _is_volume(f.path)), key=lambda f: f.path)
    if not volumes:
        return (), None
    chosen = next((f for r in _RESOLUTION_PREFERENCE for f in volumes if f.get_entities().get("res") == r), volumes[0])
    resolution = chosen.get_entities().get("res")
    masks = layout.get(desc="brain", suffix="mask", extension=list(_VOLUME_EXTENSIONS), scope="derivatives",
                       space=space, res=resolution if resolution else Query.NONE, return_type="filename",
                       **filters)
    return (chosen.path, *sorted(masks)[:1]), None if resolution is None else str(resolution)


def _make_spec(layout, key, space, files, names) -> RunSpec | None:
    subject, session, task, acquisition, run = key
    filters = {k: v for k, v in zip(_RUN_ENTITIES, key) if v is not None}
    resolution = None
    if all(_is_volume(f.path) for f in files):
        bold, resolution = _volume_inputs(layout, files, space, filters)
    elif space == "fsLR":
        bold = tuple(sorted(f.path for f in files if f.path.endswith(".dtseries.nii")))[:1]
    else:
        by_hemi = {f.get_entities().get("hemi"): f.path for f in files if f.path.endswith(".func.gii")}
        # A run missing a hemisphere is kept, so that it fails later with a clear message.
        bold = tuple(by_hemi[h] for h in ("L", "R") if h in by_hemi)
    if not bold:
        return None
    volume = all(_is_volume(f.path) for f in files)
    sidecars = [str(Path(p).with_name(Path(p).name.split(".")[0] + ".json")) for p in bold[:1 if volume else None]]
    raw = layout.get(suffix="bold", extension=".nii.gz", scope="raw", return_type="filename", **filters) or \
        layout.get(suffix="bold", extension=".json", scope="raw", return_type="filename", **filters)
    sidecars += [str(Path(p).with_name(Path(p).name.split(".")[0] + ".json")) for p in raw]
    confounds = layout.get(desc="confounds", suffix="timeseries", extension=".tsv", scope="derivatives",
                           return_type="filename", **filters)
    return RunSpec(
        subject=subject, session=session, task=task, acquisition=acquisition, run=run, space=space,
        bold=bold, sidecars=tuple(dict.fromkeys(s for s in sidecars if Path(s).exists())),
        confounds=confounds[0] if confounds else None, dataset_names=names, resolution=resolution,
    )
