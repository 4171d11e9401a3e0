"""One recipe per shard set: which per-run files the group level may pack together.

Four checks on the complete per-run files, before splits are assigned:

* **Name.** A file whose name disagrees with the entities stored in it (a
  copy of another run's file) is refused.
* **Recipe.** Every packed run must share the set's target TR, cleaning
  request (:class:`flatprep.clean.CleanOptions` as asked) and per-run file
  format version; the grid is checked by :func:`flatprep.shards.collect_runs`.
  The set's recipe is the one most runs share (ties: the first run in label
  order); each other run is refused with one line naming what differs.
* **One space per acquisition.** Runs that differ only in their space
  (``space``/``den``/``res`` entities) are one acquisition: the space given
  by ``--space`` is packed when present, else the first of the participant
  level's order (:data:`flatprep.spaces.SPACE_PREFERENCE`); the others are
  left out, each with the space that was packed.
* **Duplicates.** Two runs with identical BOLD inputs (sha256 of the source
  files) or identical frames (the content checksum stored in each file) are
  one scan under two names: the first in label order is packed, the other is
  left out naming it, so a scan can never sit in train and in val/test.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .h5 import CHECKSUM_ATTR, read_run_attrs
from .spaces import SPACE_PREFERENCE

#: Entities that say how a run was sampled, not which acquisition it is.
SAMPLING_ENTITIES = frozenset({"space", "density", "den", "resolution", "res"})
#: Source files that hold the BOLD data itself (sidecars, confounds and events may be shared by runs).
_BOLD_SUFFIXES = (".func.gii", ".dtseries.nii", "_bold.nii.gz", "_bold.nii")


@dataclass(frozen=True)
class RunFacts:
    """What the group level compares between per-run files (read from their attributes).

    Attributes
    ----------
    recipe : dict
        ``target_tr`` (s), ``clean_request`` (dict), ``format_version``.
    content_sha256 : str
        Checksum of the stored frames, mean, std and mask.
    bold_sha256 : tuple of str
        sha256 of the BOLD source files, sorted (empty when not recorded).
    sources : list of dict
        The input files as recorded (``path``, ``uri``, ``sha256``).
    n_dropped : int
        Volumes dropped before the first stored frame.
    """

    recipe: dict
    content_sha256: str
    bold_sha256: tuple
    sources: list = field(hash=False)
    n_dropped: int = 0


def read_facts(output_dir: str | Path, runs: list) -> dict[str, RunFacts]:
    """label -> :class:`RunFacts` of each run (its attributes only; no frame is read)."""
    facts = {}
    for run in runs:
        attrs, _ = read_run_attrs(Path(output_dir) / run.source)
        sources = list(attrs.get("sources") or [])
        bold = tuple(sorted(s["sha256"] for s in sources
                            if s.get("sha256") and str(s.get("path", "")).endswith(_BOLD_SUFFIXES)))
        recipe = {"target_tr": float(attrs["tr_out"]), "clean_request": attrs.get("clean_request"),
                  "format_version": int(attrs["format_version"])}
        facts[run.label] = RunFacts(recipe, str(attrs.get(CHECKSUM_ATTR, "")), bold, sources,
                                    int(attrs.get("n_dropped") or 0))
    return facts


def _recipe_text(recipe: dict) -> str:
    return json.dumps({**recipe, "target_tr": round(recipe["target_tr"], 6)}, sort_keys=True)


def _recipe_difference(recipe: dict, reference: dict) -> str:
    """What differs between two recipes, in words (TR, then each cleaning option, then the format)."""
    parts = []
    if not math.isclose(recipe["target_tr"], reference["target_tr"], rel_tol=1e-6):
        parts.append(f"TR {recipe['target_tr']:g} s, the set's is {reference['target_tr']:g} s")
    ours, theirs = recipe["clean_request"] or {}, reference["clean_request"] or {}
    for key in sorted(set(ours) | set(theirs)):
        if key != "target_tr" and ours.get(key) != theirs.get(key):
            parts.append(f"cleaning {key}={ours.get(key)!r}, the set's is {theirs.get(key)!r}")
    if recipe["format_version"] != reference["format_version"]:
        parts.append(f"format version {recipe['format_version']}, the set's is {reference['format_version']}")
    return "; ".join(parts)


def set_recipe(runs: list, facts: dict[str, RunFacts]) -> dict | None:
    """The recipe most runs share (ties: the earliest run in label order); None without runs."""
    if not runs:
        return None
    ordered = sorted(runs, key=lambda r: r.label)
    counts = Counter(_recipe_text(facts[r.label].recipe) for r in ordered)
    best = max(counts.values())
    return next(facts[r.label].recipe for r in ordered if counts[_recipe_text(facts[r.label].recipe)] == best)


def refuse_other_recipes(runs: list, facts: dict[str, RunFacts]) -> tuple[list, list[str]]:
    """Runs of the set's recipe, and one line per run refused for another recipe."""
    reference = set_recipe(runs, facts)
    kept, refused = [], []
    for run in runs:
        difference = _recipe_difference(facts[run.label].recipe, reference)
        if difference:
            refused.append(f"{run.source}: another recipe than the shard set's ({difference}); rerun the participant "
                           "level for it with the set's options, or pack it in another output folder")
        else:
            kept.append(run)
    return kept, refused


#: File-name keys and the stored entity each must equal.
_NAME_KEYS = {"sub": "subject", "ses": "session", "task": "task", "acq": "acquisition", "run": "run",
              "space": "space"}


def name_mismatch(run) -> str:
    """How a run file's name disagrees with the entities stored in it ("" when it agrees): a file copied
    over another run's name would otherwise be packed under the wrong subject."""
    parts = dict(part.split("-", 1) for part in run.label.split("_") if "-" in part)
    stored = {k: ("n/a" if v is None else str(v)) for k, v in run.entities.items()}
    wrong = [f"{key}-{parts[key]} but {name} {stored.get(name, 'n/a')!r} inside" for key, name in _NAME_KEYS.items()
             if key in parts and stored.get(name, "n/a") not in (parts[key], parts[key].lstrip("0") or "0")]
    return "; ".join(wrong)


def refuse_misnamed(runs: list) -> tuple[list, list[str]]:
    """Runs whose file name matches their stored entities, and one line per other run."""
    kept, refused = [], []
    for run in runs:
        wrong = name_mismatch(run)
        if wrong:
            refused.append(f"{run.source}: the file name says {wrong} (a copy of another run's file?); "
                           "rerun the participant level for it")
        else:
            kept.append(run)
    return kept, refused


def acquisition_key(entities: dict) -> tuple:
    """The entities that name an acquisition (every one but the sampling entities), sorted."""
    return tuple(sorted((k, str(v)) for k, v in entities.items() if k not in SAMPLING_ENTITIES))


def _space_rank(run, space: str | None) -> tuple:
    name = run.entities.get("space")
    order = ((space,) if space else ()) + SPACE_PREFERENCE
    return (order.index(name) if name in order else len(order), run.label)


def one_space_per_acquisition(runs: list, *, space: str | None = None) -> tuple[list, list[dict]]:
    """Keep one run per acquisition: ``space`` when given and present, else the participant level's order.

    Returns
    -------
    kept : list
        The runs to pack, in the input order.
    left_out : list of dict
        ``run``, ``source``, ``reason`` for each other space of a packed acquisition.
    """
    by_acquisition: dict[tuple, list] = {}
    for run in runs:
        by_acquisition.setdefault(acquisition_key(run.entities), []).append(run)
    chosen, left_out = set(), []
    for group in by_acquisition.values():
        best = min(group, key=lambda r: _space_rank(r, space))
        chosen.add(best.label)
        rule = "--space" if space and best.entities.get("space") == space else "the participant level's space order"
        for run in sorted(group, key=lambda r: r.label):
            if run.label != best.label:
                left_out.append({"run": run.label, "source": run.source,
                                 "reason": f"same acquisition as {best.label}, packed in space "
                                           f"{best.entities.get('space')} (chosen by {rule})"})
    return [r for r in runs if r.label in chosen], left_out


def drop_duplicates(runs: list, facts: dict[str, RunFacts]) -> tuple[list, list[dict]]:
    """Keep the first run (label order) of each set of identical inputs or identical frames.

    Returns
    -------
    kept : list
        Runs with distinct BOLD inputs and distinct frames, in label order.
    left_out : list of dict
        ``run``, ``source``, ``reason`` (naming the run it duplicates) for the others.
    """
    first_by_frames, first_by_inputs, kept, left_out = {}, {}, [], []
    for run in sorted(runs, key=lambda r: r.label):
        fact = facts[run.label]
        same_frames = first_by_frames.get(fact.content_sha256) if fact.content_sha256 else None
        same_inputs = first_by_inputs.get(fact.bold_sha256) if fact.bold_sha256 else None
        if same_inputs or same_frames:
            what = "BOLD inputs (same sha256)" if same_inputs else "frames (same content checksum)"
            left_out.append({"run": run.label, "source": run.source,
                             "reason": f"identical {what} to {same_inputs or same_frames}: one scan under two names, "
                                       "packed once"})
            continue
        first_by_frames.setdefault(fact.content_sha256, run.label)
        first_by_inputs.setdefault(fact.bold_sha256, run.label)
        kept.append(run)
    return kept, left_out


@dataclass(frozen=True)
class Selection:
    """The runs a group level packs, and why the others are not packed.

    Attributes
    ----------
    kept : list of RunEntry
    refused : list of str
        One line per run of another recipe (a problem to fix: the command exits non-zero).
    left_out : list of dict
        ``run``, ``source``, ``reason`` (and ``metrics`` for QC exclusions) per run left out
        by rule: another space of a packed acquisition, a duplicate, an ``--exclude`` rule.
    """

    kept: list
    refused: list
    left_out: list


def select_runs(output_dir: str | Path, runs: list, *, space: str | None = None, rules=()) -> Selection:
    """Apply the recipe check, the space rule, the duplicate rule and the QC rules, in that order."""
    from .exclusion import apply_rules

    facts = read_facts(output_dir, runs)
    kept, misnamed = refuse_misnamed(runs)
    kept, refused = refuse_other_recipes(kept, facts)
    refused = misnamed + refused
    kept, other_spaces = one_space_per_acquisition(kept, space=space)
    kept, duplicates = drop_duplicates(kept, facts)
    kept, excluded = apply_rules(kept, output_dir, facts, list(rules))
    return Selection(kept, refused, other_spaces + duplicates + excluded)
