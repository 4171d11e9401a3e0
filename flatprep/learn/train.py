"""Masked-autoencoder pretraining on flat-map shards.

Read top to bottom: ``build_*`` functions make each piece and :func:`build`
puts them together (resuming from the newest valid checkpoint);
:func:`train_one_epoch` runs :func:`train_one_step` over one epoch of packed
batches (images made on the device by :func:`device_clips`), calling
:func:`evaluate` and :func:`~flatprep.learn.checkpoint.save_checkpoint` on
schedule; :func:`run` loops epochs until the step budget is spent. The same code runs on
one CPU (tests), one GPU (bf16 autocast, fused AdamW, SDPA kernels) or many
through ``torchrun`` (DDP; NCCL on GPU, gloo on CPU). Only rank 0 logs and
writes.

Exact resume: the data order is a function of (seed, epoch), the mask of
every step a function of (seed, step), and a checkpoint records the step,
the epoch and the batches consumed in it, so ``--resume`` after a kill
continues with the same losses as an uninterrupted run (on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..atomic import signals_held, write_text
from .checkpoint import load_training_state, read_config, resume_checkpoint, save_checkpoint
from ..config import check_fields, parse_text, replace_fields, text_none
from ..exceptions import FlatprepError, Interrupted, TrainConfigError
from ..h5 import read_run_attrs
from ..progress import progress_bar
from ..shards import encode_mask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting, with its default. Files (TOML) and ``key=value``
    overrides are checked against these fields and their types."""

    # --- data
    data: str = ""  # flatprep output folder holding shards/ (the group level's output)
    train_split: str = "train"
    val_split: str = "val"
    normalize: str = "frame"  # per-frame z-score over valid pixels, as the reference; "none" to keep the stored values
    clip_value: float = 3.0  # clip to +-3 after normalising (0: no clipping)
    num_workers: int = 2  # DataLoader workers per rank
    shuffle: bool = True  # new clip order each epoch; False reads clips in file order (tests, equivalence checks)
    shuffle_buffer: int = 256  # clips mixed by each worker's shuffle buffer
    # --- model
    model: str = "micro"  # named size: micro, tiny, small, base
    model_args: dict = field(default_factory=dict)  # MAEConfig overrides, e.g. {"tubelet": 4}
    # --- optimisation
    batch_size: int = 8  # clips per rank and step
    steps: int = 200  # optimizer steps in all
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-5  # floor of the cosine decay
    warmup_steps: int = 20  # linear warm-up from 0
    weight_decay: float = 0.05  # applied to tensors with >= 2 dims only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max gradient norm (0: off)
    # --- run
    out_dir: str = "runs/mae"  # run folder: config.toml, metrics.jsonl, checkpoints/, figures/
    seed: int = 0
    log_every: int = 10  # steps between metric lines
    eval_every: int = 50  # steps between validations (0: only at the end)
    eval_batches: int = 4  # validation batches averaged
    baseline_components: int = 8  # components of the PCA baseline scored at each validation (0: off)
    save_every: int = 50  # steps between checkpoints (0: only at the end)
    device: str = "auto"  # auto, cpu, cuda
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)

    def __post_init__(self):
        check_fields(self, TrainConfigError)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_config(file: str | os.PathLike | None = None, overrides: list[str] | None = None,
                   **values) -> TrainConfig:
    """Defaults, then a TOML file, then ``key=value`` overrides (``model_args.tubelet=4`` too).

    Unknown keys and values of the wrong type raise :class:`TrainConfigError`.
    """
    hints = typing.get_type_hints(TrainConfig)
    merged: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        try:
            loaded = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise TrainConfigError(f"{path}: cannot read the config ({err})") from err
        merged |= loaded
    merged |= values
    model_args = dict(merged.pop("model_args", {}) or {})
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise TrainConfigError(f"override {item!r}: expected key=value")
        key = key.strip()
        if key.startswith("model_args."):
            model_args[key.split(".", 1)[1]] = parse_text(text, typing.Any)
        else:
            merged[key] = parse_text(text, hints[key]) if key in hints else text
    return replace_fields(TrainConfig(), merged | {"model_args": model_args}, TrainConfigError, what="setting")


def config_to_toml(config: TrainConfig) -> str:
    """The resolved config as TOML (flat keys, then a [model_args] table)."""
    lines = [f"# flatprep {__version__} training config (resolved)"]
    values = config.to_dict()
    model_args = values.pop("model_args")
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines.append("")
    lines.append("[model_args]")
    for key, value in sorted(model_args.items()):
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> Distributed:
    """Join the torchrun process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed()
    import torch.distributed as dist

    info = Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return info


def teardown_distributed(info: Distributed) -> None:
    import torch.distributed as dist

    if info.world_size > 1 and dist.is_initialized():
        dist.barrier()  # with gloo, destroying without a barrier crashes about a third of 2-process runs
        dist.destroy_process_group()


# --------------------------------------------------------------------------- builders


def build_device(config: TrainConfig, dist_info: Distributed) -> torch.device:
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainConfigError("device=cuda but CUDA is not available")
    torch.cuda.set_device(dist_info.local_rank)
    return torch.device("cuda", dist_info.local_rank)


#: Batch buffers each training DataLoader worker reuses: prefetch_factor (2) in flight, one in use, one spare.
REUSED_BATCHES = 4


def build_dataset(config: TrainConfig, split: str, dist_info: Distributed, *, shuffle: bool = True,
                  reuse_batches: int = 0, drop_last: bool = True):
    """The packed clip stream of ``split`` for this rank (batches built in the workers).

    ``reuse_batches``: see :class:`~flatprep.learn.data.FlatClipsStream`; safe for the training
    loop, which copies every batch to the device before it takes the next. ``drop_last``: training
    steps take whole batches; validation scores every clip (``False``).
    """
    from .data import FlatClipsStream

    try:
        return FlatClipsStream(
            Path(config.data), split=split, seed=config.seed, shuffle=shuffle and config.shuffle,
            shuffle_buffer=config.shuffle_buffer, drop_uneven=dist_info.world_size > 1,
            rank=dist_info.rank, world_size=dist_info.world_size, batch_size=config.batch_size,
            drop_last=drop_last, reuse_batches=reuse_batches,
        )
    except ValueError as err:  # an unknown split name, or a split without clips
        if isinstance(err, FlatprepError):
            raise
        raise TrainConfigError(f"{split} split: {err}") from err


def build_val_loader(config: TrainConfig, n_clips: int, *, log: bool = True):
    """The validation loader over every clip of ``val_split`` (the last batch may be short), or None.

    A split without clips gives None and one warning: training goes on without validation.
    """
    if n_clips == 0:
        if log:
            logger.warning("%s: the %r split holds no clip; training goes on without validation (no val_loss)",
                           config.data, config.val_split)
        return None
    if n_clips < config.batch_size and log:
        logger.warning("%s: the %r split holds %d clip(s), fewer than batch_size=%d; each validation scores "
                       "them as one batch of %d", config.data, config.val_split, n_clips, config.batch_size, n_clips)
    val_set = build_dataset(config, config.val_split, Distributed(), shuffle=False, drop_last=False)
    return build_loader(val_set, dataclasses.replace(config, num_workers=0))


def check_training_data(config: TrainConfig) -> tuple[Path, dict, int]:
    """The shards folder, its fingerprint and its count of validation clips.

    Refuses, in one line, shards that ``flatprep-validate`` flags without reading
    the shards: a subject or group in several splits, and every manifest check
    of :func:`flatprep.manifest_checks.manifest_problems` (duplicated rows or
    shards, counts, overlapping runs, splits against ``splits.tsv``).
    """
    from ..manifest_checks import manifest_problems
    from ..shards import read_manifest, shard_folder
    from ..validate import split_problems
    from .resume import data_fingerprint

    shard_dir = shard_folder(config.data)
    rows, description = read_manifest(shard_dir)
    problems = split_problems(rows) + manifest_problems(shard_dir, rows, description)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TrainConfigError(f"{shard_dir}/{problems[0]}{more}; training would not read what the manifest "
                               "promises: regroup, or fix the shards (flatprep-validate lists every problem)")
    n_val = sum(int(row["clips"]) for row in rows
                if row["split"] == config.val_split and str(row.get("clips") or "").isdigit())
    return shard_dir, data_fingerprint(rows, description), n_val


def build_loader(dataset, config: TrainConfig):
    """A DataLoader over a batching stream: packed float16 values travel, images are made on the device."""
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=config.num_workers,
                                       persistent_workers=False, pin_memory=torch.cuda.is_available(),
                                       prefetch_factor=2 if config.num_workers else None)


def device_clips(batch: dict, pixels, config: TrainConfig, device: torch.device) -> torch.Tensor:
    """A batch's packed values as normalised clips on the device: (B, 1, T, H, W) float32."""
    from .data import prepare_clips

    return prepare_clips(batch["values"], pixels, normalize=text_none(config.normalize),
                         clip_value=config.clip_value or None, device=device)


#: Training clips (evenly spaced) and frames per clip (evenly spaced) that the PCA baseline is fitted on.
BASELINE_CLIPS, BASELINE_FRAMES_PER_CLIP = 128, 4


def build_pca_baseline(config: TrainConfig):
    """The PCA baseline fitted on training frames normalised as the model sees them, or None.

    Deterministic: the same clips and frames on every call, so a resumed run
    scores the same baseline.
    """
    from .baselines import PCABaseline
    from .data import FlatClipsDataset, normalize_frames

    if config.baseline_components <= 0:
        return None
    dataset = FlatClipsDataset(Path(config.data), split=config.train_split)
    try:
        clips = np.unique(np.linspace(0, len(dataset) - 1, min(BASELINE_CLIPS, len(dataset))).round().astype(int))
        frames = []
        for index in clips:
            values = dataset[int(index)]["values"]  # (T, P) float16
            step = max(1, values.shape[0] // BASELINE_FRAMES_PER_CLIP)
            frames.append(values[::step].float())  # (frames, P)
        valid = np.asarray(dataset.mask, dtype=bool)
    finally:
        dataset.close()
    frames = normalize_frames(torch.cat(frames), text_none(config.normalize),
                              config.clip_value or None)
    n_components = min(config.baseline_components, *frames.shape)
    return PCABaseline.fit(frames, valid, n_components=n_components)


def build_model(config: TrainConfig, valid_mask: np.ndarray, clip_frames: int):
    from .model import build_model as build

    return build(config.model, img_size=tuple(int(s) for s in valid_mask.shape), clip_frames=clip_frames,
                 **config.model_args)


def build_optimizer(model, config: TrainConfig):
    return model.configure_optimizer(config.weight_decay, config.lr, (config.beta1, config.beta2))


def build_scheduler(optimizer, config: TrainConfig):
    """Linear warm-up, then cosine decay to ``min_lr``."""
    floor = config.min_lr / config.lr if config.lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------- steps


def step_noise(model, batch_size: int, step: int, seed: int, dist_info: Distributed, device) -> torch.Tensor:
    """Masking noise of this rank's samples at ``step``.

    Drawn for the whole global batch from (seed, step) and sliced by rank, so a
    DDP run masks each clip exactly as one process with the global batch does,
    and a resumed run masks as the uninterrupted one.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    noise = torch.rand(batch_size * dist_info.world_size, model.noise_size, generator=generator)
    return noise[dist_info.rank::dist_info.world_size].to(device)


def _autocast(device: torch.device, config: TrainConfig):
    enabled = device.type == "cuda" and config.bf16
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def train_one_step(model, clips: torch.Tensor, valid: torch.Tensor, optimizer, scheduler, *, config: TrainConfig,
                   step: int, dist_info: Distributed) -> float:
    """One optimizer step on clips (B, 1, T, H, W) on the device; returns the loss (averaged over ranks)."""
    noise = step_noise(unwrap(model), clips.shape[0], step, config.seed, dist_info, clips.device)
    model.train()
    with _autocast(clips.device, config):
        loss, _, _ = model(clips, valid, noise=noise, return_pred=False)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"step {step}: loss is {loss.item()}; lower lr (now {scheduler.get_last_lr()[0]:.2e})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    value = loss.detach()
    if dist_info.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(value, op=dist.ReduceOp.SUM)  # gloo has no AVG
        value /= dist_info.world_size
    return float(value)


@torch.no_grad()
def evaluate(model, loader, pixels, *, config: TrainConfig, device: torch.device, n_batches: int,
             baseline=None) -> dict:
    """Masked loss on validation batches, with two references scored on the same pixels.

    Returns ``val_loss``; ``val_zero_loss``, the loss of predicting zeros; and,
    given a :class:`~flatprep.learn.baselines.PCABaseline`, ``val_pca_loss``, the
    loss of its fit to the visible pixels; each the mean over clips. {} when the loader is empty.
    """
    core = unwrap(model)
    core.eval()
    valid = pixels.torch_mask(device)
    scores: dict[str, list[float]] = {"val_loss": [], "val_zero_loss": [], "val_pca_loss": []}
    sizes = []  # clips per batch: a short last batch weighs by its clips
    for index, batch in enumerate(loader):
        if index >= n_batches:
            break
        clips = device_clips(batch, pixels, config, device)  # (B, 1, T, H, W), background 0
        generator = torch.Generator().manual_seed(10_000_019 + index)  # same masks at every evaluation
        noise = torch.rand(clips.shape[0], core.noise_size, generator=generator).to(device)
        with _autocast(device, config):
            loss, pred, mask = core(clips, valid, noise=noise)
        sizes.append(clips.shape[0])
        scores["val_loss"].append(float(loss))
        scores["val_zero_loss"].append(float(core.forward_loss(clips, torch.zeros_like(pred), mask, valid[None])))
        if baseline is not None:
            rebuilt = baseline.predict(clips, mask, tubelet=core.config.tubelet, patch_size=core.config.patch_size)
            scores["val_pca_loss"].append(float(core.forward_loss(clips, core.patchify(rebuilt), mask, valid[None])))
    core.train()
    return {name: float(np.average(values, weights=sizes)) for name, values in scores.items() if values}


@torch.no_grad()
def save_reconstruction_png(model, clips: torch.Tensor, pixels, path: Path) -> Path:
    """Input, masked input and prediction of the first clip's first frame, on the flat map."""
    from ..qc import save_reconstruction_figure

    core = unwrap(model)
    core.eval()
    clips = clips[:1]
    valid = pixels.torch_mask(clips.device)
    noise = torch.rand(1, core.noise_size, generator=torch.Generator().manual_seed(7)).to(clips.device)
    _, pred, mask = core(clips, valid, noise=noise)
    image = core.unpatchify(pred).float().cpu()[0, 0, 0]  # (H, W)
    hidden = core.unpatchify(mask[..., None].expand_as(pred)).cpu()[0, 0, 0] > 0.5  # (H, W)
    core.train()
    frame_in = clips.cpu()[0, 0, 0]  # (H, W)
    return save_reconstruction_figure(pixels, frame_in.numpy(), hidden.numpy(), image.numpy(), path)


# --------------------------------------------------------------------------- the run


@dataclass
class Training:
    """Everything a run holds: built once by :func:`build`, advanced by :func:`train_one_epoch`."""

    config: TrainConfig
    dist_info: Distributed
    device: torch.device
    train_set: Any
    val_loader: Any
    pixels: Any
    model: torch.nn.Module  # the model itself (saved, evaluated)
    ddp_model: torch.nn.Module  # what the step calls (DDP wrapper when world_size > 1)
    optimizer: Any
    scheduler: Any
    baseline: Any
    description: dict  # stored in every checkpoint
    out_dir: Path
    step: int = 0
    epoch: int = 0
    skip: int = 0  # batches of `epoch` already consumed (resume)
    consumed: int = 0  # batches of `epoch` used so far (what a checkpoint of an interrupted run records)
    last: dict = field(default_factory=dict)
    bar: Any = None  # tqdm bar on a terminal (rank 0)
    window: Any = None  # losses and clips since the last metric line (a _Window)


def build(config: TrainConfig, dist_info: Distributed, *, resume: bool) -> Training:
    """Data, model, optimiser and schedule; the run folder checked; the state restored on ``resume``."""
    from .data import ShardIndex

    out_dir = Path(config.out_dir)
    checkpoint = resume_checkpoint(out_dir) if resume else None
    if not resume:
        refuse_existing_run(out_dir)
    elif checkpoint is None:
        logger.warning("%s holds no checkpoint yet: --resume starts at step 0", out_dir)
    shard_dir, fingerprint, n_val = check_training_data(config)
    saved = read_config(checkpoint) if checkpoint is not None else None
    changes = _check_resume(checkpoint, saved, config, fingerprint, shard_dir) if saved is not None else {}
    device = build_device(config, dist_info)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    train_set = build_dataset(config, config.train_split, dist_info, reuse_batches=REUSED_BATCHES)
    n_rank = len(train_set.rank_clips())
    if n_rank < config.batch_size:  # every epoch would end before its first step
        raise TrainConfigError(f"{config.data}: the {config.train_split!r} split holds {n_rank} clip(s) per rank, "
                               f"fewer than batch_size={config.batch_size}, so no step could run; lower batch_size")
    index: ShardIndex = train_set.index
    pixels = train_set.pixels
    model = build_model(config, pixels.mask, index.clip_frames).to(device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    description = {"train": config.to_dict(), "model": model.config.to_dict(), "grid": index.grid,
                   "mask": encode_mask(pixels.mask), "clip_frames": index.clip_frames,
                   "clean_options": _clean_request(config, index), "flatprep_version": __version__,
                   "data": fingerprint, "resumes": list((saved or {}).get("resumes", []))}
    state = Training(config, dist_info, device, train_set, None, pixels, model, model, optimizer, scheduler, None,
                     description, out_dir)
    if checkpoint is not None:
        _check_same_model(checkpoint, saved["model"], description["model"])
        progress = load_training_state(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler)
        state.step, state.epoch, state.skip = progress["step"], progress["epoch"], progress["batches_in_epoch"]
        logger.info("resumed from %s at step %d", checkpoint, state.step)
        if changes:
            _apply_changes(state, changes)
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text(out_dir / "config.toml", config_to_toml(config))
        keep_metrics_until(out_dir / "metrics.jsonl", state.step)
        logger.info("flatprep %s; %d parameters (%s); %d training clips per rank; device %s x %d",
                    __version__, model.num_parameters(), config.model, len(train_set.rank_clips()), device,
                    dist_info.world_size)
    if dist_info.world_size > 1:
        state.ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    state.val_loader = build_val_loader(config, n_val, log=dist_info.is_main)
    state.baseline = build_pca_baseline(config) if dist_info.is_main else None
    return state


def _check_resume(checkpoint: Path, saved: dict, config: TrainConfig, fingerprint: dict, shard_dir: Path) -> dict:
    """The settings this resume changes (key -> [old, new]); refuses a refused one, or other shards, in one line."""
    from .resume import changed_settings, check_same_data

    changes = changed_settings(saved.get("train", {}), config.to_dict(), checkpoint)
    check_same_data(checkpoint, saved.get("data"), fingerprint, shard_dir)
    return changes


def _check_same_model(checkpoint: Path, saved: dict, current: dict) -> None:
    """One line naming every model setting where the checkpoint and this config differ."""
    differ = [f"{key} {saved.get(key)!r} in the checkpoint, {current.get(key)!r} here"
              for key in sorted(saved.keys() | current.keys()) if saved.get(key) != current.get(key)]
    if differ:
        raise TrainConfigError(f"{checkpoint}: the checkpoint's model differs from this config ({'; '.join(differ)}); "
                               "resume with the same model and the same shards' grid")


def _apply_changes(state: Training, changes: dict) -> None:
    """Put the changed schedule settings into the restored optimizer; record the change in later checkpoints."""
    from .resume import apply_schedule, log_changes

    if state.dist_info.is_main:
        log_changes(changes, state.step)
    apply_schedule(state.optimizer, state.scheduler, state.config, changes)
    state.description["resumes"].append({"step": state.step, "changed": changes})


def _clean_request(config: TrainConfig, index) -> dict | None:
    """How the training runs were cleaned: from manifest.json, else (older manifests) the first per-run file."""
    if index.clean_request is not None or not index.runs:
        return index.clean_request
    source = Path(config.data) / index.runs[0].get("source", "")
    return read_run_attrs(source)[0].get("clean_request") if source.is_file() else None


def refuse_existing_run(out_dir: Path) -> None:
    """A run folder that already holds a run is never overwritten: one line, pointing at --resume."""
    pointer = out_dir / "checkpoints" / "latest"
    if pointer.exists() or (out_dir / "metrics.jsonl").exists():
        raise TrainConfigError(f"{out_dir}: already holds a training run ({'checkpoints/latest' if pointer.exists() else 'metrics.jsonl'}); "
                               "pass --resume to continue it, or choose another out_dir")


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop the metric lines after ``step`` (written before a kill, redone after the resume): each step once."""
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    write_text(path, "".join(line + "\n" for line in kept))


def train_one_epoch(state: Training) -> None:
    """Train until the epoch's data or the step budget ends; log, evaluate and save on schedule."""
    config, dist_info = state.config, state.dist_info
    state.train_set.set_epoch(state.epoch)
    window = state.window
    consumed = 0
    for batch in build_loader(state.train_set, config):
        if consumed < state.skip:  # resuming mid-epoch: the order is the same, skip what was used
            consumed += 1
            continue
        clips = device_clips(batch, state.pixels, config, state.device)
        with signals_held():  # SIGINT/SIGTERM land between steps, never inside one
            loss = train_one_step(state.ddp_model, clips, state.pixels.torch_mask(state.device), state.optimizer,
                                  state.scheduler, config=config, step=state.step, dist_info=dist_info)
            state.step, consumed = state.step + 1, consumed + 1
            state.consumed = consumed
        window.add(loss, clips.shape[0] * dist_info.world_size)
        if dist_info.is_main:
            _report_step(state, window, loss)
        if dist_info.is_main and ((config.eval_every and state.step % config.eval_every == 0)
                                  or state.step == config.steps):
            _evaluate_and_log(state)
        if (config.save_every and state.step % config.save_every == 0) or state.step == config.steps:
            if dist_info.is_main:
                save_checkpoint(state.out_dir / "checkpoints" / f"step-{state.step:06d}", model=state.model,
                                optimizer=state.optimizer, scheduler=state.scheduler, config=state.description,
                                progress={"step": state.step, "epoch": state.epoch, "batches_in_epoch": consumed})
        if state.step >= config.steps:
            return
    state.epoch, state.skip, state.consumed = state.epoch + 1, 0, 0


class _Window:
    """Losses and clips since the last metric line."""

    def __init__(self):
        self.start, self.clips, self.losses = time.perf_counter(), 0, []

    def add(self, loss: float, clips: int) -> None:
        self.losses.append(loss)
        self.clips += clips

    def rate(self) -> float:
        return self.clips / max(time.perf_counter() - self.start, 1e-9)


def _report_step(state: Training, window: _Window, loss: float) -> None:
    """A tqdm bar on a terminal; a metric line (and a log line) every ``log_every`` steps."""
    config = state.config
    if state.bar is not None:
        state.bar.update(1)
        state.bar.set_postfix(loss=f"{loss:.4f}", clips_per_s=f"{window.rate():.1f}", refresh=False)
    if state.step % config.log_every == 0 or state.step == config.steps:
        # The logged loss is the mean over the steps since the previous line.
        state.last = {"step": state.step, "epoch": state.epoch, "loss": float(np.mean(window.losses)),
                      "lr": state.scheduler.get_last_lr()[0], "clips_per_s": window.rate()}
        _metrics_line(state.out_dir / "metrics.jsonl", state.last)
        logger.info("step %d/%d loss %.4f lr %.2e %.1f clips/s", state.step, config.steps, state.last["loss"],
                    state.last["lr"], state.last["clips_per_s"])
        window.__init__()


def _evaluate_and_log(state: Training) -> None:
    config = state.config
    if state.val_loader is None:  # no validation clips (warned once at the start)
        return
    scores = evaluate(state.ddp_model, state.val_loader, state.pixels, config=config, device=state.device,
                      n_batches=config.eval_batches, baseline=state.baseline)
    if not scores:
        return
    state.last |= {"step": state.step, **scores}
    _metrics_line(state.out_dir / "metrics.jsonl", {"step": state.step, **scores})
    pca = (f"; PCA baseline, {state.baseline.n_components} components: {scores['val_pca_loss']:.4f}"
           if "val_pca_loss" in scores else "")
    logger.info("step %d val_loss %.4f (predicting zeros: %.4f%s)", state.step, scores["val_loss"],
                scores["val_zero_loss"], pca)
    example = device_clips(next(iter(state.val_loader)), state.pixels, config, state.device)
    save_reconstruction_png(state.model, example, state.pixels,
                            state.out_dir / "figures" / f"recon_step-{state.step:06d}.png")


def _metrics_line(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def save_interrupted(state: Training) -> Path | None:
    """Checkpoint the last finished step of a stopped run (SIGTERM of a preemptible job); return its folder.

    None on other ranks and before the first step. ``--resume`` continues from it.
    """
    if not state.dist_info.is_main or state.step == 0:
        return None
    folder = state.out_dir / "checkpoints" / f"step-{state.step:06d}"
    if not folder.exists():  # else the scheduled save of this step was finished
        save_checkpoint(folder, model=state.model, optimizer=state.optimizer, scheduler=state.scheduler,
                        config=state.description,
                        progress={"step": state.step, "epoch": state.epoch, "batches_in_epoch": state.consumed})
    return folder


def run(config: TrainConfig, *, resume: bool = False) -> dict:
    """Train; return the final metrics (on rank 0; {} elsewhere).

    Stopped by :class:`~flatprep.exceptions.Interrupted`, it saves the last
    finished step (:func:`save_interrupted`) and raises it again with
    ``checkpoint`` set (the folder, or None).
    """
    device_kind = "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist_info = setup_distributed(device_kind)
    try:
        state = build(config, dist_info, resume=resume)
        state.bar = progress_bar(config.steps, initial=state.step, desc="training", unit="step") if dist_info.is_main else None
        state.window = _Window()
        try:
            while state.step < config.steps:
                train_one_epoch(state)
        except Interrupted as stop:
            stop.checkpoint = save_interrupted(state)
            raise
        finally:
            if state.bar is not None:
                state.bar.close()
        return state.last if dist_info.is_main else {}
    finally:
        teardown_distributed(dist_info)
