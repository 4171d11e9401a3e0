"""Train/val/test splits that never move: a keyed hash per subject, recorded in ``shards/splits.tsv``.

A subject's split depends only on its own label (or the value of its
participants.tsv group column), the seed and the ratios: the SHA-256 of
``"<seed>:<unit>"`` read as a fraction in [0, 1) falls into one of the
intervals ``[0, train)``, ``[train, train + val)``, ``[train + val, 1)``.
Adding or removing subjects therefore moves no other subject. Only when a
split with a non-zero ratio would otherwise be empty (a handful of subjects;
train is filled first, so a single subject trains) does the unit whose
fraction lies nearest to that split's interval move into it; the record
keeps it there afterwards.

The group level records the assignment (``splits.tsv``: subject, group,
split; ``splits.json``: the seed, ratios, group column and rule) and keeps it
on every regroup: recorded subjects keep their split, including subjects that
are absent this time (so they return to it), and new subjects are assigned by
the rule. A changed seed, ratio or group column is refused unless the caller
asks to re-split.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_text
from .exceptions import ShardFormatError, ShardOptionsError
from .tables import read_tsv, write_tsv

SPLITS = ("train", "val", "test")
SPLITS_TSV = "splits.tsv"
SPLITS_JSON = "splits.json"
#: Names the rule that maps a unit to a split; a record made by another rule is refused without re-splitting.
RULE = "sha256-interval-v1"
_COLUMNS = ["subject", "group", "split"]


def unit_fraction(unit: str, seed: int) -> float:
    """The unit's place in [0, 1): the first 8 bytes of sha256("<seed>:<unit>") over 2**64."""
    digest = hashlib.sha256(f"{seed}:{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _bounds(ratios) -> list[tuple[float, float]]:
    """[start, end) of each split's interval in [0, 1]."""
    edges = [0.0, ratios[0], ratios[0] + ratios[1], 1.0]
    return [(edges[i], edges[i + 1]) for i in range(3)]


def split_by_rule(unit: str, seed: int, ratios) -> str:
    """The split of one unit (subject or group) from its hash alone."""
    u = unit_fraction(unit, seed)
    for name, (start, end) in zip(SPLITS, _bounds(ratios)):
        if start <= u < end:
            return name
    return next(name for name, r in zip(reversed(SPLITS), reversed(ratios)) if r > 0)


def _fill_empty_splits(split_of: dict[str, str], seed: int, ratios) -> dict[str, str]:
    """Give each empty split with a non-zero ratio (train first, then val, then test) the unit nearest to its
    interval, taken from a split that has more than one unit or that comes later in that order."""
    wanted = [name for name, r in zip(SPLITS, ratios) if r > 0]
    split_of = dict(split_of)
    for name, (start, end) in zip(SPLITS, _bounds(ratios)):
        if name not in wanted or name in split_of.values():
            continue
        counts = {s: list(split_of.values()).count(s) for s in SPLITS}
        later = wanted[wanted.index(name) + 1:]
        donors = [u for u, s in split_of.items() if counts[s] > 1 or s in later]
        if not donors:
            break

        def distance(unit: str) -> tuple[float, str]:
            u = unit_fraction(unit, seed)
            return (min(abs(u - start), abs(u - end)), unit)

        split_of[min(donors, key=distance)] = name
    return split_of


def assign_splits(subjects: list[str], options, groups: dict[str, str] | None = None,
                  recorded: dict[str, tuple[str, str]] | None = None) -> dict[str, tuple[str, str]]:
    """Split subjects (or their groups) into train/val/test; no subject's split depends on another's.

    Parameters
    ----------
    subjects : list of str
        Subject labels without ``sub-``.
    options : ShardOptions
        ``split_ratios`` and ``split_seed``.
    groups : dict, optional
        subject -> group value (participants.tsv column); related subjects share a split.
    recorded : dict, optional
        subject -> (split, group) from ``splits.tsv``: these keep their split, and a new
        subject of a recorded group joins that group's split.

    Returns
    -------
    dict
        subject -> (split, group); the group is ``sub-<label>`` when no group column is used.
    """
    groups, recorded = groups or {}, recorded or {}
    group_of = {s: groups.get(s) or f"sub-{s}" for s in subjects}
    # A recorded subject keeps its split; a new subject of a recorded group joins that group.
    known = {group: split for split, group in recorded.values()}
    known |= {group_of[s]: recorded[s][0] for s in subjects if s in recorded}
    new_units = sorted({g for g in group_of.values() if g not in known})
    by_rule = {u: split_by_rule(u, options.split_seed, options.split_ratios) for u in new_units}
    if not recorded:
        by_rule = _fill_empty_splits(by_rule, options.split_seed, options.split_ratios)
    split_of_unit = known | by_rule
    return {s: (recorded[s][0] if s in recorded else split_of_unit[group_of[s]], group_of[s]) for s in subjects}


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class SplitRecord:
    """The assignment kept in ``splits.tsv`` and the parameters in ``splits.json``.

    Attributes
    ----------
    assignment : dict
        subject -> (split, group), every subject ever assigned.
    parameters : dict
        ``seed``, ``ratios`` ({split: fraction}), ``group_column``, ``rule``.
    """

    assignment: dict
    parameters: dict


def split_parameters(options) -> dict:
    """What a recorded assignment depends on, as stored in ``splits.json``."""
    return {"seed": options.split_seed, "ratios": dict(zip(SPLITS, options.split_ratios)),
            "group_column": options.group_column, "rule": RULE}


def read_split_record(shard_dir: str | Path) -> SplitRecord | None:
    """The recorded assignment, or None when the group level has not recorded one yet.

    Raises
    ------
    ShardFormatError
        ``splits.tsv`` or ``splits.json`` is unreadable, lacks columns, names a split
        that does not exist, lists a subject twice, or puts one group in two splits.
    """
    shard_dir = Path(shard_dir)
    tsv, js = shard_dir / SPLITS_TSV, shard_dir / SPLITS_JSON
    if not tsv.exists() and not js.exists():
        return None
    try:
        parameters = json.loads(js.read_text())
    except (OSError, ValueError) as err:
        raise ShardFormatError(f"{js}: cannot be read ({err}); restore it or rerun the group level with "
                               "--resplit") from err
    rows = read_tsv(tsv, required=_COLUMNS, error=ShardFormatError)
    assignment, group_split = {}, {}
    for line, row in enumerate(rows, start=2):
        subject, split, group = row["subject"], row["split"], row["group"]
        if split not in SPLITS:
            raise ShardFormatError(f"{tsv}: line {line}: split {split!r}, expected one of {', '.join(SPLITS)}")
        if subject in assignment:
            raise ShardFormatError(f"{tsv}: line {line}: subject {subject} listed twice")
        if group_split.setdefault(group, split) != split:
            raise ShardFormatError(f"{tsv}: line {line}: group {group} in both {group_split[group]} and {split}")
        assignment[subject] = (split, group)
    return SplitRecord(assignment, parameters)


def check_split_record(record: SplitRecord | None, options, path: str | Path) -> None:
    """Refuse a record made with another seed, ratios, group column or rule (one line naming what changed)."""
    if record is None:
        return
    asked = split_parameters(options)
    changed = []
    for key in ("seed", "group_column", "rule"):
        if record.parameters.get(key) != asked[key]:
            changed.append(f"{key} {record.parameters.get(key)!r} -> {asked[key]!r}")
    ratios = record.parameters.get("ratios") or {}
    if not all(math.isclose(float(ratios.get(s, -1)), asked["ratios"][s], abs_tol=1e-9) for s in SPLITS):
        old = " ".join(str(ratios.get(s)) for s in SPLITS)
        changed.append(f"ratios {old} -> {' '.join(str(asked['ratios'][s]) for s in SPLITS)}")
    if changed:
        raise ShardOptionsError(f"{path}: the recorded splits were made with other settings ({'; '.join(changed)}); "
                                "rerun with the recorded settings, or add --resplit to reassign every subject "
                                "(a model trained on the old splits has seen the new val/test subjects)")


def write_split_record(shard_dir: str | Path, assignment: dict, options) -> Path:
    """Write ``splits.tsv`` (subject order) then ``splits.json``, each atomically; returns the TSV path."""
    shard_dir = Path(shard_dir)
    rows = [{"subject": s, "group": g, "split": split} for s, (split, g) in sorted(assignment.items())]
    tsv = write_tsv(shard_dir / SPLITS_TSV, rows, _COLUMNS)
    write_text(shard_dir / SPLITS_JSON, json.dumps(split_parameters(options), indent=2, sort_keys=True) + "\n")
    return tsv


def split_sizes(assignment: dict, ratios) -> list[str]:
    """One line per split: units and subjects in it against the requested fraction."""
    n_units = len({g for _, g in assignment.values()}) or 1
    grouped = any(not g.startswith("sub-") for _, g in assignment.values())
    lines = []
    for name, ratio in zip(SPLITS, ratios):
        units = {g for s, g in assignment.values() if s == name}
        subjects = [s for s, (split, _) in assignment.items() if split == name]
        what = f"{len(subjects)} subject(s) in {len(units)} group(s)" if grouped else f"{len(subjects)} subject(s)"
        lines.append(f"{name}: {what} = {100 * len(units) / n_units:.1f} % (asked {100 * ratio:.1f} %)")
    return lines


def resolve_splits(shard_dir: str | Path, subjects: list[str], options, groups: dict[str, str] | None = None, *,
                   resplit: bool = False) -> tuple[dict, dict, list[str]]:
    """The splits of this group level, from the record in ``shard_dir`` and the rule.

    Parameters
    ----------
    resplit : bool
        Ignore the record and assign every subject by the rule (the only way to change
        the seed, ratios or group column of an existing record).

    Returns
    -------
    present : dict
        subject -> (split, group) for ``subjects``.
    record : dict
        The assignment to record: ``present`` plus recorded subjects absent now (kept, so
        they return to their split).
    report : list of str
        Split sizes against the requested ratios, and the recorded subjects absent now.

    Raises
    ------
    ShardOptionsError
        The record was made with other settings and ``resplit`` is False.
    ShardFormatError
        The record is unreadable (and ``resplit`` is False).
    """
    recorded = {}
    if not resplit:
        record = read_split_record(shard_dir)
        check_split_record(record, options, Path(shard_dir) / SPLITS_TSV)
        recorded = record.assignment if record else {}
    present = assign_splits(subjects, options, groups, recorded)
    absent = sorted(set(recorded) - set(present))
    report = split_sizes(present, options.split_ratios)
    if absent:
        report.append(f"{len(absent)} recorded subject(s) without runs now, kept in {SPLITS_TSV} with their split: "
                      f"{', '.join(absent)}")
    return present, {**{s: recorded[s] for s in absent}, **present}, report
