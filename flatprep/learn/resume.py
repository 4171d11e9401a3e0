"""What ``flatprep-train --resume`` may change, and the data it must find unchanged.

A resumed run continues the optimisation it checkpointed. Settings fall in
two kinds (:data:`RESUME_REFUSED`, :data:`RESUME_APPLIED`):

* refused: what the model, its inputs or the order of the clips depend on
  (architecture, splits, normalisation, batch size, seed, shuffling,
  workers). Changing one mid-run would train a different model on different
  data under the same run folder; the resume stops with one line naming it.
* applied: the schedule and the bookkeeping (learning rates, warm-up, step
  budget, weight decay, betas, clipping, logging, evaluation, checkpoint
  intervals, device). Each change is logged, written into ``config.toml`` and
  appended to the ``resumes`` list of every later checkpoint's config.json.

The shards must be the ones the run started on: :func:`data_fingerprint`
records each run's split and content checksum and each shard's checksum, and
:func:`fingerprint_changes` names what moved (a subject that changed split, a
run added, removed or rewritten, a shard repacked).
"""

from __future__ import annotations

import json
import logging

from ..exceptions import TrainConfigError

logger = logging.getLogger(__name__)

#: Settings a resumed run refuses to change, with the reason given to the user.
RESUME_REFUSED = {
    "model": "the architecture", "model_args": "the architecture",
    "train_split": "the training clips", "val_split": "the validation clips",
    "normalize": "the model's inputs", "clip_value": "the model's inputs",
    "batch_size": "the clips of each step", "seed": "the clip order and the masks",
    "shuffle": "the clip order", "shuffle_buffer": "the clip order", "num_workers": "the clip order",
}
#: Settings a resumed run applies (each change logged and recorded).
RESUME_APPLIED = ("data", "out_dir", "steps", "lr", "min_lr", "warmup_steps", "weight_decay", "beta1", "beta2",
                  "grad_clip", "log_every", "eval_every", "eval_batches", "baseline_components", "save_every",
                  "device", "bf16")


def changed_settings(saved: dict, current: dict, checkpoint) -> dict:
    """The settings that differ between a checkpoint's training config and this one: key -> [old, new].

    Raises
    ------
    TrainConfigError
        One line naming the first refused setting that changed, with both values.
    """
    changes = {key: [saved[key], value] for key, value in current.items() if key in saved and saved[key] != value}
    for key, (old, new) in changes.items():
        if key in RESUME_REFUSED:
            raise TrainConfigError(
                f"{checkpoint}: --resume cannot change {key} ({old!r} in the checkpoint, {new!r} now): it changes "
                f"{RESUME_REFUSED[key]} of a run in progress; resume with {_override(key, old)}, or start a new "
                "run in another out_dir")
    return changes


def _override(key: str, value) -> str:
    """``--set`` text that restores ``value`` (``model_args.tubelet=4`` for a table)."""
    if isinstance(value, dict):
        return " ".join(f"{key}.{name}={json.dumps(item)}" for name, item in value.items()) or f"no {key}"
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def apply_schedule(optimizer, scheduler, config, changes: dict) -> None:
    """Put the changed optimisation settings into a restored optimizer and schedule.

    The restored state carries the checkpoint's learning rate, betas and weight
    decay; the schedule's shape (warm-up, cosine decay to ``min_lr`` over
    ``steps``) comes from ``config`` already (the factor is rebuilt, not
    restored). The learning rate of the current step is recomputed.
    """
    if not changes.keys() & {"lr", "min_lr", "warmup_steps", "steps", "weight_decay", "beta1", "beta2"}:
        return
    step = scheduler.last_epoch
    before = scheduler.get_last_lr()[0]
    scheduler.base_lrs = [config.lr for _ in optimizer.param_groups]
    for index, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = config.lr
        group["betas"] = (config.beta1, config.beta2)
        if index == 0:  # configure_optimizer: group 0 decays, group 1 (biases, norms) never does
            group["weight_decay"] = config.weight_decay
        group["lr"] = config.lr * scheduler.lr_lambdas[index](step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    logger.info("schedule from step %d: lr %.3g (was %.3g)", step, scheduler.get_last_lr()[0], before)


def log_changes(changes: dict, step: int) -> None:
    for key, (old, new) in changes.items():
        logger.info("resume at step %d: %s %r -> %r (applied)", step, key, old, new)


# --------------------------------------------------------------------------- the data a run started on


def data_fingerprint(rows: list[dict], description: dict) -> dict:
    """What a run trains on, to compare on resume.

    Parameters
    ----------
    rows : list of dict
        manifest.tsv rows (:func:`flatprep.shards.read_manifest`).
    description : dict
        manifest.json.

    Returns
    -------
    dict
        ``splits``: subject -> split; ``runs``: run -> [split, source sha256];
        ``shards``: shard file -> sha256.
    """
    return {
        "splits": {row["subject"]: row["split"] for row in sorted(rows, key=lambda r: r["run"])},
        "runs": {row["run"]: [row["split"], row["source_sha256"]] for row in rows},
        "shards": {entry.get("file"): entry.get("sha256") for entry in description.get("shards", [])},
    }


def _some(names, limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def fingerprint_changes(saved: dict, current: dict) -> list[str]:
    """What differs between two :func:`data_fingerprint` results, in words ([] when nothing does)."""
    found = []
    old_splits, new_splits = saved.get("splits", {}), current.get("splits", {})
    moved = [f"sub-{s} {old_splits[s]}->{new_splits[s]}" for s in old_splits
             if s in new_splits and old_splits[s] != new_splits[s]]
    if moved:
        found.append(f"{len(moved)} subject(s) changed split ({_some(moved)})")
    added = new_splits.keys() - old_splits.keys()
    if added:
        found.append(f"{len(added)} subject(s) added ({_some(f'sub-{s} ({new_splits[s]})' for s in added)})")
    removed = old_splits.keys() - new_splits.keys()
    if removed:
        found.append(f"{len(removed)} subject(s) removed ({_some(f'sub-{s}' for s in removed)})")
    old_runs, new_runs = saved.get("runs", {}), current.get("runs", {})
    rewritten = [r for r in old_runs if r in new_runs and old_runs[r][1] != new_runs[r][1]]
    if rewritten:
        found.append(f"{len(rewritten)} run file(s) changed content ({_some(rewritten)})")
    for word, runs in (("added", new_runs.keys() - old_runs.keys()), ("removed", old_runs.keys() - new_runs.keys())):
        if runs:
            found.append(f"{len(runs)} run(s) {word} ({_some(runs)})")
    if not found and saved.get("shards") != current.get("shards"):
        files = {f for f in saved.get("shards", {}).keys() | current.get("shards", {}).keys()
                 if saved.get("shards", {}).get(f) != current.get("shards", {}).get(f)}
        found.append(f"shard file(s) rewritten or repacked ({_some(files)})")
    return found


def check_same_data(checkpoint, saved: dict | None, current: dict, shard_dir) -> None:
    """Refuse a resume whose shards differ from those the run started on (one line naming what changed)."""
    if saved is None:
        logger.warning("%s: written before checkpoints recorded their data; cannot check that %s holds the "
                       "shards this run started on", checkpoint, shard_dir)
        return
    changes = fingerprint_changes(saved, current)
    if changes:
        raise TrainConfigError(
            f"{shard_dir}: differs from the shards this run started on ({'; '.join(changes)}); resuming would train "
            f"on other data under {checkpoint.parent.parent}: restore those shards, or start a new run in another "
            "out_dir")
