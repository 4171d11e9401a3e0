"""``flatprep-probe EMBEDDINGS_DIR FLATPREP_DIR BIDS_DIR OUTPUT_DIR``: linear probes on embeddings against baselines.

Every target is scored with subject-level cross-validation (no subject in train and test of a fold);
chance is the majority-class rate of each test fold, averaged over folds.

* block condition, per clip: the condition of each clip of a run with a BIDS ``*_events.tsv``, after the
  haemodynamic delay (``--delay``, 5 s), by majority of the clip's frames (clips without a majority left
  out; frames outside every block are ``fixation``); and the same among task blocks only (for the sample
  subjects: left vs right hand). Baselines from the same flat maps: functional connectivity between the
  Yeo-7 networks within the clip (21 correlations) and the clip's mean map over the 360 Glasser parcels;
* traits, per run: participants.tsv columns (``--trait``; default ``group`` and ``amplitude``, those
  present). Features: the run's mean embeddings; baselines: FC between Yeo-17 networks over the whole run
  (136 correlations), the run's temporal mean before cleaning (tissue contrast) and its signal-change map
  (std / mean), both over Glasser parcels.

``--compare LABEL=DIR`` adds the embeddings in DIR (the same runs, e.g. ``flatprep-embed --random-init``:
the same architecture with fresh weights) as further feature sets. Writes ``probe.tsv`` and ``probe.png``
(mean ± std over folds, chance as a dashed line) and logs the table.

Examples::

    flatprep-probe emb/ out/ bids/ emb/
    flatprep-probe emb/ out/ bids/ probes/ --compare random-init=emb-random/ --trait group amplitude --folds 10
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from .common import command, verbosity
from .logs import configure_logging
from .help import make_parser
from .validators import add_folder_argument, existing_dir

DEFAULT_TRAITS = ("group", "amplitude")


def _label_dir(parser, value: str) -> tuple[str, Path]:
    label, sep, folder = value.partition("=")
    if not sep or not label or not folder:
        parser.error(f"--compare expects LABEL=DIR, got {value!r}")
    return label, existing_dir(parser, "--compare", folder)


def _build_parser() -> argparse.ArgumentParser:
    parser = make_parser("flatprep-probe", __doc__)
    add_folder_argument(parser, "embeddings_dir", "folder with embeddings.h5 (flatprep-embed)")
    add_folder_argument(parser, "flatprep_dir", "the flatprep output folder whose runs were embedded (its per-run "
                        "files give the tissue-contrast baselines of shard-embedded runs)")
    add_folder_argument(parser, "bids_dir", "raw BIDS (participants.tsv, *_events.tsv)")
    parser.add_argument("output_dir", type=Path, help="where probe.tsv and probe.png go")
    parser.add_argument("--trait", nargs="+", default=None,
                        help="participants.tsv columns to decode per run (default: those of group amplitude "
                             "that exist); an unknown column is an error")
    parser.add_argument("--compare", action="append", default=[], type=partial(_label_dir, parser),
                        metavar="LABEL=DIR", help="more embeddings of the same runs (repeatable)")
    parser.add_argument("--label", default="trained", help="name of the EMBEDDINGS_DIR encoder (default: trained)")
    parser.add_argument("--delay", type=float, default=5.0, help="haemodynamic delay in seconds (default: 5)")
    parser.add_argument("--folds", type=int, default=5, help="outer cross-validation folds (capped at the subjects)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    return parser


def _entities_of(name: str) -> dict[str, str]:
    return dict(part.split("-", 1) for part in name.split("_")[:-1] if "-" in part)


def events_file(bids_dir: Path, entities: dict) -> Path | None:
    """The ``*_events.tsv`` of a run: the file under its subject whose entities all match the run's."""
    wanted = {key: str(value) for key, value in entities.items() if value is not None}
    names = {"subject": "sub", "session": "ses", "task": "task", "acquisition": "acq", "run": "run",
             "direction": "dir", "reconstruction": "rec", "echo": "echo", "ceagent": "ce"}
    wanted = {names.get(key, key): value.lstrip("0") if key == "run" else value for key, value in wanted.items()}
    for path in sorted((bids_dir / f"sub-{wanted.get('sub', '')}").glob("**/*_events.tsv")):
        found = _entities_of(path.name)
        found = {k: v.lstrip("0") if k == "run" else v for k, v in found.items()}
        if found and all(wanted.get(key) == value for key, value in found.items()):
            return path
    return None


def _embedding_sets(embeddings: dict, label: str, level: str) -> dict[str, np.ndarray]:
    return {f"{label} encoder (class token)": embeddings[f"{level}_cls"],
            f"{label} encoder (mean patch)": embeddings[f"{level}_patch_mean"]}


def _check_same_runs(main: dict, other: dict, label: str) -> None:
    from flatprep.exceptions import ProbeError
    from flatprep.learn.embed import describe_grid, same_grid

    if not same_grid(main.get("grid"), other.get("grid")):
        raise ProbeError(f"--compare {label}: embeddings of flat maps on {describe_grid(other.get('grid'))}, the main "
                         f"ones on {describe_grid(main.get('grid'))}; compare encoders of the same grid")
    if main.get("clip_frames") != other.get("clip_frames"):
        raise ProbeError(f"--compare {label}: clips of {other.get('clip_frames')} frames, the main embeddings' of "
                         f"{main.get('clip_frames')}; embed the same inputs with the same clip length")
    same = ([r["source"] for r in main["runs"]] == [r["source"] for r in other["runs"]]
            and np.array_equal(main["clips_run"], other["clips_run"])
            and np.array_equal(main["clips_start"], other["clips_start"]))
    if not same:
        raise ProbeError(f"--compare {label}: its embeddings do not cover the same runs and clips as the main ones; "
                         "embed the same inputs with the same clip length")


def _run_data(run: dict, datasets: dict, flat_dir: Path | None) -> dict:
    """An embedded run's ``frames`` (n_frames, P), ``mean`` and ``std`` (P,) or None, ``tr`` and ``first_time``.

    Runs embedded from per-run files are read from those files; runs embedded from shards are read back
    through the training dataset (whole clips, as embedded), with the mean and std from the per-run file
    (shards hold the cleaned frames only) found in ``flat_dir`` or beside the shards folder, if present.
    """
    from flatprep.exceptions import ProbeError
    from flatprep.h5 import read_run
    from flatprep.learn.data import FlatClipsDataset

    if not run.get("shards"):
        _check_source(Path(run["source"]), run, "its per-run file changed since it was embedded")
        data = read_run(run["source"])
        return {"frames": data.frames, "mean": data.mean, "std": data.std, "tr": float(data.attrs["tr_out"]),
                "first_time": int(data.attrs.get("n_dropped") or 0) * float(data.attrs["tr_in"])}
    if run["shards"] not in datasets:
        datasets[run["shards"]] = FlatClipsDataset(run["shards"])
    dataset = datasets[run["shards"]]
    rows = dataset.index.runs
    labels = [row["run"] for row in rows]
    if run["label"] not in labels:
        raise ProbeError(f"{dataset.index.folder}: no run {run['label']} (embedded from it); the shards were "
                         "regrouped since: embed them again")
    number = labels.index(run["label"])
    row = rows[number]
    if run.get("source_sha256") and row.get("source_sha256") != run["source_sha256"]:
        raise ProbeError(f"{dataset.index.folder}: run {run['label']} holds other data than when it was embedded "
                         "(source_sha256 differs); the shards were regrouped since: embed them again")
    clips = np.flatnonzero(dataset.index.clip_run == number)
    frames = np.concatenate([dataset[int(i)]["values"].numpy() for i in clips])
    first = row.get("first_frame_s")
    out = {"frames": frames, "mean": None, "std": None, "tr": float(row["tr"]),
           "first_time": None if first is None else float(first)}
    roots = [root for root in (flat_dir, Path(run["shards"]).parent) if root is not None]
    source = next((root / run["source"] for root in roots if (root / run["source"]).is_file()), None)
    if source is not None:
        _check_source(source, run, "FLATPREP_DIR is not the output whose runs were embedded, or the file changed")
        data = read_run(source)
        out |= {"mean": data.mean, "std": data.std}
    return out


def _check_source(path: Path, run: dict, reason: str) -> None:
    """Refuse a per-run file whose sha256 differs from the one recorded with the run's embeddings."""
    from flatprep.cache import file_digest
    from flatprep.exceptions import ProbeError

    if run.get("source_sha256") and path.is_file() and file_digest(path) != run["source_sha256"]:
        raise ProbeError(f"{path}: sha256 differs from run {run['label']} in embeddings.h5 ({reason}); pass the "
                         "flatprep folder whose runs were embedded, or embed again")


def _run_features(embeddings: dict, parcels: dict, clip_frames: int, flat_dir: Path | None = None) -> dict:
    """Per-clip and per-run baseline features of every run, and what labelling clips needs."""
    from flatprep.learn.probe import fc_features, mean_map_features

    clip_run, clip_start = embeddings["clips_run"], embeddings["clips_start"]
    out = {"clip_fc": [], "clip_map": [], "run_fc": [], "run_map": [], "run_amplitude": [], "timing": []}
    datasets = {}
    for index, info in enumerate(embeddings["runs"]):
        run = _run_data(info, datasets, flat_dir)
        frames = run["frames"]
        starts = clip_start[clip_run == index]
        clips = (np.stack([frames[s:s + clip_frames] for s in starts]) if len(starts)
                 else np.zeros((0, clip_frames, frames.shape[1]), np.float16))
        out["clip_fc"].append(fc_features(clips, parcels["yeo7"]))
        out["clip_map"].append(mean_map_features(clips, parcels["glasser"]))
        out["run_fc"].append(fc_features(frames, parcels["yeo17"]))
        if run["mean"] is not None:
            mean, std = run["mean"], run["std"]
            out["run_map"].append(mean_map_features(mean[None], parcels["glasser"]))
            change = np.divide(std, mean, out=np.zeros_like(std), where=mean > 0)
            out["run_amplitude"].append(mean_map_features(change[None], parcels["glasser"]))
        out["timing"].append((run["tr"], run["first_time"], frames.shape[0]))
    for dataset in datasets.values():
        dataset.close()
    return out


def _clip_labels(embeddings: dict, bids_dir: Path, timing: list, *, clip_frames: int,
                 delay: float) -> tuple[np.ndarray, dict]:
    """Block condition of every clip ("" where the run has no events or the clip no majority), and why runs
    gave no labels: reason -> run labels."""
    from flatprep.learn.probe import BASELINE_LABEL, clip_block_labels, read_events

    clip_run, clip_start = embeddings["clips_run"], embeddings["clips_start"]
    labels = np.full(len(clip_run), "", dtype=object)
    unlabelled: dict[str, list] = {}
    for index, info in enumerate(embeddings["runs"]):
        path = events_file(bids_dir, info["entities"])
        rows = clip_run == index
        if not rows.any():
            continue
        if path is None:
            unlabelled.setdefault("no *_events.tsv", []).append(info["label"])
            continue
        tr, first_time, n_frames = timing[index]
        if first_time is None:  # shards from before first_frame_s: the events cannot be placed
            unlabelled.setdefault("shards without first_frame_s: the events cannot be placed", []).append(info["label"])
            continue
        events = read_events(path)
        end = first_time + n_frames * tr
        if len(events.onset) and np.all(events.onset + delay >= end):
            unlabelled.setdefault(f"every event starts after the run's end at {end:g} s (onsets + {delay:g} s "
                                  "delay)", []).append(info["label"])
            continue
        if len(events.onset) and np.all(events.trial_type == ""):
            unlabelled.setdefault("every trial_type is n/a", []).append(info["label"])
            continue
        found = clip_block_labels(events, clip_start[rows], clip_frames=clip_frames, tr=tr, first_time=first_time,
                                  delay=delay)
        if not np.any((found != "") & (found != BASELINE_LABEL)):
            unlabelled.setdefault("no clip falls mostly within a block", []).append(info["label"])
        labels[rows] = found
    return labels.astype(str), unlabelled


def _why_no_probe(target: str, values: np.ndarray, unlabelled: dict) -> str:
    """One line: why ``target`` has too few labelled classes to probe."""
    classes = sorted(set(values))
    found = f"only {', '.join(repr(str(c)) for c in classes)}" if classes else "no labelled clip"
    reasons = "; ".join(f"{len(runs)} run(s) {reason} ({', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''})"
                        for reason, runs in unlabelled.items())
    return f"{target}: not probed, {found}" + (f" ({reasons})" if reasons else "")


def _grid(run: dict):
    from flatprep.flatmap import grid_from_description
    from flatprep.h5 import read_run_attrs
    from flatprep.shards import read_manifest

    description = read_manifest(run["shards"])[1]["grid"] if run.get("shards") else read_run_attrs(run["source"])[1]
    return grid_from_description(description)


def _probe_target(target: str, sets: dict, labels: np.ndarray, groups: np.ndarray, *, folds: int, seed: int) -> list:
    """Rows of one target; a target the subjects cannot cross-validate is skipped with one warning line."""
    from flatprep.exceptions import ProbeError
    from flatprep.learn.probe import compare_features

    log = logging.getLogger("flatprep")
    start = time.perf_counter()
    log.info("probing %s: %d samples, %d feature sets, %d folds", target, len(labels), len(sets), folds)
    try:
        rows = compare_features(sets, labels, groups, n_splits=folds, seed=seed)
    except ProbeError as err:
        log.warning("%s: skipped (%s)", target, err)
        return []
    log.info("probed %s in %.1f s", target, time.perf_counter() - start)
    return [{"target": target} | row for row in rows]


def trait_values(participants: dict, subjects: np.ndarray, trait: str) -> np.ndarray:
    """Each run's ``trait`` as text, "" where missing: ``n/a`` (read as None), an empty cell, or a subject
    absent from participants.tsv; never a class named "None"."""
    return np.array([participants.get(s, {}).get(trait) or "" for s in subjects], dtype=object).astype(str)


def probe_tables(embeddings: dict, participants: dict, bids_dir: Path, *, compare: dict, label: str = "trained",
                 traits=DEFAULT_TRAITS, delay: float = 5.0, folds: int = 5, seed: int = 0,
                 flat_dir: Path | None = None) -> list:
    """Probe rows for the block-condition targets (per clip) and the traits (per run).

    ``flat_dir`` is the flatprep output folder whose per-run files hold the runs' means before cleaning
    (for shard-embedded runs; per-run embedded runs name their own files).
    """
    from flatprep.learn.probe import BASELINE_LABEL, grid_parcels

    runs = embeddings["runs"]
    grid = _grid(runs[0])
    log = logging.getLogger("flatprep")
    log.info("Yeo-7, Yeo-17 and Glasser parcels on the %g mm grid (first use builds them)", grid.pixel_size)
    parcels = {atlas: grid_parcels(grid, atlas) for atlas in ("yeo7", "yeo17", "glasser")}
    log.info("baseline features of %d runs", len(runs))
    clip_start = embeddings["clips_start"]
    clip_frames = embeddings.get("clip_frames") or (int(np.diff(clip_start[:2])[0]) if len(clip_start) > 1 else 16)
    base = _run_features(embeddings, parcels, clip_frames, flat_dir)
    encoders = {label: embeddings, **compare}
    subjects = np.array([r["entities"]["subject"] for r in runs])
    rows = []
    labels, unlabelled = _clip_labels(embeddings, bids_dir, base["timing"], clip_frames=clip_frames, delay=delay)
    clip_sets = {name: X for lab, emb in encoders.items() for name, X in _embedding_sets(emb, lab, "clips").items()}
    clip_sets |= {"FC (Yeo-7, within clip)": np.concatenate(base["clip_fc"]),
                  "mean map (Glasser, within clip)": np.concatenate(base["clip_map"])}
    # The run's task is a per-clip target too: whether the subject was resting or doing a task.
    tasks = np.array([runs[i]["entities"].get("task", "") for i in embeddings["clips_run"]])
    for target, values, keep in (("block condition (per clip)", labels, labels != ""),
                                 ("task blocks only (per clip)", labels, (labels != "") & (labels != BASELINE_LABEL)),
                                 ("task (per clip)", tasks, tasks != "")):
        if len(set(values[keep])) > 1:
            sets = {name: X[keep] for name, X in clip_sets.items()}
            rows += _probe_target(target, sets, values[keep], subjects[embeddings["clips_run"]][keep],
                                  folds=folds, seed=seed)
        else:
            log.warning("%s", _why_no_probe(target, values[keep], unlabelled if values is labels else {}))
    run_sets = {name: X for lab, emb in encoders.items() for name, X in _embedding_sets(emb, lab, "runs").items()}
    run_sets |= {"FC (Yeo-17, whole run)": np.stack(base["run_fc"])}
    if len(base["run_map"]) == len(runs):  # the means before cleaning live in the per-run files, not in shards
        run_sets |= {"mean map (tissue contrast, Glasser)": np.stack(base["run_map"]),
                     "signal-change map (std / mean, Glasser)": np.stack(base["run_amplitude"])}
    for trait in traits:
        values = trait_values(participants, subjects, trait)
        keep = values != ""
        if len(set(values[keep])) > 1:
            sets = {name: X[keep] for name, X in run_sets.items()}
            rows += _probe_target(f"{trait} (per run)", sets, values[keep], subjects[keep], folds=folds, seed=seed)
        else:
            log.warning("%s", _why_no_probe(f"{trait} (per run)", values[keep], {}))
    return rows


def _traits(asked: list[str] | None, participants: dict, path: Path) -> list[str]:
    """The traits to probe: those asked (each must be a column), else the default ones present."""
    from flatprep.exceptions import ProbeError

    columns = list(dict.fromkeys(key for row in participants.values() for key in row))
    if asked is None:
        return [trait for trait in DEFAULT_TRAITS if trait in columns]
    unknown = [trait for trait in asked if trait not in columns or trait == "participant_id"]
    if unknown:
        raise ProbeError(f"{path}: no column {', '.join(map(repr, unknown))} for --trait (columns: "
                         f"{', '.join(c for c in columns if c != 'participant_id') or 'none'})")
    return list(asked)


@command
def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    configure_logging(verbosity(args))
    log = logging.getLogger("flatprep")
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    # Strongly regularised fits on few subjects often stop at max_iter; the scores still stand.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    from flatprep.exceptions import FlatprepError, Interrupted
    from flatprep.learn.embed import read_embeddings
    from flatprep.learn.probe import format_probe_table, write_probe_report
    from flatprep.tables import read_participants

    try:
        embeddings = read_embeddings(args.embeddings_dir / "embeddings.h5")
        compare = {}
        for label, folder in args.compare:
            compare[label] = read_embeddings(folder / "embeddings.h5")
            _check_same_runs(embeddings, compare[label], label)
        participants = read_participants(args.bids_dir / "participants.tsv")
        traits = _traits(args.trait, participants, args.bids_dir / "participants.tsv")
        rows = probe_tables(embeddings, participants, args.bids_dir, compare=compare, flat_dir=args.flatprep_dir,
                            label=args.label, traits=traits, delay=args.delay, folds=args.folds, seed=args.seed)
    except (FlatprepError, OSError, KeyError) as err:
        log.error("%s", err)
        return 2
    except Interrupted as stop:
        stop.summary = f"no probe table written to {args.output_dir}"
        raise
    if not rows:
        log.error("no target to probe: no events files with 2+ conditions and no trait with 2+ levels")
        return 2
    tsv, png = write_probe_report(rows, args.output_dir / "probe.tsv", args.output_dir / "probe.png",
                                  title="Linear probes (subject-level CV): encoders vs baselines")
    log.info("probe table (mean ± std over subject-level folds):\n%s", format_probe_table(rows))
    log.info("wrote %s and %s", tsv, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
