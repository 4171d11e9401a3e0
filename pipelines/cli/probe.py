"""``flatprep-probe EMBEDDINGS_DIR FLATPREP_DIR BIDS_DIR OUTPUT_DIR``: linear probes on embeddings against baselines.

Two targets, each with subject-level cross-validation (no subject in train and test of a fold):

* task state, per clip: which task the clip comes from (e.g. rest or motor). Features: the clip's class
  token and mean patch token; baselines from the same flat maps: functional connectivity between the
  Yeo-7 networks within the clip (21 correlations) and the clip's mean map over the 360 Glasser parcels;
* trait, per run: a participants.tsv column (``--trait group``). Features: the run's mean embeddings;
  baselines: FC between Yeo-17 networks over the whole run (136 correlations) and the run's temporal
  mean map before cleaning over Glasser parcels.

Writes ``probe.tsv`` and ``probe.png`` (mean ± std over folds, chance as a dashed line).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from functools import partial
from pathlib import Path

import numpy as np

from .logs import configure_logging
from .validators import existing_dir


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flatprep-probe", description=__doc__.splitlines()[0])
    parser.add_argument("embeddings_dir", type=partial(existing_dir, parser, "embeddings_dir"),
                        help="folder with embeddings.h5 (flatprep-embed)")
    parser.add_argument("flatprep_dir", type=partial(existing_dir, parser, "flatprep_dir"),
                        help="the flatprep output folder whose runs were embedded")
    parser.add_argument("bids_dir", type=partial(existing_dir, parser, "bids_dir"), help="raw BIDS (participants.tsv)")
    parser.add_argument("output_dir", type=Path, help="where probe.tsv and probe.png go")
    parser.add_argument("--trait", default="group", help="participants.tsv column to decode per run")
    parser.add_argument("--folds", type=int, default=5, help="outer cross-validation folds (capped at the subjects)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _participants(bids_dir: Path) -> dict[str, dict]:
    path = bids_dir / "participants.tsv"
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["participant_id"].removeprefix("sub-"): row for row in csv.DictReader(handle, delimiter="\t")}


def _run_frames(run: dict, datasets: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """An embedded run's frames (n_frames, P) and temporal mean (P,) (None when only a shards folder is at hand).

    Runs embedded from shards are read back through the training dataset (whole clips, as embedded);
    runs embedded from per-run files are read from those files.
    """
    from flatprep.h5 import open_h5
    from flatprep.learn.data import FlatClipsDataset

    if run.get("shards"):
        if run["shards"] not in datasets:
            datasets[run["shards"]] = FlatClipsDataset(run["shards"])
        dataset = datasets[run["shards"]]
        number = [row["run"] for row in dataset.index.runs].index(run["label"])
        clips = np.flatnonzero(dataset.index.clip_run == number)
        frames = np.concatenate([dataset[int(i)]["values"].numpy() for i in clips])
        source = Path(run["shards"]).parent / run["source"]  # the per-run file, where the output folder is whole
        if not source.is_file():
            return frames, None
        with open_h5(source) as handle:
            return frames, handle["mean"][()]
    with open_h5(run["source"]) as handle:
        return handle["frames"][()], handle["mean"][()]


def _grid(run: dict):
    from flatprep.flatmap import grid_from_description
    from flatprep.h5 import read_run_attrs
    from flatprep.shards import read_manifest

    description = read_manifest(run["shards"])[1]["grid"] if run.get("shards") else read_run_attrs(run["source"])[1]
    return grid_from_description(description)


def probe_tables(embeddings: dict, flat_dir: Path, participants: dict, *, trait: str, folds: int, seed: int) -> list:
    """Probe rows for the task-state and trait targets."""
    from flatprep.learn.probe import compare_features, fc_features, grid_parcels, mean_map_features

    runs = embeddings["runs"]
    grid = _grid(runs[0])
    yeo7, yeo17, glasser = (grid_parcels(grid, atlas) for atlas in ("yeo7", "yeo17", "glasser"))
    clip_run, clip_start = embeddings["clips_run"], embeddings["clips_start"]
    clip_frames = embeddings.get("clip_frames") or (int(np.diff(clip_start[:2])[0]) if len(clip_start) > 1 else 16)
    clip_fc, clip_map, run_fc, run_map, datasets = [], [], [], [], {}
    for index, run in enumerate(runs):
        frames, mean = _run_frames(run, datasets)
        starts = clip_start[clip_run == index]
        clips = np.stack([frames[s:s + clip_frames] for s in starts]) if len(starts) else np.zeros((0, clip_frames, frames.shape[1]))
        clip_fc.append(fc_features(clips, yeo7))
        clip_map.append(mean_map_features(clips, glasser))
        run_fc.append(fc_features(frames, yeo17))
        run_map.append(None if mean is None else mean_map_features(mean[None], glasser))  # the tissue-contrast map
    for dataset in datasets.values():
        dataset.close()
    subjects = np.array([r["entities"]["subject"] for r in runs])
    rows = []
    task = np.array([runs[i]["entities"]["task"] for i in clip_run])
    if len(set(task)) > 1:
        sets = {"embedding (class token)": embeddings["clips_cls"], "embedding (mean patch)": embeddings["clips_patch_mean"],
                "FC baseline (Yeo-7, within clip)": np.concatenate(clip_fc),
                "raw baseline (clip mean map, Glasser)": np.concatenate(clip_map)}
        for row in compare_features(sets, task, subjects[clip_run], task="classification", n_splits=folds, seed=seed):
            rows.append({"target": "task state (per clip)"} | row)
    labels = np.array([participants.get(s, {}).get(trait, "n/a") for s in subjects])
    if len(set(labels) - {"n/a"}) > 1:
        keep = labels != "n/a"
        sets = {"embedding (class token)": embeddings["runs_cls"], "embedding (mean patch)": embeddings["runs_patch_mean"],
                "FC baseline (Yeo-17, whole run)": np.stack(run_fc)}
        if all(m is not None for m in run_map):  # shards hold cleaned frames only, not the mean before cleaning
            sets["raw baseline (mean map, Glasser)"] = np.stack(run_map)
        sets = {k: v[keep] for k, v in sets.items()}
        for row in compare_features(sets, labels[keep], subjects[keep], task="classification", n_splits=folds, seed=seed):
            rows.append({"target": f"{trait} (per run)"} | row)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    configure_logging()
    log = logging.getLogger("flatprep")
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    # Strongly regularised fits on few subjects often stop at max_iter; the scores still stand.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    from flatprep.learn.embed import read_embeddings
    from flatprep.exceptions import FlatprepError
    from flatprep.learn.probe import write_probe_report

    try:
        embeddings = read_embeddings(args.embeddings_dir / "embeddings.h5")
        rows = probe_tables(embeddings, args.flatprep_dir, _participants(args.bids_dir), trait=args.trait,
                            folds=args.folds, seed=args.seed)
    except (FlatprepError, OSError, KeyError) as err:
        log.error("%s", err)
        return 2
    tsv, png = write_probe_report(rows, args.output_dir / "probe.tsv", args.output_dir / "probe.png",
                                  title="Linear probes (subject-level CV): embeddings vs baselines")
    for row in rows:
        log.info("%-22s %-40s %s %.3f ± %.3f (chance %.3f)", row["target"], row["features"], row["metric"],
                 row["mean"], row["std"], row["chance"])
    log.info("wrote %s and %s", tsv, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
