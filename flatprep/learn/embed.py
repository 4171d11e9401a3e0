"""Embeddings of scans from a pretrained encoder.

:class:`Encoder` loads a checkpoint (safetensors + JSON) and turns the flat-map
frames of a run into per-clip embeddings: the class token and the mean of the
patch tokens, from the encoder run without masking. New scans go through the
same cleaning and projection as the participant level
(:func:`flatprep.prepare.prepare_run`, the grid's operator), and clips get the
same per-frame normalisation as in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..atomic import atomic_path
from ..config import text_none
from ..exceptions import ModelError
from ..shards import ENTITY_COLUMNS
from .checkpoint import CheckpointError, latest_checkpoint, load_model_weights, read_config

#: Grid keys two flat maps must share to be read by one encoder.
GRID_KEYS = ("template", "pixel_size_mm", "shape", "n_valid_pixels")


def describe_grid(description: dict | None) -> str:
    """A grid description in words: ``'fsaverage 2.4 mm, 96 x 224, 11,264 valid pixels'``."""
    if not description:
        return "an unrecorded grid"
    shape = " x ".join(str(n) for n in description.get("shape", ()))
    pixels = description.get("n_valid_pixels")
    return (f"{description.get('template')} {description.get('pixel_size_mm')} mm, {shape}"
            + (f", {pixels:,} valid pixels" if isinstance(pixels, int) else ""))


def same_grid(a: dict | None, b: dict | None) -> bool:
    """Whether two grid descriptions name one grid (keys missing from either are not compared)."""
    if not a or not b:
        return True
    return all(_plain(a[key]) == _plain(b[key]) for key in GRID_KEYS if key in a and key in b)


def _plain(value):
    return list(value) if isinstance(value, (tuple, list, np.ndarray)) else value


def check_device(device) -> torch.device:
    """``device`` as a torch device that exists here; one :class:`ModelError` line otherwise."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelError(f"device {device!r}: not a torch device ({err}); use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {str(device)!r}: CUDA is not available (torch {torch.__version__} "
                         f"{'is CPU-only' if torch.version.cuda is None else 'finds no GPU'}); use --device cpu")
    return device


@dataclass(frozen=True)
class ClipEmbeddings:
    """Embeddings of one run's clips.

    Attributes
    ----------
    cls, patch_mean : ndarray, float32, shape (n_clips, dim)
    start : ndarray, int64, shape (n_clips,)
        First frame of each clip in the run.
    """

    cls: np.ndarray
    patch_mean: np.ndarray
    start: np.ndarray


class Encoder:
    """A pretrained flat-map encoder.

    Use :meth:`from_pretrained` with a run folder (its latest checkpoint) or a
    checkpoint folder. Clips are prepared exactly as in training
    (:func:`~flatprep.learn.data.prepare_clips`: per-frame normalisation and
    the scatter onto the grid through its :class:`~flatprep.pixels.PixelIndex`).

    Parameters
    ----------
    model : MaskedAutoencoder
    pixels : PixelIndex
        The training grid's valid pixels (stored in the checkpoint).
    grid_description : dict
        The grid as ``FlatGrid.describe`` gave it; the grid itself (with its
        projection operators) is rebuilt only to flatten new scans.
    """

    def __init__(self, model, pixels, *, clip_frames: int, normalize: str | None, clip_value: float | None,
                 clean_options: dict | None, grid_description: dict | None = None, source: str = "",
                 device: str | torch.device = "cpu"):
        device = check_device(device)
        self.model = model.to(device).eval()
        self.pixels = pixels
        self.grid_description = grid_description or {}
        self.clip_frames = int(clip_frames)
        self.normalize = normalize
        self.clip_value = clip_value
        self.clean_options = clean_options
        self.source = source
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "Encoder":
        """Load from a run folder (latest checkpoint) or a checkpoint folder."""
        from ..pixels import PixelIndex
        from ..shards import decode_mask
        from .model import MAEConfig, MaskedAutoencoder

        device = check_device(device)
        path = Path(path)
        folder = path if (path / "model.safetensors").exists() else latest_checkpoint(path)
        if folder is None:
            raise CheckpointError(f"{path}: neither a checkpoint folder (model.safetensors) nor a run folder "
                                  "with checkpoints/latest")
        config = read_config(folder)
        model = MaskedAutoencoder(MAEConfig.from_dict(config["model"]))
        load_model_weights(folder, model)
        if config.get("mask"):
            pixels = PixelIndex(decode_mask(config["mask"], folder / "config.json"))
        else:  # checkpoints written before the mask was stored: rebuild the bundled grid
            from ..flatmap import grid_from_description

            pixels = grid_from_description(config["grid"]).pixels
        train = config.get("train", {})
        return cls(model, pixels, clip_frames=config["clip_frames"],
                   normalize=text_none(train.get("normalize")),
                   clip_value=train.get("clip_value") or None, clean_options=config.get("clean_options"),
                   grid_description=config.get("grid"), source=str(folder), device=device)

    @property
    def dim(self) -> int:
        return self.model.config.embed_dim

    @torch.no_grad()
    def embed_values(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-token and mean-patch embeddings of packed clips (B, T, P): two (B, dim) float32 tensors."""
        from .data import prepare_clips

        clips = prepare_clips(values, self.pixels, normalize=self.normalize, clip_value=self.clip_value,
                              device=self.device)  # (B, 1, T, H, W)
        out = self.model.encode(clips, self.pixels.torch_mask(self.device))
        return out["cls"].float().cpu(), out["patch_mean"].float().cpu()

    def embed_frames(self, frames: np.ndarray, *, batch_size: int = 16) -> ClipEmbeddings:
        """Embeddings of every whole clip of a run's frames (n_timepoints, n_pixels)."""
        frames = np.asarray(frames)
        if frames.ndim != 2 or frames.shape[1] != self.pixels.n_pixels:
            raise ModelError(f"frames must have shape (n_timepoints, {self.pixels.n_pixels}) for this encoder's "
                             f"grid ({describe_grid(self.grid_description)}), got {frames.shape}")
        n_clips = frames.shape[0] // self.clip_frames
        values = torch.from_numpy(frames[: n_clips * self.clip_frames]).view(n_clips, self.clip_frames, -1)
        out = [self.embed_values(values[begin:begin + batch_size]) for begin in range(0, n_clips, batch_size)]
        return _embeddings(out, np.arange(n_clips) * self.clip_frames, self.dim)

    def embed_shards(self, root: str | Path, *, batch_size: int = 16, num_workers: int = 0,
                     **clip_options) -> tuple[list[dict], list[ClipEmbeddings]]:
        """Embeddings of every clip of a shards folder, read by the training dataset, grouped by run.

        Parameters
        ----------
        root : path
            A flatprep output folder with ``shards/``, or a (copied) shards folder.
        **clip_options
            ``split``, ``subjects``, ``tasks``: as :class:`~flatprep.learn.data.FlatClipsDataset`.

        Returns
        -------
        runs : list of dict
            ``label``, ``entities`` (from the manifest) and ``source``, one per run with clips.
        embeddings : list of ClipEmbeddings
            Clip starts are first frames within the run.
        """
        from torch.utils.data import DataLoader

        from .data import FlatClipsDataset

        dataset = FlatClipsDataset(root, **clip_options)
        self.check_grid(dataset.index.grid, dataset.index.folder / "manifest.json")
        if dataset.clip_frames != self.clip_frames:
            raise ModelError(f"{dataset.index.folder}: clips of {dataset.clip_frames} frames, but the encoder "
                             f"{self.source} was trained on clips of {self.clip_frames}; regroup the shards with "
                             f"--clip-frames {self.clip_frames}")
        out, run_of_clip, starts = [], [], []
        for batch in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
            out.append(self.embed_values(batch["values"]))
            starts.append(batch["meta"]["frame"].numpy())
        dataset.close()
        run_of_clip = dataset.index.clip_run
        starts = np.concatenate(starts)
        cls, mean = (torch.cat([o[k] for o in out]).numpy() for k in (0, 1))
        runs, embeddings = [], []
        for r, row in enumerate(dataset.index.runs):
            keep = run_of_clip == r
            entities = {name: row[column] for column, name in ENTITY_COLUMNS.items() if row[column] != "n/a"}
            sha256 = None if row["source_sha256"] == "n/a" else row["source_sha256"]
            runs.append({"label": row["run"], "entities": entities, "source": row["source"],
                         "source_sha256": sha256, "shards": str(dataset.index.folder)})
            embeddings.append(ClipEmbeddings(cls[keep], mean[keep], starts[keep]))
        return runs, embeddings

    def check_grid(self, description: dict | None, source) -> None:
        """Refuse data on another grid than the encoder's, in one line naming both."""
        if not same_grid(description, self.grid_description):
            raise ModelError(f"{source}: flat maps on {describe_grid(description)}, but the encoder {self.source} "
                             f"was trained on {describe_grid(self.grid_description)}; embed data flattened on the "
                             "training grid (the participant level's --pixel-size)")

    def flatten_scan(self, bold_files, *, space: str | None = None, sidecars=(), confounds_file=None) -> np.ndarray:
        """Clean and project a surface BOLD run exactly as the participant level does: (T, n_pixels) float16."""
        from ..clean import CleanOptions
        from ..h5 import to_float16
        from ..prepare import FLAT_PRODUCT_DTYPE, prepare_run

        options = CleanOptions.from_dict(self.clean_options) if self.clean_options else CleanOptions(dtype="float32")
        prepared = prepare_run(bold_files, space=space, sidecars=sidecars, confounds_file=confounds_file,
                               options=options, product_dtype=FLAT_PRODUCT_DTYPE)
        from ..flatmap import grid_from_description

        grid = grid_from_description(self.grid_description)
        if not np.array_equal(grid.mask, self.pixels.mask):
            raise CheckpointError(f"{self.source}: the grid {self.grid_description.get('template')!r} rebuilt here "
                                  "differs from the checkpoint's mask; flatten new scans with the template "
                                  "the training data used")
        operator = grid.operator(prepared.bold.space)
        return to_float16(operator.project(prepared.cleaned.data.astype(np.float32)), source=str(bold_files[0]))


def _embeddings(parts: list, starts: np.ndarray, dim: int) -> ClipEmbeddings:
    empty = torch.zeros(0, dim)
    return ClipEmbeddings(torch.cat([p[0] for p in parts] or [empty]).numpy(),
                          torch.cat([p[1] for p in parts] or [empty]).numpy(), starts)


def write_embeddings(path: str | Path, runs: list[dict], embeddings: list[ClipEmbeddings], *, encoder: Encoder) -> Path:
    """Write per-clip and per-run embeddings with their BIDS entities to HDF5 (atomically).

    Layout: ``/clips/cls``, ``/clips/patch_mean`` (n_clips, dim) float32, ``/clips/run``,
    ``/clips/start`` (n_clips,) int; ``/runs/cls``, ``/runs/patch_mean`` (n_runs, dim): the
    mean over the run's clips; attribute ``runs``: JSON list of the runs (label, entities, source,
    ``source_sha256`` of a flat-map source; ``shards`` when the clips came from a shards folder),
    ``clip_frames``, ``grid`` (JSON grid description), ``checkpoint``, ``model``.
    """
    import h5py

    dim = encoder.dim
    cls = np.concatenate([e.cls for e in embeddings]) if embeddings else np.zeros((0, dim), np.float32)
    mean = np.concatenate([e.patch_mean for e in embeddings]) if embeddings else np.zeros((0, dim), np.float32)
    run_index = np.concatenate([np.full(len(e.start), i) for i, e in enumerate(embeddings)]) if embeddings else []
    starts = np.concatenate([e.start for e in embeddings]) if embeddings else []
    run_cls = np.stack([e.cls.mean(0) if len(e.cls) else np.zeros(dim) for e in embeddings]) if embeddings else cls
    run_mean = np.stack([e.patch_mean.mean(0) if len(e.cls) else np.zeros(dim) for e in embeddings]) if embeddings else mean
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        clips = handle.create_group("clips")
        clips.create_dataset("cls", data=cls.astype(np.float32))
        clips.create_dataset("patch_mean", data=mean.astype(np.float32))
        clips.create_dataset("run", data=np.asarray(run_index, dtype=np.int32))
        clips.create_dataset("start", data=np.asarray(starts, dtype=np.int32))
        group = handle.create_group("runs")
        group.create_dataset("cls", data=np.asarray(run_cls, dtype=np.float32))
        group.create_dataset("patch_mean", data=np.asarray(run_mean, dtype=np.float32))
        handle.attrs["runs"] = json.dumps(runs, sort_keys=True)
        handle.attrs["checkpoint"] = encoder.source
        handle.attrs["clip_frames"] = encoder.clip_frames
        handle.attrs["flatprep_version"] = __version__
        handle.attrs["model"] = json.dumps(encoder.model.config.to_dict(), sort_keys=True)
        handle.attrs["grid"] = json.dumps(encoder.grid_description, sort_keys=True)
    return Path(path)


def read_embeddings(path: str | Path) -> dict:
    """Everything :func:`write_embeddings` stored: numpy arrays, the runs, ``clip_frames``, ``grid``
    (None in files written before it was stored) and ``checkpoint``."""
    from ..h5 import open_h5

    with open_h5(path) as handle:
        out = {f"{g}_{k}": handle[g][k][()] for g in ("clips", "runs") for k in handle[g]}
        out["runs"] = json.loads(handle.attrs["runs"])
        out["clip_frames"] = int(handle.attrs["clip_frames"]) if "clip_frames" in handle.attrs else None
        out["grid"] = json.loads(handle.attrs["grid"]) if "grid" in handle.attrs else None
        out["checkpoint"] = str(handle.attrs.get("checkpoint", ""))
    return out
