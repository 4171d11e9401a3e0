"""Loader speed: clips/s of FlatClipsStream through a DataLoader against raw h5py reads.

Builds (in a temporary folder, unless ``--root`` names an existing OUTPUT_DIR
with shards) two shards of 16-frame clips on the default grid (224 x 560,
P = 79,183 valid pixels from ``make_grid().mask``), random float16 frames,
uncompressed or Blosc-LZ4 (``--compression blosc-lz4``, as the group level
writes it), with a manifest written by :func:`flatprep.shards.write_manifest`.
Then, in the same run:

* raw: plain h5py, ``dset[start:start + 16]`` for every clip of the index,
  in file order, one process (the bytes a loader must read, and nothing else);
* stream: ``DataLoader(FlatClipsStream(root), batch_size, num_workers=0/1/2,
  persistent_workers where allowed)``, both as items batched by
  ``default_collate`` and as batches built by the stream itself
  (``FlatClipsStream(batch_size=16)``, ``DataLoader(batch_size=None)``); one
  warm-up epoch (workers start, files open), then ``--epochs`` timed epochs,
  each a new order from ``set_epoch``. Clips are (1, 16, 224, 560) float32
  (``--dtype``) with the background 0; the main process only receives the
  batches, with one torch thread.

Also printed: the loader's own work per clip (read, convert, scatter into
one reused buffer, in process), and the cost of fresh shared memory per clip
(allocating a batch in shared memory and writing it once, as every worker
batch needs). A DataLoader hands out new memory for every batch; where page
faults are slow (as in small VMs, where they also do not scale across
processes) that, not reading, bounds the clips/s of float32 clips.

Page cache: every shard is read once before any timing, so raw and stream
both read from memory (with ~1 GB of shards and enough RAM), i.e. this
measures the loader's CPU cost, not the disk. Raw is timed before and after
the loaders; ratios use their mean. Prints numbers only.

Usage: python benchmarks/loader.py [--clips 400] [--compression none|blosc-lz4] [--batch-size 16]
       [--workers 0 1 2] [--epochs 2] [--dtype float32|float16] [--normalize] [--root OUTPUT_DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

CLIP_FRAMES = 16


def build_shards(root: Path, *, n_clips: int, compression: str, seed: int = 0) -> None:
    """Two shards of runs of 18-22 clips (some with leftover frames) and their manifest."""
    import h5py

    from flatprep.flatmap import make_grid
    from flatprep.shards import MANIFEST_COLUMNS, ShardOptions, shard_name, write_manifest

    mask = make_grid().mask
    n_pixels = int(mask.sum())
    rng = np.random.default_rng(seed)
    # A pool of distinct random clips, reused: the page cache and the decoder see ordinary float16 noise.
    pool = rng.standard_normal((8, CLIP_FRAMES, n_pixels), dtype=np.float32).astype(np.float16)
    runs, total = [], 0
    while total < n_clips:
        clips = int(min(rng.integers(18, 23), n_clips - total))
        runs.append(clips * CLIP_FRAMES + int(rng.integers(0, CLIP_FRAMES)) * (len(runs) % 2))
        total += clips
    kwargs = {}
    if compression == "blosc-lz4":
        import hdf5plugin

        kwargs = dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    grid = {"shape": list(mask.shape), "n_valid_pixels": n_pixels, "pixel_size_mm": 1.2}
    halves = [runs[: len(runs) // 2], runs[len(runs) // 2:]]
    rows, infos, label, j = [], [], 0, 0
    shard_dir = root / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for k, lengths in enumerate(halves):
        name = shard_name(k)
        n_frames = sum(-(-n // CLIP_FRAMES) * CLIP_FRAMES for n in lengths)
        with h5py.File(shard_dir / name, "w", libver=("earliest", "v114")) as f:
            dset = f.create_dataset("frames", shape=(n_frames, n_pixels), dtype=np.float16,
                                    chunks=(CLIP_FRAMES, n_pixels), fillvalue=0, **kwargs)
            offset = 0
            for n in lengths:
                for start in range(0, n, CLIP_FRAMES):
                    stop = min(start + CLIP_FRAMES, n)
                    dset[offset + start:offset + stop] = pool[j % len(pool), : stop - start]
                    j += 1
                subject = f"{label % 10:02d}"
                rows.append({"run": f"sub-{subject}_task-rest_run-{label}_space-fsLR", "shard": name,
                             "offset": offset, "frames": n, "clips": n // CLIP_FRAMES, "subject": subject,
                             "task": "rest", "run_number": str(label), "space": "fsLR", "tr": 1.0,
                             "split": "train", "group": f"sub-{subject}", "source": "n/a", "source_sha256": "n/a"})
                offset += -(-n // CLIP_FRAMES) * CLIP_FRAMES
                label += 1
            f.create_group("grid").create_dataset("mask", data=mask.astype(np.uint8))
            f.attrs.update({"format": "flatprep-shard", "format_version": 1, "flatprep_version": "benchmark",
                            "shard": k, "clip_frames": CLIP_FRAMES, "compression": compression,
                            "n_runs": len(lengths), "grid": json.dumps(grid)})
        infos.append({"file": name, "sha256": "not computed", "n_runs": len(lengths), "n_frames": n_frames,
                      "bytes": (shard_dir / name).stat().st_size})
    assert set(rows[0]) <= set(MANIFEST_COLUMNS)
    write_manifest(shard_dir, rows, infos, grid,
                   ShardOptions(clip_frames=CLIP_FRAMES, compression=compression, split_ratios=(1.0, 0.0, 0.0)))


def read_raw(root: Path) -> tuple[float, int]:
    """Seconds to read every clip's frames with plain h5py, in file order; and the bytes read."""
    import h5py

    from flatprep.learn.data import ShardIndex

    index = ShardIndex.read(root)
    order = index.locality_order(np.arange(len(index)))
    files = {}
    n_bytes = 0
    start_time = time.perf_counter()
    for i in order:
        shard = int(index.clip_shard[i])
        if shard not in files:
            files[shard] = h5py.File(index.shard_path(shard), "r")["frames"]
        start = int(index.clip_start[i])
        n_bytes += files[shard][start:start + CLIP_FRAMES].nbytes
    seconds = time.perf_counter() - start_time
    for dset in files.values():
        dset.file.close()
    return seconds, n_bytes


def time_stream(root: Path, *, num_workers: int, batch_size: int, epochs: int, batched: bool,
                **options) -> tuple[float, int]:
    """Seconds for ``epochs`` epochs after one warm-up epoch, and the clips they yielded."""
    from torch.utils.data import DataLoader

    from flatprep.learn.data import FlatClipsStream

    stream = FlatClipsStream(root, batch_size=batch_size if batched else None, **options)
    loader = DataLoader(stream, batch_size=None if batched else batch_size, num_workers=num_workers,
                        persistent_workers=num_workers > 0)
    n_clips, start_time = 0, 0.0
    for epoch in range(epochs + 1):
        if epoch == 1:
            n_clips, start_time = 0, time.perf_counter()
        stream.set_epoch(epoch)
        for batch in loader:
            n_clips += batch["clip"].shape[0]
    seconds = time.perf_counter() - start_time
    del loader
    return seconds, n_clips


def time_reused_output(root: Path, **options) -> float:
    """clips/s of the loader's own work (read, convert, scatter) into one reused clip buffer, in process."""
    import torch

    from flatprep.learn.data import FlatClipsDataset

    dataset = FlatClipsDataset(root, **options)
    (H, W), T = dataset.mask.shape, dataset.clip_frames
    out = torch.empty(1, T, H, W, dtype=dataset.dtype)
    dataset._load(0, 0, out=out)
    start_time = time.perf_counter()
    for i in range(len(dataset)):
        dataset._load(i, 0, out=out)
    return len(dataset) / (time.perf_counter() - start_time)


def fresh_shared_memory_ms(clip_bytes: int, batch_size: int, repeats: int = 4) -> float:
    """ms per clip to allocate and first write a batch in shared memory, as a worker's collate does."""
    import torch

    numel = clip_bytes * batch_size // 4
    best = float("inf")
    for _ in range(repeats):
        start_time = time.perf_counter()
        elem = torch.empty(0)
        batch = elem.new(elem._typed_storage()._new_shared(numel, device=elem.device))
        batch.fill_(0)
        best = min(best, time.perf_counter() - start_time)
        del batch
    return best / batch_size * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="existing OUTPUT_DIR with shards/ (default: build a temporary one)")
    parser.add_argument("--keep", type=Path, help="build the shards here and keep them")
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--compression", choices=("none", "blosc-lz4"), default="none")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="dtype of the clips")
    parser.add_argument("--normalize", action="store_true", help="frame z-score and clip to +-3 (the reference)")
    args = parser.parse_args()

    import torch

    # One thread in this process: raw h5py is single-threaded, workers run one thread each, and
    # intra-op threads only fight the workers (or other jobs) for the cores.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="flatprep-loader-") as tmp:
        root = args.root
        if root is None:
            root = args.keep or Path(tmp) / "out"
            start_time = time.perf_counter()
            build_shards(root, n_clips=args.clips, compression=args.compression)
            print(f"built {args.clips} clips ({args.compression}) in {time.perf_counter() - start_time:.1f} s "
                  f"under {root}")
        run(root, args)


def run(root: Path, args) -> None:
    import os

    import torch

    from flatprep.learn.data import ShardIndex

    index = ShardIndex.read(root)
    size = sum((root / "shards" / f).stat().st_size for f in index.shard_files)
    dtype = getattr(torch, args.dtype)
    options = {"dtype": dtype}
    if args.normalize:
        options |= {"normalize": "frame", "clip_value": 3.0}
    print(f"{len(index)} clips of {index.clip_frames} frames in {len(index.shard_files)} shards "
          f"({size / 1e9:.2f} GB on disk, compression {index.compression}); clips {args.dtype}, "
          f"batch {args.batch_size}, normalize {'frame, clip 3' if args.normalize else 'off'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    read_raw(root)  # warm the page cache: everything below reads from memory
    seconds, n_bytes = read_raw(root)
    raw_before = len(index) / seconds
    print(f"raw h5py read            : {raw_before:7.1f} clips/s ({n_bytes / seconds / 1e9:.2f} GB/s of float16)")
    mask_pixels = int(np.prod(index.grid.get("shape") or _grid_shape(root)))
    clip_bytes = index.clip_frames * mask_pixels * dtype.itemsize
    print(f"fresh shared memory      : {fresh_shared_memory_ms(clip_bytes, args.batch_size):7.2f} ms per clip "
          f"({clip_bytes / 1e6:.1f} MB, allocated and written once, as a worker's batch)")
    work = time_reused_output(root, **options)
    print(f"loader work, in process  : {work:7.1f} clips/s (read + convert + scatter into one reused buffer)")
    results = []
    for n in args.workers:
        for batched in (False, True):
            seconds, n_clips = time_stream(root, num_workers=n, batch_size=args.batch_size, epochs=args.epochs,
                                           batched=batched, **options)
            results.append((n, batched, n_clips / seconds))
    seconds, _ = read_raw(root)
    raw_after = len(index) / seconds
    raw = (raw_before + raw_after) / 2
    print(f"raw h5py read            : {raw_after:7.1f} clips/s (again, after the loaders); mean {raw:.1f}")
    for n, batched, rate in results:
        how = "stream batches " if batched else "items + collate"
        print(f"{how}, {n} worker{'s' if n != 1 else ' '}: {rate:7.1f} clips/s, {rate / raw:.2f} x raw")
    print(f"({args.epochs} timed epochs of {len(index)} clips after a warm-up epoch each; "
          f"load average now {os.getloadavg()[0]:.1f})")


def _grid_shape(root: Path) -> tuple:
    """(H, W) from the first shard's mask, for manifests whose grid lacks ``shape``."""
    import h5py

    from flatprep.learn.data import ShardIndex

    with h5py.File(ShardIndex.read(root).shard_path(0), "r") as f:
        return f["grid/mask"].shape


if __name__ == "__main__":
    main()
