"""Torch datasets over the training shards: clips of flat-map frames.

Two views of the same clips (see ``docs/formats.md`` for the shard layout):

* :class:`FlatClipsDataset`, map-style (index -> clip), for evaluation,
  probing and any sampler;
* :class:`FlatClipsStream`, iterable, for pretraining: every clip of an epoch
  exactly once across DataLoader workers x DDP ranks, in a new order for each
  :meth:`~FlatClipsStream.set_epoch`, read shard by shard through a shuffle
  buffer.

Both yield the same packed items, a dict::

    values  float16 tensor (T, P)      the clip's frames over the grid's P valid pixels,
                                       as stored (per-vertex z-scores)
    meta    dict of str / int / float  the run (label, subject, session, task, acquisition,
                                       run_number, space, tr, split, group), where the clip
                                       is (shard, start: first frame in the shard, frame:
                                       first frame in the run) and index (the clip's index)

Images are made where they are used: :func:`prepare_clips` moves a batch of
values to the device, normalises each frame there and scatters it into
``(B, 1, T, H, W)`` through the grid's :class:`~flatprep.pixels.PixelIndex`
(``dataset.pixels``); :class:`DenseCollate` does the same on the CPU for users
who want images from a DataLoader.

Missing entities are ``"n/a"`` as in the manifest (``None`` would not pass
``default_collate``), and ``run_number`` is the string of the file name.

The clip table (:class:`ShardIndex`) comes from ``shards/manifest.tsv`` and
``manifest.json`` alone. HDF5 files are opened lazily, in the process that
reads (each DataLoader worker), never in ``__init__``; handles are not pickled
(spawn) and are reopened after a fork. A shard that cannot be read raises
:class:`~flatprep.exceptions.ShardFormatError` naming the file and the reason;
no clip is ever skipped silently.

Example::

    stream = FlatClipsStream(out_dir, split="train", batch_size=16)
    loader = DataLoader(stream, batch_size=None, num_workers=2, persistent_workers=True)
    for epoch in range(n_epochs):
        stream.set_epoch(epoch)                    # seen by persistent workers too
        for batch in loader:
            x = prepare_clips(batch["values"], stream.pixels, normalize="frame", clip_value=3.0,
                              device="cuda")       # (B, 1, T, H, W) float32

A packed 16-frame clip at 1.2 mm is 2.5 MB (float16, valid pixels only) where
a dense float32 image is 8 MB, 37 % of it background; see ``benchmarks/loader.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..exceptions import ShardFormatError
from ..h5 import open_h5
from ..pixels import PixelIndex
from ..shards import FORMAT, FORMAT_VERSION, MANIFEST_FORMAT, SPLITS, decode_mask, read_manifest, shard_folder

__all__ = ["DenseCollate", "FlatClipsDataset", "FlatClipsStream", "ShardIndex", "ShardReader", "normalize_frames",
           "prepare_clips"]

logger = logging.getLogger(__name__)

NORMALIZE = (None, "frame")
#: Manifest text columns copied into each item's ``meta``.
_META_TEXT = ("run", "subject", "session", "task", "acquisition", "run_number", "space", "split", "group")
_MISSING = "n/a"


# --------------------------------------------------------------------------- the clip table


@dataclass(frozen=True, eq=False)
class ShardIndex:
    """Every clip of a shard folder, as small numpy arrays (picklable, no open files).

    Clip ``k`` of a run starts at frame ``offset + k * clip_frames`` of its
    shard: aligned clips are exactly one HDF5 chunk. A run of F frames has
    ``F // clip_frames`` clips; its last ``F % clip_frames`` frames are the
    room for random temporal offsets.

    Attributes
    ----------
    folder : Path
        The shards folder (``OUTPUT_DIR/shards``, or a copy of it anywhere).
    clip_frames : int
        T, frames per clip.
    compression : str
        ``"none"`` or ``"blosc-lz4"``, from manifest.json.
    grid : dict
        The grid description from manifest.json.
    mask : ndarray, bool, shape (H, W), or None
        The grid's valid pixels from manifest.json (None for manifests written
        before it carried the mask: the shards' ``/grid/mask`` is used).
    clean_request : dict or None
        How the runs were cleaned (``CleanOptions`` as asked), for new scans.
    shard_files : tuple of str
        Shard file names; ``clip_shard`` indexes into it.
    runs : tuple of dict
        Manifest rows of the selected runs (strings, ``"n/a"`` where missing;
        ``offset``, ``frames``, ``clips`` as int, ``tr`` as float).
    clip_shard, clip_run : ndarray, int32, shape (n_clips,)
        Shard and run of each clip.
    clip_start : ndarray, int64, shape (n_clips,)
        First frame of each aligned clip in its shard's ``/frames``.
    clip_slack : ndarray, int32, shape (n_clips,)
        Frames of the run left over after its clips (``frames % clip_frames``):
        the largest temporal offset that stays inside the run.
    """

    folder: Path
    clip_frames: int
    compression: str
    grid: dict
    mask: np.ndarray | None
    clean_request: dict | None
    shard_files: tuple
    runs: tuple
    clip_shard: np.ndarray
    clip_run: np.ndarray
    clip_start: np.ndarray
    clip_slack: np.ndarray

    @classmethod
    def read(
        cls,
        root: str | os.PathLike,
        *,
        split: str | Sequence[str] | None = None,
        subjects: Sequence[str] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> "ShardIndex":
        """Read ``root/shards/manifest.{tsv,json}`` and list the clips of the selected runs.

        Opens no HDF5 file; checks that every shard named by a selected run exists.

        Parameters
        ----------
        root : path
            flatprep output folder (the one holding ``shards/``) or the shards folder itself.
        split : str or sequence of str, optional
            Keep runs of these splits (``train``, ``val``, ``test``).
        subjects, tasks : sequence of str, optional
            Keep runs of these subjects (without ``sub-``) / tasks.

        Raises
        ------
        ShardFormatError
            Manifest or shard file missing, columns missing, values inconsistent.
        ValueError
            A filter value is invalid or selects no clip.
        """
        shard_dir = shard_folder(root)
        rows, description = read_manifest(shard_dir)
        tsv, js = shard_dir / "manifest.tsv", shard_dir / "manifest.json"
        if description.get("format") != MANIFEST_FORMAT or description.get("format_version") != FORMAT_VERSION:
            raise ShardFormatError(f"{js}: format {description.get('format')!r} version "
                                   f"{description.get('format_version')!r}, expected {MANIFEST_FORMAT!r} version "
                                   f"{FORMAT_VERSION}; regenerate the shards with this flatprep")
        clip_frames = description.get("clip_frames")
        if not isinstance(clip_frames, int) or clip_frames < 1:
            raise ShardFormatError(f"{js}: clip_frames must be a positive integer, got {clip_frames!r}")
        listed = {entry.get("file") for entry in description.get("shards", [])}

        splits = _as_tuple(split, "split")
        if splits is not None and not set(splits) <= set(SPLITS):
            raise ValueError(f"split must be among {SPLITS}, got {split!r}")
        subjects = _as_tuple(subjects, "subjects")
        subjects = None if subjects is None else {s.removeprefix("sub-") for s in subjects}
        tasks = _as_tuple(tasks, "tasks")

        runs, counts = [], {}
        for line, row in enumerate(rows, start=2):
            run = _parse_row(row, tsv, line, clip_frames)
            counts[run["split"]] = counts.get(run["split"], 0) + run["clips"]
            if splits is not None and run["split"] not in splits:
                continue
            if subjects is not None and run["subject"] not in subjects:
                continue
            if tasks is not None and run["task"] not in tasks:
                continue
            if run["shard"] not in listed:
                raise ShardFormatError(f"{tsv}: run {run['run']} points to shard {run['shard']}, which {js.name} "
                                       "does not list; regenerate the shards")
            if run["clips"]:
                runs.append(run)

        shard_files = tuple(sorted({run["shard"] for run in runs}))
        for name in shard_files:
            if not (shard_dir / name).is_file():
                raise ShardFormatError(f"{shard_dir / name}: missing (listed in {tsv.name}); "
                                       "rerun the group level")
        n_clips = sum(run["clips"] for run in runs)
        if n_clips == 0:
            raise ValueError(f"{tsv}: no clip matches split={split!r}, subjects={subjects!r}, tasks={tasks!r} "
                             f"(clips per split: {counts or 'none'})")

        shard_id = {name: i for i, name in enumerate(shard_files)}
        lengths = np.array([run["clips"] for run in runs])
        clip_run = np.repeat(np.arange(len(runs), dtype=np.int32), lengths)
        first = np.cumsum(lengths) - lengths                   # first clip of each run
        k = np.arange(n_clips) - np.repeat(first, lengths)     # clip number within its run
        offsets = np.array([run["offset"] for run in runs], dtype=np.int64)
        slack = np.array([run["frames"] % clip_frames for run in runs], dtype=np.int32)
        return cls(
            folder=shard_dir,
            clip_frames=clip_frames,
            compression=str(description.get("compression", "none")),
            grid=dict(description.get("grid") or {}),
            mask=decode_mask(description["mask"], js) if description.get("mask") else None,
            clean_request=description.get("clean_request"),
            shard_files=shard_files,
            runs=tuple(runs),
            clip_shard=np.array([shard_id[run["shard"]] for run in runs], dtype=np.int32)[clip_run],
            clip_run=clip_run,
            clip_start=offsets[clip_run] + k * clip_frames,
            clip_slack=slack[clip_run],
        )

    def __len__(self) -> int:
        return int(self.clip_start.size)

    def shard_path(self, shard: int) -> Path:
        """Path of shard number ``shard`` (an index into :attr:`shard_files`)."""
        return self.folder / self.shard_files[shard]

    def locality_order(self, clips: np.ndarray) -> np.ndarray:
        """``clips`` (clip indices) sorted by (shard, start): the order that reads files front to back."""
        clips = np.asarray(clips)
        return clips[np.lexsort((self.clip_start[clips], self.clip_shard[clips]))]


def _as_tuple(value, name: str) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    value = tuple(value)
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a string or a sequence of strings, got {value!r}")
    return value


def _parse_row(row: dict, tsv: Path, line: int, clip_frames: int) -> dict:
    """A manifest row with numbers parsed and checked."""
    run = {key: _MISSING if row.get(key) is None else str(row[key])
           for key in (*_META_TEXT, "shard", "source", "source_sha256")}
    for key in ("run", "shard", "subject", "split"):
        if run[key] == _MISSING:
            raise ShardFormatError(f"{tsv}, line {line}: column {key!r} is n/a; every run needs one")
    try:
        for key in ("offset", "frames", "clips"):
            run[key] = int(row[key])
        run["tr"] = float(row["tr"])
        # Optional (newer manifests): when the first stored frame was acquired, for placing events.
        run["first_frame_s"] = None if row.get("first_frame_s") is None else float(row["first_frame_s"])
    except (TypeError, ValueError) as err:
        raise ShardFormatError(f"{tsv}, line {line} (run {run['run']}): offset, frames and clips must be integers "
                               f"and tr a number, got {[row.get(k) for k in ('offset', 'frames', 'clips', 'tr')]}"
                               ) from err
    if run["offset"] < 0 or run["offset"] % clip_frames:
        raise ShardFormatError(f"{tsv}, line {line} (run {run['run']}): offset {run['offset']} is not a "
                               f"non-negative multiple of clip_frames {clip_frames}")
    if run["frames"] < 0 or run["clips"] != run["frames"] // clip_frames:
        raise ShardFormatError(f"{tsv}, line {line} (run {run['run']}): {run['clips']} clips for {run['frames']} "
                               f"frames, expected frames // clip_frames = {max(run['frames'], 0) // clip_frames}")
    return run


# --------------------------------------------------------------------------- normalisation and images


def normalize_frames(values: torch.Tensor, normalize: str | None = None,
                     clip_value: float | None = None) -> torch.Tensor:
    """Normalise and clip frames in place, over their valid pixels only.

    The one implementation used for training, evaluation and embeddings
    (through :func:`prepare_clips`).

    Parameters
    ----------
    values : tensor, float32, shape (n_frames, n_pixels)
        Valid pixels of each frame (a strided view is fine). Modified in place.
    normalize : {None, "frame"}
        ``"frame"``: subtract each frame's mean and divide by its standard
        deviation (population); a frame with no variance becomes 0.
    clip_value : float, optional
        Then clip to ``[-clip_value, clip_value]``.

    Returns
    -------
    tensor
        ``values``.
    """
    _check_normalize(normalize, clip_value)
    if normalize == "frame":
        n_pixels = values.shape[-1]
        # Two-pass; vector_norm is much faster than Tensor.std on CPU.
        mean = values.sum(dim=-1, keepdim=True) / n_pixels                          # (n_frames, 1)
        values.sub_(mean)
        std = torch.linalg.vector_norm(values, dim=-1, keepdim=True) / n_pixels ** 0.5  # (n_frames, 1)
        # A constant frame leaves rounding residue of ~1e-7 * mean after centring; float16
        # data cannot resolve a std below ~1e-4 * |mean|: such frames become 0.
        flat = (std == 0) | (std <= 1e-4 * mean.abs())
        values.mul_(torch.where(flat, torch.zeros_like(std), 1 / std))
    if clip_value is not None:
        values.clamp_(-clip_value, clip_value)
    return values


def _check_normalize(normalize, clip_value) -> None:
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if clip_value is not None and not (float(clip_value) > 0):
        raise ValueError(f"clip_value must be a positive number or None, got {clip_value!r}")


def prepare_clips(values: torch.Tensor, pixels: PixelIndex, *, normalize: str | None = None,
                  clip_value: float | None = None, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """Packed clips -> normalised images, on ``device``: what the model sees.

    Training, evaluation, embedding and :class:`DenseCollate` all call this,
    so a clip is prepared the same way everywhere. On a GPU the transfer
    carries float16 values only (2.5 MB per 16-frame clip at 1.2 mm instead
    of an 8 MB float32 image) and the normalisation and scatter run there.

    Parameters
    ----------
    values : tensor, float16 or float32, shape (B, T, P)
        Packed frames (a batch's ``values``). Not modified.
    pixels : PixelIndex
        The grid's index (a dataset's :attr:`~FlatClipsDataset.pixels`).
    normalize, clip_value
        As :func:`normalize_frames`.
    device : torch device, optional
        Where to prepare the clips (default: where ``values`` are).
    dtype : torch.dtype, default=torch.float32
        dtype of the images.
    out : tensor, shape (B, 1, T, H, W), optional
        Receives the images (e.g. shared memory in a DataLoader worker).

    Returns
    -------
    tensor, shape (B, 1, T, H, W)
        Background pixels exactly 0.
    """
    _check_normalize(normalize, clip_value)
    if values.ndim != 3 or values.shape[-1] != pixels.n_pixels:
        raise ValueError(f"values must have shape (B, T, {pixels.n_pixels}), got {tuple(values.shape)}")
    device = values.device if device is None else torch.device(device)
    B, T, P = values.shape
    x = values.to(device, non_blocking=True).to(torch.float32)                   # (B, T, P)
    if x.data_ptr() == values.data_ptr():
        x = x.clone()                                                             # never modify the batch
    normalize_frames(x.view(B * T, P), normalize, clip_value)
    padded = torch.cat([x, x.new_zeros(B, T, 1)], dim=-1)                        # (B, T, P + 1)
    gather = pixels._index("gather", device)
    H, W = pixels.shape
    if out is not None and dtype == torch.float32:
        torch.index_select(padded, 2, gather, out=out.view(B, T, H * W))
        return out
    images = torch.index_select(padded, 2, gather).view(B, 1, T, H, W)           # (B, 1, T, H, W)
    if out is not None:
        return out.copy_(images)
    return images.to(dtype)


class DenseCollate:
    """A CPU collate that returns dense clips, for users who want images.

    ``DataLoader(dataset, batch_size=8, collate_fn=DenseCollate(dataset.pixels, normalize="frame"))``
    yields ``clip`` (B, 1, T, H, W) of ``dtype``, ``mask`` (B, H, W) bool and
    ``meta``; with a batching :class:`FlatClipsStream` (``DataLoader(batch_size=None)``)
    it converts each batch. Inside a worker the images are written straight
    into shared memory. Training does not use it: it ships packed values and
    prepares them on the device with :func:`prepare_clips`.
    """

    def __init__(self, pixels: PixelIndex, *, normalize: str | None = None, clip_value: float | None = None,
                 dtype: torch.dtype = torch.float32):
        _check_normalize(normalize, clip_value)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch dtype (e.g. torch.float32), got {dtype!r}")
        self.pixels, self.normalize, self.dtype = pixels, normalize, dtype
        self.clip_value = None if clip_value is None else float(clip_value)

    def __call__(self, items) -> dict:
        from torch.utils.data import default_collate

        batch = items if isinstance(items, dict) else default_collate(items)
        values = batch["values"]                                                  # (B, T, P)
        (B, T, _), (H, W) = values.shape, self.pixels.shape
        out = _empty_batch((B, 1, T, H, W), self.dtype)
        clip = prepare_clips(values, self.pixels, normalize=self.normalize, clip_value=self.clip_value,
                             dtype=self.dtype, out=out)
        mask = self.pixels.torch_mask()
        return {"clip": clip, "mask": mask.expand(B, H, W), "meta": batch["meta"]}


def _empty_batch(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker, in shared memory (sent without a copy).

    This is what ``default_collate`` does for the tensor it stacks into.
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    elem = torch.empty(0, dtype=dtype)
    storage = elem._typed_storage()._new_shared(int(np.prod(shape)), device=elem.device)
    return elem.new(storage).resize_(*shape)


# --------------------------------------------------------------------------- reading shards


class ShardReader:
    """Reads packed clips from the shards of a :class:`ShardIndex`, opening files lazily.

    Per-process state (h5py handles) lives in attributes that start with
    ``_p``: it is dropped when pickling (spawn) and rebuilt after a fork (the
    pid that opened it differs from ``os.getpid()``). The mask comes from
    ``manifest.json`` where it is stored (else from the first shard) and every
    shard's ``/grid/mask`` must equal it.
    """

    def __init__(self, index: ShardIndex):
        self.index = index
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._pfiles = {}          # shard number -> (h5py.File, /frames dataset)
        self._pmask = None         # (H, W) bool ndarray, once a shard was opened

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_p")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def close(self) -> None:
        """Close the shard files this process opened (they reopen on the next read)."""
        if self._pid == os.getpid():
            for handle, _ in self._pfiles.values():
                handle.close()
        self._reset()

    @property
    def mask(self) -> np.ndarray:
        """The grid's valid pixels, bool (H, W) (from manifest.json, else the first shard)."""
        if self.index.mask is not None:
            return self.index.mask
        if self._pid != os.getpid():
            self._reset()
        if self._pmask is None:
            self.frames(0)
        return self._pmask

    def frames(self, shard: int):
        """The checked ``/frames`` dataset of shard number ``shard`` in this process."""
        if self._pid != os.getpid():   # forked: the parent's handles are not ours to use
            self._reset()
        entry = self._pfiles.get(shard)
        if entry is None:
            entry = self._pfiles[shard] = self._open(shard)
        return entry[1]

    def read(self, shard: int, start: int, out: np.ndarray) -> np.ndarray:
        """Frames ``start:start + T`` of a shard into ``out`` ((T, P) float16), checked finite."""
        T = out.shape[0]
        path = self.index.shard_path(shard)
        try:
            self.frames(shard).read_direct(out, np.s_[start:start + T])
        except (OSError, ValueError, TypeError) as err:
            raise ShardFormatError(f"{path}: cannot read frames {start}:{start + T} ({err}); the shard is "
                                   "corrupt, regenerate it with the group level (--force)") from err
        # A float16 is NaN or infinite when its five exponent bits are all set (10x faster than isfinite).
        if bool(((out.view(np.int16) & 0x7C00) == 0x7C00).any()):
            raise ShardFormatError(f"{path}: frames {start}:{start + T} hold NaN or infinite values; the shard "
                                   "is corrupt, regenerate it with the group level (--force)")
        return out

    def _open(self, shard: int):
        path = self.index.shard_path(shard)
        if self.index.compression != "none":
            try:
                import hdf5plugin  # noqa: F401  (registers the Blosc filter)
            except ImportError as err:
                raise ShardFormatError(f"{path}: compressed with {self.index.compression}, which needs hdf5plugin "
                                       "(pip install hdf5plugin)") from err
        # No chunk cache for the file: an aligned, uncompressed clip is then read
        # straight into our buffer (a cache as large as a chunk adds a copy).
        handle = open_h5(path, error=ShardFormatError, rdcc_nbytes=0, locking=False)
        logger.debug("opened %s in process %d", path, os.getpid())
        try:
            frames = self._check_shard(handle, shard, path)
        except ShardFormatError:
            handle.close()
            raise
        except (OSError, KeyError, ValueError, TypeError) as err:
            handle.close()
            raise ShardFormatError(f"{path}: unreadable shard ({err}); regenerate it with the group level "
                                   "(--force)") from err
        return handle, frames

    def _check_mask(self, handle, path: Path) -> np.ndarray:
        if "grid/mask" not in handle:
            raise ShardFormatError(f"{path}: no dataset /grid/mask")
        mask = handle["grid/mask"][()].astype(bool)
        shape = self.index.grid.get("shape")
        if mask.ndim != 2 or (shape is not None and list(mask.shape) != list(shape)):
            raise ShardFormatError(f"{path}: /grid/mask has shape {mask.shape}, expected {shape or '(height, width)'} "
                                   "from manifest.json's grid")
        reference = self.index.mask if self.index.mask is not None else self._pmask
        if reference is not None and not np.array_equal(mask, reference):
            where = "manifest.json's mask" if self.index.mask is not None else self.index.shard_files[0]
            raise ShardFormatError(f"{path}: /grid/mask differs from {where}; every shard must share one grid")
        self._pmask = mask if self._pmask is None else self._pmask
        return mask

    def _check_shard(self, handle, shard: int, path: Path):
        import h5py

        fmt, version, clip_frames = (_plain(handle.attrs.get(k)) for k in ("format", "format_version", "clip_frames"))
        if fmt != FORMAT or version != FORMAT_VERSION:
            raise ShardFormatError(f"{path}: format {fmt!r} version {version!r}, expected {FORMAT!r} version "
                                   f"{FORMAT_VERSION}")
        T = self.index.clip_frames
        if clip_frames != T:
            raise ShardFormatError(f"{path}: clip_frames {clip_frames!r} differs from manifest.json's "
                                   f"{T}; regenerate the shards and manifest together")
        if "frames" not in handle:
            raise ShardFormatError(f"{path}: no dataset /frames")
        n_pixels = int(np.count_nonzero(self._check_mask(handle, path)))
        # Per-dataset chunk cache: none when uncompressed (reads go straight to our buffer);
        # two chunks when compressed, so that an offset clip's second chunk can serve the next clip.
        dset = handle["frames"]
        chunk_bytes = int(np.prod(dset.chunks or dset.shape)) * dset.dtype.itemsize
        n_cache = 2 * chunk_bytes if dset.id.get_create_plist().get_nfilters() else 0
        dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
        dapl.set_chunk_cache(521, n_cache, 1.0)
        frames = h5py.Dataset(h5py.h5d.open(handle.id, b"frames", dapl=dapl))
        if frames.dtype != np.float16 or frames.ndim != 2 or frames.shape[1] != n_pixels:
            raise ShardFormatError(f"{path}: /frames is {frames.dtype} {frames.shape}, expected float16 "
                                   f"(n_frames, {n_pixels}) from the mask")
        if frames.chunks != (T, n_pixels):
            raise ShardFormatError(f"{path}: /frames has chunks {frames.chunks}, expected ({T}, {n_pixels}): "
                                   "one chunk per clip")
        name = self.index.shard_files[shard]
        ends = [run["offset"] + run["frames"] for run in self.index.runs if run["shard"] == name]
        if ends and max(ends) > frames.shape[0]:
            raise ShardFormatError(f"{path}: /frames has {frames.shape[0]} frames but manifest.tsv places runs up "
                                   f"to frame {max(ends)}; the shard is truncated or the manifest is stale")
        return frames


def _plain(value):
    """An HDF5 attribute as a plain Python value (str, int, float, ...)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value.item() if isinstance(value, np.generic) else value


# --------------------------------------------------------------------------- map-style


class FlatClipsDataset(Dataset):
    """Map-style dataset: clip index -> packed item (see the module docstring for the item).

    Clips are numbered run by run in manifest order, clip ``k`` of a run
    starting at its frame ``k * clip_frames``.

    Parameters
    ----------
    root : path
        flatprep output folder (holding ``shards/manifest.tsv``), or the
        ``shards`` folder itself (a copied ``shards/`` is enough).
    **selection
        ``split``, ``subjects``, ``tasks``: which runs, as in :meth:`ShardIndex.read`
        (all by default).
    temporal_offset : bool, default=False
        Shift each clip by a random number of frames in
        ``[0, frames % clip_frames]`` of its run (so it stays inside the run),
        drawn from (seed, epoch, index). An aligned clip reads exactly one HDF5
        chunk; a shifted clip reads two.
    seed : int, default=0

    Notes
    -----
    With ``temporal_offset``, call :meth:`set_epoch` each epoch for new offsets.
    Images: :func:`prepare_clips` on the device, or :class:`DenseCollate` on the CPU.
    """

    def __init__(self, root: str | os.PathLike, *, temporal_offset: bool = False, seed: int = 0, **selection):
        self.index = ShardIndex.read(root, **selection)
        self.reader = ShardReader(self.index)
        self.temporal_offset = bool(temporal_offset)
        self.seed = int(seed)
        # The epoch lives in shared memory so that persistent DataLoader workers see set_epoch.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._pixels = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        n = len(self.index)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"clip index {i} out of range for {n} clips")
        return self.load(i % n, self.epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (new random temporal offsets; for the stream also a new order).

        Call it before iterating a DataLoader; persistent workers see it too.
        """
        self._epoch.fill_(int(epoch))

    @property
    def clip_frames(self) -> int:
        return self.index.clip_frames

    @property
    def mask(self) -> np.ndarray:
        """The grid's valid pixels, bool (H, W)."""
        return self.reader.mask

    @property
    def pixels(self) -> PixelIndex:
        """The :class:`~flatprep.pixels.PixelIndex` of the grid (packed values <-> images)."""
        if self._pixels is None:
            self._pixels = PixelIndex(self.mask)
        return self._pixels

    def close(self) -> None:
        """Close the shard files this process opened (they reopen on the next read)."""
        self.reader.close()

    def clip_start(self, i: int, epoch: int) -> int:
        """First frame of clip ``i`` in its shard at ``epoch`` (with the temporal offset, if any)."""
        start = int(self.index.clip_start[i])
        slack = int(self.index.clip_slack[i])
        if self.temporal_offset and slack:
            start += int(np.random.default_rng((self.seed, epoch, i)).integers(slack + 1))
        return start

    def load(self, i: int, epoch: int, out: torch.Tensor | None = None) -> dict:
        """Item ``i`` (a clip index into :attr:`index`) for ``epoch``.

        ``out``, if given, is a (T, P) float16 tensor that receives the values
        (a slot of a batch); the item then holds it.
        """
        index = self.index
        shard = int(index.clip_shard[i])
        start = self.clip_start(i, epoch)
        if out is None:
            out = torch.empty(index.clip_frames, self.reader.frames(shard).shape[1], dtype=torch.float16)
        self.reader.read(shard, start, out.numpy())
        run = index.runs[int(index.clip_run[i])]
        meta = {key: run[key] for key in _META_TEXT}
        meta |= {"tr": run["tr"], "shard": run["shard"], "start": start, "frame": start - run["offset"], "index": i}
        return {"values": out, "meta": meta}


# --------------------------------------------------------------------------- streaming


class FlatClipsStream(IterableDataset):
    """Iterable dataset for pretraining: each clip once per epoch, across workers and ranks.

    Each epoch, every process draws the same permutation of all clips from
    (seed, epoch). Rank ``r`` of ``world_size`` takes ``perm[r::world_size]``,
    and DataLoader worker ``w`` of ``n`` takes every n-th of those. Each worker
    sorts its share by (shard, start), so it reads its files front to back, and
    passes the clip indices through a shuffle buffer of ``shuffle_buffer``
    entries (seeded by seed, epoch and the global worker id
    ``rank * num_workers + worker``). The buffer holds indices, not data, so its
    size costs no memory; it mixes clips within a window of about
    ``shuffle_buffer`` neighbours of the share (larger: more random, less
    local; at least the share's length: a uniform shuffle).

    Shares differ by at most one clip (each worker's last DataLoader batch may
    be short), so ranks may yield one batch more or less than each other;
    with DDP pass ``drop_uneven=True``, which drops the epoch's last
    ``n_clips % world_size`` clips of the permutation (other clips each
    epoch) so every rank yields ``n_clips // world_size``.

    Parameters
    ----------
    root : path
        As :class:`FlatClipsDataset`.
    shuffle : bool, default=True
        False: no permutation, no buffer; each worker reads its share in
        (shard, start) order (e.g. for evaluation). Still exactly once.
    shuffle_buffer : int, default=256
        Entries of the shuffle buffer; 0 or 1 keeps the sorted order.
    drop_uneven : bool, default=False
        Make every rank's share the same length (see above).
    rank, world_size : int, optional
        This process's DDP rank and the number of ranks. By default from
        ``torch.distributed`` when it is initialised, else 0 and 1. Read at
        construction (workers cannot query torch.distributed).
    batch_size : int, optional
        Yield batches of this many clips instead of single items, each clip
        read straight into its slot of the batch (in shared memory inside a
        worker): one copy of every clip less than ``default_collate``'s stack.
        Use with ``DataLoader(stream, batch_size=None)``. A batch holds
        ``values`` (B, T, P) float16 and ``meta`` collated as
        ``default_collate`` does. Workers take whole batches of the rank's
        share in turn, so a rank yields ``ceil(n / batch_size)`` batches
        (``len``), only the last one smaller.
    drop_last : bool, default=False
        With ``batch_size``: drop the rank's last batch when it is short, so
        every batch holds ``batch_size`` clips (as ``DataLoader(drop_last=True)``
        does over items).
    reuse_batches : int, default=0
        With ``batch_size``: write batches into a ring of this many buffers
        allocated once per process, instead of fresh memory for every batch
        (on small VMs page faults on fresh memory, not reading, bound the
        clips/s). A batch's ``values`` are then overwritten ``reuse_batches``
        batches later: only for loops that use each batch before taking the
        next (as training does: it copies each batch to the device). With
        DataLoader workers, ``prefetch_factor + 2`` buffers are enough.
    **clip_options
        ``split``, ``subjects``, ``tasks``, ``temporal_offset``, ``seed``: as
        :class:`FlatClipsDataset`, which reads the clips (``self.clips``).
    """

    def __init__(self, root: str | os.PathLike, *, shuffle: bool = True, shuffle_buffer: int = 256,
                 drop_uneven: bool = False, rank: int | None = None, world_size: int | None = None,
                 batch_size: int | None = None, drop_last: bool = False, reuse_batches: int = 0,
                 **clip_options):
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size!r}")
        if int(shuffle_buffer) < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer!r}")
        if (rank is None) != (world_size is None):
            raise ValueError(f"give both rank and world_size or neither, got rank={rank!r}, world_size={world_size!r}")
        if rank is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank, world_size = dist.get_rank(), dist.get_world_size()
            else:
                rank, world_size = 0, 1
        if not (int(world_size) >= 1 and 0 <= int(rank) < int(world_size)):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        self.clips = FlatClipsDataset(root, **clip_options)
        self.shuffle = bool(shuffle)
        self.shuffle_buffer = int(shuffle_buffer)
        self.drop_uneven = bool(drop_uneven)
        self.rank, self.world_size = int(rank), int(world_size)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.drop_last = bool(drop_last) and self.batch_size is not None
        if int(reuse_batches) < 0 or (reuse_batches and self.batch_size is None):
            raise ValueError(f"reuse_batches must be >= 0 and needs batch_size, got {reuse_batches!r}")
        self.reuse_batches = int(reuse_batches)

    # The clip reader's view, for code written against either dataset.
    index = property(lambda self: self.clips.index)
    seed = property(lambda self: self.clips.seed)
    epoch = property(lambda self: self.clips.epoch)
    clip_frames = property(lambda self: self.clips.clip_frames)
    mask = property(lambda self: self.clips.mask)
    pixels = property(lambda self: self.clips.pixels)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_ring", "_ring_pid")}

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch: a new order (and new temporal offsets); persistent workers see it too."""
        self.clips.set_epoch(epoch)

    def close(self) -> None:
        self.clips.close()

    def __len__(self) -> int:
        """Items this rank yields per epoch over all its workers: clips, or batches with ``batch_size``."""
        n = len(self.index)
        n = n // self.world_size if self.drop_uneven else len(range(self.rank, n, self.world_size))
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def rank_clips(self, epoch: int | None = None) -> np.ndarray:
        """Clip indices of this rank for ``epoch`` (default: the current one), in permutation order."""
        epoch = self.epoch if epoch is None else int(epoch)
        n = len(self.index)
        if self.shuffle:
            order = np.random.default_rng((self.seed, epoch)).permutation(n)
        else:
            order = np.arange(n)
        if self.drop_uneven:
            order = order[: n - n % self.world_size]
        return order[self.rank::self.world_size]

    def worker_clips(self, worker: int = 0, num_workers: int = 1, epoch: int | None = None) -> np.ndarray:
        """Clip indices that DataLoader worker ``worker`` of ``num_workers`` yields, in order."""
        epoch = self.epoch if epoch is None else int(epoch)
        clips = self.rank_clips(epoch)
        if self.batch_size is None:
            share = clips[worker::num_workers]
        else:  # whole batches in turn, so that only the rank's last batch is short
            share = clips[(np.arange(clips.size) // self.batch_size) % num_workers == worker]
        share = self.index.locality_order(share)
        if self.shuffle and self.shuffle_buffer > 1:
            global_worker = self.rank * num_workers + worker
            rng = np.random.default_rng((self.seed, epoch, global_worker, 1))
            share = _buffer_shuffle(share, self.shuffle_buffer, rng)
        return share

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = self.epoch
        clips = self.worker_clips(worker, num_workers, epoch)
        if self.batch_size is None:
            for i in clips:
                yield self.clips.load(int(i), epoch)
            return
        from torch.utils.data import default_collate

        T = self.index.clip_frames
        if getattr(self, "_ring_pid", None) != os.getpid():   # buffers of this process, kept across epochs
            self._ring, self._ring_pid = [], os.getpid()
        ring = self._ring
        for number, first in enumerate(range(0, clips.size, self.batch_size)):
            chunk = clips[first:first + self.batch_size]
            if self.drop_last and chunk.size < self.batch_size:
                return
            n_pixels = self.clips.reader.frames(int(self.index.clip_shard[chunk[0]])).shape[1]
            if not self.reuse_batches:
                batch = _empty_batch((chunk.size, T, n_pixels), torch.float16)
            else:  # a ring of buffers allocated once: no fresh memory per batch
                slot = number % self.reuse_batches
                if len(ring) <= slot or ring[slot].shape[2] != n_pixels:
                    ring[slot:slot + 1] = [_empty_batch((self.batch_size, T, n_pixels), torch.float16)]
                batch = ring[slot][:chunk.size]
            metas = [self.clips.load(int(i), epoch, out=slot)["meta"] for i, slot in zip(chunk, batch)]
            yield {"values": batch, "meta": default_collate(metas)}


def _buffer_shuffle(items: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a shuffle buffer of ``size`` entries emits ``items``.

    The buffer fills with the first ``size`` items; then each new item takes
    the place of a uniformly chosen entry, which is emitted; at the end the
    rest is emitted in random order.
    """
    n = items.size
    if n <= size:
        return items[rng.permutation(n)]
    buffer = items[:size].copy()
    out = np.empty_like(items)
    slots = rng.integers(size, size=n - size)
    for j, item in enumerate(items[size:]):
        s = slots[j]
        out[j] = buffer[s]
        buffer[s] = item
    out[n - size:] = buffer[rng.permutation(size)]
    return out
