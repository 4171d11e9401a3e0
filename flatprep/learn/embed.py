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
from .checkpoint import CheckpointError, latest_checkpoint, load_model_weights, read_config


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
    checkpoint folder.
    """

    def __init__(self, model, grid, *, clip_frames: int, normalize: str | None, clip_value: float | None,
                 clean_options: dict | None, source: str = "", device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.grid = grid
        self.clip_frames = int(clip_frames)
        self.normalize = normalize
        self.clip_value = clip_value
        self.clean_options = clean_options
        self.source = source
        self.device = torch.device(device)
        self._gather = torch.from_numpy(np.where(grid.mask.ravel(), np.cumsum(grid.mask.ravel()) - 1, grid.n_pixels))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "Encoder":
        """Load from a run folder (latest checkpoint) or a checkpoint folder."""
        from ..flatmap import grid_from_description
        from .model import MAEConfig, MaskedAutoencoder

        path = Path(path)
        folder = path if (path / "model.safetensors").exists() else latest_checkpoint(path)
        if folder is None:
            raise CheckpointError(f"{path}: neither a checkpoint folder (model.safetensors) nor a run folder "
                                  "with checkpoints/latest")
        config = read_config(folder)
        model = MaskedAutoencoder(MAEConfig.from_dict(config["model"]))
        load_model_weights(folder, model)
        train = config.get("train", {})
        return cls(model, grid_from_description(config["grid"]), clip_frames=config["clip_frames"],
                   normalize=None if train.get("normalize", "none") == "none" else train["normalize"],
                   clip_value=train.get("clip_value") or None, clean_options=config.get("clean_options"),
                   source=str(folder), device=device)

    @property
    def dim(self) -> int:
        return self.model.config.embed_dim

    def clips_from_frames(self, frames: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Cut (n_timepoints, n_pixels) frames into clips on the grid: (n_clips, 1, T, H, W), starts."""
        from .data import normalize_frames

        frames = np.asarray(frames)
        if frames.ndim != 2 or frames.shape[1] != self.grid.n_pixels:
            raise ValueError(f"frames must have shape (n_timepoints, {self.grid.n_pixels}) for this encoder's grid, "
                             f"got {frames.shape}")
        n_clips = frames.shape[0] // self.clip_frames
        starts = np.arange(n_clips) * self.clip_frames
        values = torch.from_numpy(np.asarray(frames[: n_clips * self.clip_frames], dtype=np.float32))
        values = values.view(n_clips * self.clip_frames, -1)
        normalize_frames(values, self.normalize, self.clip_value)
        padded = torch.cat([values, values.new_zeros(values.shape[0], 1)], dim=1)  # column P holds the background 0
        images = padded[:, self._gather].view(n_clips, 1, self.clip_frames, *self.grid.shape)
        return images, starts

    @torch.no_grad()
    def embed_frames(self, frames: np.ndarray, *, batch_size: int = 16) -> ClipEmbeddings:
        """Embeddings of every whole clip of a run's frames (n_timepoints, n_pixels)."""
        clips, starts = self.clips_from_frames(frames)
        valid = torch.from_numpy(self.grid.mask).to(self.device)
        cls_out, mean_out = [], []
        for begin in range(0, len(clips), batch_size):
            out = self.model.encode(clips[begin:begin + batch_size].to(self.device), valid)
            cls_out.append(out["cls"].float().cpu())
            mean_out.append(out["patch_mean"].float().cpu())
        empty = torch.zeros(0, self.dim)
        return ClipEmbeddings(torch.cat(cls_out or [empty]).numpy(), torch.cat(mean_out or [empty]).numpy(), starts)

    def flatten_scan(self, bold_files, *, space: str | None = None, sidecars=(), confounds_file=None) -> np.ndarray:
        """Clean and project a surface BOLD run exactly as the participant level does: (T, n_pixels) float16."""
        from ..clean import CleanOptions
        from ..h5 import to_float16
        from ..prepare import prepare_run

        options = CleanOptions.from_dict(self.clean_options) if self.clean_options else CleanOptions(dtype="float32")
        prepared = prepare_run(bold_files, space=space, sidecars=sidecars, confounds_file=confounds_file,
                               options=options)
        operator = self.grid.operator(prepared.bold.space)
        return to_float16(operator.project(prepared.cleaned.data.astype(np.float32)), source=str(bold_files[0]))


def write_embeddings(path: str | Path, runs: list[dict], embeddings: list[ClipEmbeddings], *, encoder: Encoder) -> Path:
    """Write per-clip and per-run embeddings with their BIDS entities to HDF5 (atomically).

    Layout: ``/clips/cls``, ``/clips/patch_mean`` (n_clips, dim) float32, ``/clips/run``,
    ``/clips/start`` (n_clips,) int; ``/runs/cls``, ``/runs/patch_mean`` (n_runs, dim): the
    mean over the run's clips; attribute ``runs``: JSON list of the runs (label, entities, source).
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
        handle.attrs["flatprep_version"] = __version__
        handle.attrs["model"] = json.dumps(encoder.model.config.to_dict(), sort_keys=True)
    return Path(path)


def read_embeddings(path: str | Path) -> dict:
    """Everything :func:`write_embeddings` stored, as numpy arrays and a list of runs."""
    import h5py

    with h5py.File(path, "r") as handle:
        out = {f"{g}_{k}": handle[g][k][()] for g in ("clips", "runs") for k in handle[g]}
        out["runs"] = json.loads(handle.attrs["runs"])
    return out
