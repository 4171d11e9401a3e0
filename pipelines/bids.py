"""Discovery: find the surface BOLD runs of a BIDS dataset and its fMRIPrep derivatives.

Each run becomes a small picklable :class:`RunSpec` (paths and entities only),
which is all a Dask task needs to process it.

A run is identified by every entity of its BOLD file except those that only
say how it was sampled (space, hemi, den, res, desc) and the suffix and
extension: ``dir-AP`` and ``dir-PA`` are two runs, and so are ``echo-1`` and
``echo-2``. Sidecars are the JSON files that apply to the BOLD file under BIDS
inheritance; confounds are matched by the same full key. A file whose name
is not valid BIDS (a label outside ``[a-zA-Z0-9]``, an entity pybids does not
know, a control character) becomes a run that fails alone, with one line naming the file.

Entities come from file names only (:mod:`.entities`), never from the folders
that hold a dataset. BIDS_DIR may be a derivative dataset (an fMRIPrep output
folder) with the raw dataset optional. A run that two derivative folders (or two
files) give is taken from the first, with a warning naming both.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flatprep.exceptions import BIDSInputError
from flatprep.spaces import SPACE_PREFERENCE

logger = logging.getLogger(__name__)

#: Volume BOLD files (fMRIPrep ``*_space-<MNI>[_res-N]_desc-preproc_bold.nii.gz``).
_VOLUME_EXTENSIONS = (".nii.gz", ".nii")
#: Preferred resolution when a volume space comes in several (fMRIPrep's res-2 grid first).
_RESOLUTION_PREFERENCE = ("2",)
#: Entities that say how a run was sampled or stored, not which run it is.
NOT_RUN_KEY = frozenset({"space", "hemi", "den", "density", "res", "resolution", "desc", "suffix", "extension",
                         "datatype"})
_LABEL = re.compile(r"[a-zA-Z0-9]+")
_SAMPLING_KEYS = ("hemi", "den", "res", "desc")  # left out of run labels (space is kept)
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
    """One run in one input space: what a task needs to flatten it.

    Made by :func:`discover_runs` or :func:`flatprep.pipelines.hcp.discover_hcp_runs`
    and sent as it is to the runner's tasks (plain values only, so it pickles).

    Attributes
    ----------
    key : tuple of (str, str or int)
        The run's identity: every BIDS entity of its BOLD file except
        space/hemi/den/res/desc/suffix/extension, as sorted (name, value) pairs.
    space : str
        Input space name (``fsaverage5``, ``fsaverage6``, ``fsaverage``, ``fsLR``, ``fsnative``,
        ``MNI152NLin6Asym``, ``MNI152NLin2009cAsym``).
    label : str
        Readable run name, e.g. ``sub-01_task-rest_dir-AP_run-1_space-fsLR``.
    bold : tuple of str
        ``(left.func.gii, right.func.gii)``, ``(dtseries.nii,)`` or ``(preproc_bold.nii.gz[, brain_mask.nii.gz])``.
    sidecars : tuple of str
        JSON sidecars that apply under BIDS inheritance: each BOLD file's own
        chain (most specific first), then the raw dataset's; then the sidecars
        of the same acquisition in other spaces (see :func:`flatprep.io.run_repetition_time`).
    confounds : str or None
        fMRIPrep confounds TSV with the same run key (or HCP ``Movement_Regressors.txt``).
    events : tuple of str
        Files whose events are stored with the run (HCP ``EVs/*.txt``).
    surfaces : tuple of str
        fsnative only: left and right registration spheres, then left and right
        cortex masks ("" where there is none); a missing sphere is named by its
        expected path, so that the run fails alone saying which file it needs.
    dataset_names : dict
        ``{"raw": BIDS_DIR, name: derivative folder}`` for BIDS URIs in outputs.
    resolution : str or None
        ``res-`` entity of a volume input (kept in the output names).
    error : str
        Non-empty for a run that cannot be processed (e.g. a file name that is
        not valid BIDS): the one line reported for it.
    """

    key: tuple
    space: str
    label: str
    bold: tuple
    sidecars: tuple = ()
    confounds: str | None = None
    events: tuple = ()
    surfaces: tuple = ()
    dataset_names: dict = field(default_factory=dict, hash=False, compare=False)
    resolution: str | None = None
    error: str = ""

    @property
    def entities(self) -> dict:
        """BIDS entities of the outputs: the run key plus the space (only the subject for a broken name)."""
        return output_entities(dict(self.key) | ({"space": self.space} if self.space else {})
                               | {"resolution": self.resolution})

    @property
    def subject(self) -> str | None:
        return dict(self.key).get("subject")

    def to_dict(self) -> dict:
        return asdict(self)


def output_entities(values: dict) -> dict:
    """Entities of a run's outputs: None dropped; fs_LR outputs carry ``den-91k`` as fMRIPrep's inputs do."""
    values = {k: v for k, v in values.items() if v is not None}
    if values.get("space") == "fsLR":
        values["density"] = "91k"
    return values


def output_entity_names() -> frozenset:
    """Entities that flatprep's run output names can carry (from the patterns in ``bids_specs/``)."""
    from .specs import load_spec

    pattern = load_spec("flatprep.json")["default_path_patterns"][0]
    return frozenset(re.findall(r"\{(\w+)", pattern))


def _check_derivative(name: str, path: Path) -> Path:
    if not path.is_dir():
        raise BIDSInputError(f"{path}: derivatives folder {name!r} does not exist")
    description = path / "dataset_description.json"
    if not description.exists():
        raise BIDSInputError(
            f"{path}: derivatives folder {name!r} has no dataset_description.json; "
            "BIDS derivatives must have one (fMRIPrep writes it)"
        )
    _description(path)
    return path


def _description(root: Path) -> dict:
    """``root/dataset_description.json``, read (errors name the file)."""
    from flatprep.exceptions import InputError
    from flatprep.io import read_json

    try:
        return read_json(root / "dataset_description.json")
    except InputError as err:
        raise BIDSInputError(str(err)) from None


def is_derivative(root: Path) -> bool:
    """Whether ``root``'s dataset_description.json says ``"DatasetType": "derivative"``."""
    return _description(root).get("DatasetType") == "derivative"


def input_datasets(bids_dir: Path, derivatives: dict | None, bids_raw: str | Path | None
                   ) -> tuple[Path | None, dict[str, Path]]:
    """``(raw dataset or None, {name: derivative folder})`` of a job, in priority order.

    A raw BIDS_DIR: its derivatives (:func:`find_derivatives`). A derivative
    BIDS_DIR (fMRIPrep's output folder, as OpenNeuro Derivatives publishes it) is
    the first derivative; the raw dataset is optional, from ``bids_raw`` or ``-d raw=PATH``.
    """
    if not is_derivative(bids_dir):
        if bids_raw is not None or "raw" in (derivatives or {}):
            flag = "--bids-raw" if bids_raw is not None else "-d raw=PATH"
            raise BIDSInputError(f"{bids_dir}: {flag} is for a derivative BIDS_DIR (DatasetType derivative); "
                                 "this is a raw dataset, give its derivatives with -d NAME=PATH")
        return bids_dir, find_derivatives(bids_dir, derivatives)
    others = dict(derivatives or {})
    raw = bids_raw if bids_raw is not None else others.pop("raw", None)
    found = {bids_dir.name: bids_dir} | {name: _check_derivative(name, Path(p).resolve())
                                         for name, p in others.items() if Path(p).resolve() != bids_dir}
    if raw is None:
        return None, found
    raw = Path(raw).resolve()
    if not (raw / "dataset_description.json").exists():
        raise BIDSInputError(f"{raw}: the raw dataset given has no dataset_description.json")
    _description(raw)  # readable, before pybids reads it
    return raw, found


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
            f"{bids_dir}: no derivatives found under {root}; run fMRIPrep with surface outputs, "
            "name them with -d fmriprep=PATH, or give the fMRIPrep folder itself as BIDS_DIR"
        )
    return {name: _check_derivative(name, path) for name, path in found.items()}


def _strip_sub(labels):
    return [label[4:] if label.startswith("sub-") else label for label in labels] if labels else None


# --------------------------------------------------------------------------- names and run keys


def entity_keys(layout) -> dict[str, str]:
    """File-name key (``dir``) -> pybids entity name (``direction``), from every config of the layout."""
    keys = {}
    for lay in (layout, *layout.derivatives.values()):
        for config in lay.config.values():
            for entity in config.entities.values():
                found = re.search(r"([a-zA-Z]+)-\(", entity.pattern)
                if found:
                    keys.setdefault(found.group(1), entity.name)
    return keys


def _same_label(parsed, text: str) -> bool:
    if parsed is None:
        return False
    return str(parsed) == text or (text.isdigit() and str(parsed).isdigit() and int(parsed) == int(text))


def name_problem(path: Path, entities: dict, keys: dict[str, str], root: Path) -> str:
    """Why ``path`` is not a BIDS name that pybids reads in full ("" when it is).

    Every ``key-label`` pair must be letters and digits (``[a-zA-Z0-9]``), name an
    entity pybids knows, and be read back by pybids with the same label; the
    ``sub-``/``ses-`` folders must agree with the file name.
    """
    if not path.name.isprintable():
        bad = next(c for c in path.name if not c.isprintable())
        return f"{printable(str(path))}: the file name holds the control character {bad!r}; rename the file"
    *pairs, suffix = path.name.split(".")[0].split("_")
    fix = "BIDS labels are letters and digits only ([a-zA-Z0-9]); rename the file"
    if not _LABEL.fullmatch(suffix):
        return f"{path}: suffix {suffix!r} is not valid BIDS; {fix}"
    labels = {}
    for pair in pairs:
        key, sep, label = pair.partition("-")
        if not sep or not _LABEL.fullmatch(key):
            return f"{path}: {pair!r} is not a BIDS key-label pair; {fix}"
        if not _LABEL.fullmatch(label):
            return f"{path}: {key} label {label!r} is not valid BIDS; {fix}"
        if key not in keys:
            return f"{path}: {key!r} is not a BIDS entity; rename the file"
        if not _same_label(entities.get(keys[key]), label):
            return f"{path}: pybids cannot read {keys[key]} label {label!r}; rename the file"
        labels[key] = label
    for folder in path.relative_to(root).parts[:-1]:
        key, sep, label = folder.partition("-")
        if key in ("sub", "ses") and sep and labels.get(key) != label:
            return f"{path}: folder {folder!r} does not match the file name ({key}-{labels.get(key)}); {fix}"
    return ""


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``): a name stays one line in logs and tables."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def run_key(entities: dict) -> tuple:
    """A run's identity: its entities except space/hemi/den/res/desc/suffix/extension, sorted."""
    return tuple(sorted((k, v) for k, v in entities.items() if k not in NOT_RUN_KEY and v is not None))


def run_label(path: str | Path) -> str:
    """Readable run name from a BOLD file name: its pairs without hemi/den/res/desc and the suffix."""
    *pairs, _ = Path(path).name.split(".")[0].split("_")
    return "_".join(p for p in pairs if p.partition("-")[0] not in _SAMPLING_KEYS)


def inherited_sidecars(folder: Path, entities: dict, by_folder: dict, root: Path) -> list[tuple]:
    """JSON files that apply to a file in ``folder`` under BIDS inheritance.

    A candidate (``by_folder``: folder -> ``[(path, entities)]``) applies when it
    sits in ``folder`` or one of its parents up to ``root`` and each of its
    entities has the file's value. Returns ``(rank, path)`` pairs; a higher rank
    is more specific (deeper, then more entities).
    """
    found = []
    for parent in (folder, *folder.parents):
        for path, values in by_folder.get(parent, ()):
            if all(entities.get(k) == v for k, v in values.items()):
                found.append(((len(parent.parts), len(values)), str(path)))
        if parent == root:
            break
    return found


@dataclass
class _Index:
    """What discovery needs from the layout, read once."""

    raw: Path | None  # None: a derivative BIDS_DIR given alone
    roots: dict  # derivative name -> root, in priority order
    keys: dict  # file-name key -> entity name
    sidecars: dict  # folder -> [(path, entities)] of *_bold.json with valid names
    confounds: dict  # run key -> confounds TSVs, newest naming first
    layout: object = None  # the BIDSLayout, for queries that depend on a run (volume brain masks)
    scope: str = "derivatives"  # where BOLD files are ("all" when a derivative is the layout's root)
    by_key: dict = field(default_factory=lambda: defaultdict(list))  # run key -> its sidecars' paths

    def root_of(self, path: Path) -> Path:
        """The dataset (derivative folder, else the raw one) that holds ``path``."""
        for root in sorted(self.roots.values(), key=lambda p: -len(p.parts)):
            if root in path.parents:
                return root
        return self.raw if self.raw is not None else next(iter(self.roots.values()))


def _entities(bids_file) -> dict:
    return {k: v for k, v in bids_file.get_entities().items() if k not in ("suffix", "extension")}


def _index(layout, raw: Path | None, roots: dict) -> _Index:
    index = _Index(raw, roots, entity_keys(layout), defaultdict(list), {}, layout,
                   "derivatives" if raw is not None else "all")
    for item in layout.get(suffix="bold", extension=".json", scope="all", return_type="object"):
        path = Path(item.path)
        if not name_problem(path, item.get_entities(), index.keys, index.root_of(path)):
            index.sidecars[path.parent].append((path, _entities(item)))
            index.by_key[run_key(item.get_entities())].append(str(path))
    for query in CONFOUNDS_QUERIES:  # newest naming first: it wins where a run has several
        for item in sorted(layout.get(**query, extension=".tsv", scope=index.scope, return_type="object"),
                           key=lambda f: f.path):
            path = Path(item.path)
            # fMRIPrep 1.0-1.1 named confounds ``<stem>_bold_confounds.tsv``, not a BIDS name.
            legacy = query.get("suffix") == "confounds"
            if legacy or not name_problem(path, item.get_entities(), index.keys, index.root_of(path)):
                index.confounds.setdefault(run_key(item.get_entities()), []).append(item.path)
    return index


def _ignored(participant_labels: list[str] | None) -> list:
    """pybids' default ignore list plus, when labels are given, every other subject's folder.

    A job on a few participants of a large dataset then indexes those
    participants only (in the raw dataset and in each derivative), not all of them.
    """
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    ignored = list(DEFAULT_LOCATIONS_TO_IGNORE)
    if participant_labels:
        labels = "|".join(re.escape(label) for label in _strip_sub(participant_labels))
        # Only folders with valid labels: pybids may read an invalid one (sub-a b) as a wanted subject (a),
        # and such a run must still be listed, to fail alone.
        ignored.append(re.compile(rf"^/sub-(?!(?:{labels})(?:/|$))[a-zA-Z0-9]+(?:/|$)"))
    return ignored


def _open_layout(raw: Path | None, deriv: dict[str, Path], participant_labels):
    """One BIDSLayout over the raw dataset (if any) and the derivatives, entities read from file names only.

    With no raw dataset, the first derivative is the layout's root.
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

    from .entities import anchored_configs

    # Sidecars are read per run; indexing metadata would also fail on real fMRIPrep
    # CIFTI sidecars, whose "space" key ("HCP grayordinates") conflicts with space-fsLR.
    indexer = BIDSLayoutIndexer(index_metadata=False, ignore=_ignored(participant_labels))
    named = list(deriv.items())
    root, others = (raw, named) if raw is not None else (named[0][1], named[1:])
    try:
        layout = BIDSLayout(str(root), validate=False, indexer=indexer, is_derivative=raw is None,
                            config=anchored_configs(derivative=raw is None))
        # Each under its own name (pybids' add_derivatives keys them by folder name: two "fmriprep" would clash);
        # ``root`` is the folder being indexed, which an error names.
        for name, root in others:
            layout.derivatives[name] = BIDSLayout(str(root), validate=False, indexer=indexer, is_derivative=True,
                                                  sources=layout, config=anchored_configs(derivative=True))
    except Exception as err:  # pybids raises several types for unusable folders
        raise BIDSInputError(f"{root}: pybids cannot index the dataset ({printable(str(err))})") from err
    return layout


def discover_runs(
    bids_dir: str | Path,
    *,
    derivatives: dict[str, str | Path] | None = None,
    participant_labels: list[str] | None = None,
    session_labels: list[str] | None = None,
    tasks: list[str] | None = None,
    space: str | None = None,
    bids_filters: dict | None = None,
    bids_raw: str | Path | None = None,
) -> list[RunSpec]:
    """Find every BOLD run of a dataset's derivatives: surface GIFTI/CIFTI or MNI volume.

    One run per :func:`run_key` (its entities but space and sampling), in the
    first space of :data:`SPACE_PREFERENCE` that the run has. Entities come from
    file names (and ``sub-``/``ses-`` folders) inside each dataset, never from
    the folders that hold it.

    Parameters
    ----------
    bids_dir : path
        Raw BIDS dataset, or a derivative dataset (``"DatasetType": "derivative"``
        in its dataset_description.json, e.g. an fMRIPrep output folder).
    derivatives : dict, optional
        ``{name: path}`` of derivative folders; default: every folder in
        ``BIDS_DIR/derivatives`` (none beyond BIDS_DIR itself for a derivative
        BIDS_DIR, where ``raw`` names the raw dataset). Where two give the same
        run, the first named wins (by folder name for the default), with a warning.
    participant_labels, session_labels, tasks : list of str, optional
        Filters (``sub-`` prefixes are accepted and removed).
    space : str, optional
        Use only this input space; default: the preferred one each run has.
    bids_filters : dict, optional
        Extra pybids filters applied to the BOLD query (e.g. ``{"acquisition": "mb"}``).
    bids_raw : path, optional
        The raw dataset of a derivative BIDS_DIR (its sidecars apply by inheritance).

    Returns
    -------
    list of RunSpec, sorted by label
        Runs whose files cannot be used as named (see :func:`name_problem`)
        are included with ``error`` set, so that they fail alone.
    """
    bids_dir = Path(bids_dir).resolve()
    if not (bids_dir / "dataset_description.json").exists():
        raise BIDSInputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    raw, deriv = input_datasets(bids_dir, derivatives, bids_raw)
    layout = _open_layout(raw, deriv, participant_labels)
    query = dict(bids_filters or {})
    if participant_labels:
        query["subject"] = _strip_sub(participant_labels)
    if session_labels:
        query["session"] = [s[4:] if s.startswith("ses-") else s for s in session_labels]
    if tasks:
        query["task"] = tasks
    index = _index(layout, raw, deriv)
    files = layout.get(suffix="bold", extension=[".func.gii", ".dtseries.nii", *_VOLUME_EXTENSIONS],
                       scope=index.scope, return_type="object", **query)
    files += _legacy_bold_files(deriv.values(), query)
    names = ({"raw": str(raw)} if raw is not None else {}) | {name: str(path) for name, path in deriv.items()}
    specs = _group_runs(files, index, space, names)
    if not specs:
        wanted = f" in space {space}" if space else ""
        raise BIDSInputError(
            f"{bids_dir}: no surface BOLD runs{wanted} match the filters {query or '(none)'} "
            f"in derivatives {', '.join(str(p) for p in deriv.values())}"
        )
    return sorted(specs, key=lambda s: s.label)


def _group_runs(files, index: _Index, space: str | None, names: dict) -> list[RunSpec]:
    """One spec per run key (in its chosen space), plus one failed spec per badly named run."""
    groups: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    broken: dict[str, list] = defaultdict(list)
    for bold in files:
        path, ents = Path(bold.path), bold.get_entities()
        # Legacy names were matched by our own patterns, whose labels are already [a-zA-Z0-9].
        problem = "" if isinstance(bold, _NamedFile) else name_problem(path, ents, index.keys, index.root_of(path))
        if problem:
            broken[printable(run_label(path))].append((problem, path))
        elif "space" in ents and not (_is_volume(bold.path) and ents.get("desc") != "preproc"):
            groups[run_key(ents)][ents["space"]].append(bold)
    specs = []
    for key, by_space in groups.items():
        chosen = _choose_space(by_space, space)
        if chosen is not None:
            spec = _make_spec(index, key, chosen, by_space[chosen], names)
            if spec is not None:
                specs.append(spec)
    taken = {spec.label for spec in specs}
    for label, problems in broken.items():
        problem, path = sorted(problems)[0]
        if label in taken:  # e.g. sub-02's file in sub-01's folder: its own line in runs.tsv, not sub-02's
            label = printable(str(path.parent.relative_to(index.root_of(path)) / label))
        specs.append(failed_spec(label, problem, names))
    return specs


def failed_spec(label: str, problem: str, names: dict) -> RunSpec:
    """A run that fails alone with ``problem`` (its one line); the subject comes from ``label``'s ``sub-`` pair."""
    first = label.split("_")[0]
    subject = first[4:] if first.startswith("sub-") else None
    return RunSpec(key=(("subject", subject),), space="", label=label, bold=(), dataset_names=names, error=problem)


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


def _volume_inputs(layout, files, space: str, filters: dict, scope: str) -> tuple[list, tuple, str | None]:
    """The chosen volume file of a run (as a list), its brain mask (``()`` or ``(path,)``) and ``res-`` entity.

    Of several resolutions, res-2 is preferred, else the first in name order; the brain
    mask must carry the run's entities, space and resolution.
    """
    from bids.layout import Query

    volumes = sorted((f for f in files if _is_volume(f.path)), key=lambda f: f.path)
    if not volumes:
        return [], (), None
    chosen = next((f for r in _RESOLUTION_PREFERENCE for f in volumes if f.get_entities().get("res") == r), volumes[0])
    resolution = chosen.get_entities().get("res")
    masks = layout.get(desc="brain", suffix="mask", extension=list(_VOLUME_EXTENSIONS), scope=scope,
                       space=space, res=resolution if resolution else Query.NONE, return_type="filename",
                       **filters)
    # The mask written beside the volume first (another derivative folder may hold the same run).
    masks = sorted(masks, key=lambda m: (Path(m).parent != Path(chosen.path).parent, m))
    return [chosen], tuple(masks[:1]), None if resolution is None else str(resolution)


def _one_source(index: _Index, files: list) -> list:
    """The files of the first dataset in ``index.roots`` order that holds any; a warning names the others."""
    by_root = defaultdict(list)
    for bold in files:
        by_root[index.root_of(Path(bold.path))].append(bold)
    if len(by_root) == 1:
        return files
    order = list(index.roots.values())
    first, *others = sorted(by_root, key=lambda root: order.index(root) if root in order else len(order))
    logger.warning("%s: the same run is in %s; using %s (the derivative named first: -d order, else by folder "
                   "name; choose one with -d NAME=PATH)", printable(run_label(files[0].path)),
                   " and ".join(printable(min(f.path for f in by_root[r])) for r in (first, *others)), first)
    return by_root[first]


def _first_of_each(files: list, part, *, order=lambda f: f.path, rule: str = "by name") -> list:
    """The first file (by ``order``, which ``rule`` describes) of each ``part(file)``; a warning names the others."""
    groups = defaultdict(list)
    for bold in sorted(files, key=order):
        groups[part(bold)].append(bold)
    for group in groups.values():
        if len(group) > 1:
            logger.warning("%s: several files give this run: %s; using the first %s", printable(group[0].path),
                           ", ".join(printable(Path(f.path).name) for f in group[1:]), rule)
    return [group[0] for group in groups.values()]


def _run_sidecars(index: _Index, key: tuple, chosen: list) -> tuple[tuple, str | None]:
    """``(sidecars, confounds)`` of a run whose BOLD files are ``chosen``.

    Sidecars: those that apply under BIDS inheritance (derivative before raw,
    most specific first), then those of the same acquisition in other spaces
    (same run key; fMRIPrep <= 20.2 wrote the TR beside the volume only), from
    the run's own dataset or the raw one. Confounds: the run key's, from the
    run's own dataset where it has them.
    """
    ranked = []
    for bold in chosen:
        path = Path(bold.path)
        root = index.root_of(path)
        ranked += [((1, *rank), p) for rank, p in
                   inherited_sidecars(path.parent, _entities(bold), index.sidecars, root)]
        # The raw dataset's sidecars apply as to a raw BOLD file with the same run key and folder.
        if index.raw is not None:
            raw_folder = index.raw / path.parent.relative_to(root)
            raw_entities = dict(key) | {"datatype": bold.get_entities().get("datatype")}
            ranked += [((0, *rank), p) for rank, p in
                       inherited_sidecars(raw_folder, raw_entities, index.sidecars, index.raw)]
    root = index.root_of(Path(chosen[0].path))
    same_acquisition = [p for p in sorted(index.by_key.get(key, ())) if index.root_of(Path(p)) in (root, index.raw)]
    sidecars = [p for _, p in sorted(ranked, key=lambda rp: rp[0], reverse=True)] + same_acquisition
    confounds = index.confounds.get(key, [])
    confounds = next((p for p in confounds if index.root_of(Path(p)) == root), confounds[0] if confounds else None)
    return tuple(dict.fromkeys(sidecars)), confounds


def _make_spec(index: _Index, key: tuple, space: str, files: list, names: dict) -> RunSpec | None:
    resolution, mask = None, ()
    files = _one_source(index, files)
    if all(_is_volume(f.path) for f in files):
        chosen, mask, resolution = _volume_inputs(index.layout, files, space, dict(key), index.scope)
    elif space == "fsLR":
        chosen = _first_of_each([f for f in files if f.path.endswith(".dtseries.nii")], lambda f: "",
                                # den-91k first: the density fMRIPrep writes by default, and flatprep's fsLR
                                order=lambda f: (f.get_entities().get("den") != "91k", f.path),
                                rule="with den-91k, by name")
    else:
        by_hemi = {f.get_entities().get("hemi"): f for f in _first_of_each(
            [f for f in files if f.path.endswith(".func.gii")], lambda f: f.get_entities().get("hemi"))}
        # A run missing a hemisphere is kept, so that it fails later with a clear message.
        chosen = [by_hemi[h] for h in ("L", "R") if h in by_hemi]
    if not chosen:
        return None
    label = chosen[0].label if isinstance(chosen[0], _NamedFile) else run_label(chosen[0].path)
    if resolution is not None:
        label += f"_res-{resolution}"
    extra = sorted(set(dict(key)) - output_entity_names())
    if extra:
        return failed_spec(label, f"{chosen[0].path}: entity {extra[0]!r} cannot be carried by flatprep's output "
                                  "names (bids_specs/flatprep.json); select runs with --bids-filter-file", names)
    sidecars, confounds = _run_sidecars(index, key, chosen)
    surfaces = ()
    if space == "fsnative":
        from flatprep.fsnative import find_native_surfaces

        values = dict(key)
        surfaces = find_native_surfaces(values["subject"], list(index.roots.values()), session=values.get("session"))
    return RunSpec(key=key, space=space, label=label, bold=tuple(f.path for f in chosen) + mask,
                   sidecars=sidecars, confounds=confounds, surfaces=surfaces, dataset_names=names,
                   resolution=resolution)


class _NamedFile:
    """A file found by name outside pybids (legacy fMRIPrep names), with the BIDSFile calls used here."""

    def __init__(self, path: Path, entities: dict, label: str):
        self.path, self._entities, self.label = str(path), entities, label

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
            entities |= {"space": match["space"], "hemi": match["hemi"], "suffix": "bold", "datatype": "func"}
            wanted = all(str(entities.get(k)) in {str(v) for v in (want if isinstance(want, list) else [want])}
                         for k, want in query.items())
            if wanted:
                found.append(_NamedFile(path, entities, f"{match['stem']}_space-{match['space']}"))
    return found
