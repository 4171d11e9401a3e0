"""Discovery: find the surface BOLD runs of a BIDS dataset and its fMRIPrep derivatives.

Each run becomes a small picklable :class:`RunSpec` (paths and entities only),
which is all a Dask task needs to process it.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flatprep.exceptions import BIDSInputError

logger = logging.getLogger(__name__)

#: Preferred input space when a run has several (finest sampling of the 1.2 mm grid first).
SPACE_PREFERENCE = ("fsaverage", "fsaverage6", "fsLR", "fsaverage5", "fsnative")
_RUN_ENTITIES = ("subject", "session", "task", "acquisition", "direction", "run")
#: Surface BOLD as fMRIPrep <= 20.2 named it, without a ``bold`` suffix (pybids finds the later names itself):
#: 1.0-1.1 ``<stem>_bold_space-fsaverage5.L.func.gii``; 1.2-20.2 ``<stem>_space-fsaverage5_hemi-L.func.gii``.
LEGACY_BOLD_PATTERNS = (
    re.compile(r"^(?P<stem>sub-.+?)_bold_space-(?P<space>[a-zA-Z0-9]+)\.(?P<hemi>[LR])\.func\.gii$"),
    re.compile(r"^(?P<stem>sub-.+?)_space-(?P<space>[a-zA-Z0-9]+)_hemi-(?P<hemi>[LR])\.func\.gii$"),
)
#: Confounds, newest naming first: >= 20 ``desc-confounds_timeseries``, 1.2-1.5 ``desc-confounds_regressors``,
#: 1.0-1.1 ``<stem>_bold_confounds.tsv``.
CONFOUNDS_QUERIES = ({"desc": "confounds", "suffix": "timeseries"}, {"desc": "confounds", "suffix": "regressors"},
                     {"suffix": "confounds"})
_STEM_ENTITY = re.compile(r"(?:^|_)(sub|ses|task|acq|dir|run)-([a-zA-Z0-9]+)")
_STEM_NAMES = {"sub": "subject", "ses": "session", "task": "task", "acq": "acquisition", "dir": "direction",
               "run": "run"}




@dataclass(frozen=True)
class RunSpec:
    """One run in one surface space: what a task needs to flatten it.

    Attributes
    ----------
    subject, session, task, acquisition : str or None
    run : int or None
    space : str
        Input space name (``fsaverage5``, ``fsaverage6``, ``fsaverage``, ``fsLR``, ``fsnative``).
    bold : tuple of str
        ``(left.func.gii, right.func.gii)`` or ``(dtseries.nii,)``.
    sidecars : tuple of str
        JSON sidecars, most specific first (derivative, then raw).
    confounds : str or None
        fMRIPrep confounds TSV (or HCP ``Movement_Regressors.txt``).
    direction : str or None
        Phase-encoding direction (``dir-`` entity).
    events : tuple of str
        Files whose events are stored with the run (HCP ``EVs/*.txt``).
    surfaces : tuple of str
        fsnative only: left and right registration spheres, then left and right
        cortex masks ("" where there is none); a missing sphere is named by its
        expected path, so that the run fails alone saying which file it needs.
    dataset_names : dict
        ``{"raw": BIDS_DIR, name: derivative folder}`` for BIDS URIs in outputs.
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
    direction: str | None = None
    events: tuple = ()
    surfaces: tuple = ()
    dataset_names: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def entities(self) -> dict:
        """BIDS entities of the output (None values dropped)."""
        return output_entities({k: getattr(self, k) for k in _RUN_ENTITIES} | {"space": self.space})

    @property
    def label(self) -> str:
        """Readable run name, e.g. ``sub-01_ses-1_task-rest_run-1_space-fsLR``."""
        keys = (("sub", self.subject), ("ses", self.session), ("task", self.task), ("acq", self.acquisition),
                ("dir", self.direction), ("run", self.run), ("space", self.space))
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


def _is_freesurfer(path: Path) -> bool:
    """A FreeSurfer SUBJECTS_DIR (fMRIPrep < 21 wrote ``derivatives/freesurfer`` beside ``fmriprep``): no BOLD,
    no dataset_description.json; its spheres are found by :func:`flatprep.fsnative.find_native_surfaces`."""
    return (path / "fsaverage").is_dir() or any(path.glob("sub-*/surf"))


def find_derivatives(bids_dir: Path, derivatives: dict[str, str | Path] | None) -> dict[str, Path]:
    """Derivative folders to search: the given ones, else ``BIDS_DIR/derivatives/*``."""
    if derivatives:
        return {name: _check_derivative(name, Path(p).resolve()) for name, p in derivatives.items()}
    root = bids_dir / "derivatives"
    found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not _is_freesurfer(p)} \
        if root.is_dir() else {}
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
    files = layout.get(suffix="bold", extension=[".func.gii", ".dtseries.nii"], scope="derivatives",
                       return_type="object", **query)
    files += _legacy_bold_files(deriv.values(), query)
    groups: dict[tuple, dict] = defaultdict(dict)
    for bold in files:
        ents = bold.get_entities()
        if "space" not in ents:
            continue
        key = tuple(ents.get(k) for k in _RUN_ENTITIES)
        groups[key].setdefault(ents["space"], []).append(bold)
    names = {"raw": str(bids_dir)} | {name: str(path) for name, path in deriv.items()}
    specs = []
    for key, by_space in groups.items():
        chosen = _choose_space(by_space, space)
        if chosen is None:
            continue
        spec = _make_spec(layout, key, chosen, by_space[chosen], names, list(deriv.values()))
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
    return None


def _make_spec(layout, key, space, files, names, roots) -> RunSpec | None:
    if space == "fsLR":
        bold = tuple(sorted(f.path for f in files if f.path.endswith(".dtseries.nii")))[:1]
    else:
        by_hemi = {f.get_entities().get("hemi"): f.path for f in files if f.path.endswith(".func.gii")}
        # A run missing a hemisphere is kept, so that it fails later with a clear message.
        bold = tuple(by_hemi[h] for h in ("L", "R") if h in by_hemi)
    if not bold:
        return None
    sidecars = [str(Path(p).with_name(Path(p).name.split(".")[0] + ".json")) for p in bold]
    filters = {k: v for k, v in zip(_RUN_ENTITIES, key) if v is not None}
    raw = layout.get(suffix="bold", extension=".nii.gz", scope="raw", return_type="filename", **filters) or \
        layout.get(suffix="bold", extension=".json", scope="raw", return_type="filename", **filters)
    sidecars += [str(Path(p).with_name(Path(p).name.split(".")[0] + ".json")) for p in raw]
    confounds = next((found for q in CONFOUNDS_QUERIES if (found := layout.get(
        **q, extension=".tsv", scope="derivatives", return_type="filename", **filters))), None)
    surfaces = ()
    if space == "fsnative":
        from flatprep.fsnative import find_native_surfaces

        surfaces = find_native_surfaces(filters["subject"], roots, session=filters.get("session"))
    return RunSpec(
        **dict(zip(_RUN_ENTITIES, key)), space=space,
        bold=bold, sidecars=tuple(dict.fromkeys(s for s in sidecars if Path(s).exists())),
        confounds=confounds[0] if confounds else None, surfaces=surfaces, dataset_names=names,
    )


class _NamedFile:
    """A file found by name outside pybids (legacy fMRIPrep names), with the BIDSFile calls used here."""

    def __init__(self, path: Path, entities: dict):
        self.path, self._entities = str(path), entities

    def get_entities(self) -> dict:
        return dict(self._entities)


def _legacy_bold_files(roots, query: dict) -> list[_NamedFile]:
    """Surface BOLD named as fMRIPrep 1.x wrote it, filtered like the pybids query."""
    found = []
    for root in roots:
        for path in sorted(Path(root).glob("sub-*/**/func/*.func.gii")):
            match = next((m for p in LEGACY_BOLD_PATTERNS if (m := p.match(path.name))), None)
            if match is None:
                continue
            entities = {_STEM_NAMES[k]: v for k, v in _STEM_ENTITY.findall(match["stem"])}
            if "run" in entities:
                entities["run"] = int(entities["run"])
            entities |= {"space": match["space"], "hemi": match["hemi"], "suffix": "bold"}
            wanted = all(str(entities.get(k)) in {str(v) for v in (want if isinstance(want, list) else [want])}
                         for k, want in query.items())
            if wanted:
                found.append(_NamedFile(path, entities))
    return found
