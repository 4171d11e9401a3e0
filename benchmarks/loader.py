"""Loader speed: packed clips (what training ships) against dense clips and raw h5py reads, in one run.

Builds (in a temporary folder, unless ``--root`` names an existing OUTPUT_DIR
with shards) two shards of 16-frame clips on the default grid (224 x 560,
P = 79,183 valid pixels from ``make_grid().mask``), random float16 frames,
uncompressed or Blosc-LZ4 (``--compression blosc-lz4``, as the group level
writes it), with a manifest written by :func:`flatprep.shards.write_manifest`.
Then, in the same run:

* raw: plain h5py, ``dset[start:start + 16]`` for every clip of the index,
  in file order, one process (the bytes a loader must read, and nothing else);
* packed: ``FlatClipsStream(batch_size=16)`` through ``DataLoader(batch_size=None,
  num_workers=0/1/2)``: each clip read straight into its (T, P) float16 slot
  of a shared-memory batch; 2.5 MB per clip cross the process boundary, and
  normalisation and the scatter onto the grid happen after the transfer (on
  the GPU in training; timed here on the CPU as "prepare", once);
* dense: the same stream with :class:`~flatprep.learn.data.DenseCollate` in
  the workers, i.e. the earlier path: frame z-score, clip, scatter into a
  (1, 16, 224, 560) float32 image (8 MB) in the worker and ship that.

One warm-up epoch (workers start, files open), then ``--epochs`` timed
epochs, each a new order from ``set_epoch``; the main process only receives
the batches, with one torch thread.

Page cache: every shard is read once before any timing, so raw and the
loaders read from memory (with ~1 GB of shards and enough RAM), i.e. this
measures the loader's CPU cost, not the disk. Raw is timed before and after
the loaders; ratios use their mean. Prints numbers only.

Usage: python benchmarks/loader.py [--clips 400] [--compression none|blosc-lz4] [--batch-size 16]
       [--workers 0 1 2] [--epochs 2] [--device cuda] [--root OUTPUT_DIR] [--keep DIR]
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
                   ShardOptions(clip_frames=CLIP_FRAMES, compression=compression, split_ratios=(1.0, 0.0, 0.0)),
                   mask=mask)


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


def time_stream(root: Path, *, num_workers: int, batch_size: int, epochs: int, dense: bool,
                device: str | None = None) -> tuple[float, int, int]:
    """Seconds for ``epochs`` epochs after one warm-up epoch, the clips they yielded and the bytes per clip.

    With ``device``, each packed batch is also moved there and prepared (z-score, clip, scatter).
    """
    import torch
    from torch.utils.data import DataLoader

    from flatprep.learn.data import DenseCollate, FlatClipsStream, prepare_clips

    # Packed: a ring of reused batch buffers, as training uses (prefetch_factor 2 + 2).
    stream = FlatClipsStream(root, batch_size=batch_size, reuse_batches=0 if dense else 4)
    collate = DenseCollate(stream.pixels, normalize="frame", clip_value=3.0) if dense else None
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                        pin_memory=device is not None, **({"collate_fn": collate} if dense else {}))
    n_clips, n_bytes, start_time = 0, 0, 0.0
    for epoch in range(epochs + 1):
        if epoch == 1:
            n_clips, n_bytes, start_time = 0, 0, time.perf_counter()
        stream.set_epoch(epoch)
        for batch in loader:
            tensor = batch["clip"] if dense else batch["values"]
            n_clips += tensor.shape[0]
            n_bytes += tensor.nbytes
            if device is not None:
                prepare_clips(tensor, stream.pixels, normalize="frame", clip_value=3.0, device=device)
    if device is not None and device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start_time
    del loader
    return seconds, n_clips, n_bytes // max(n_clips, 1)


def time_prepare(root: Path, batch_size: int, repeats: int = 5) -> float:
    """ms per clip of :func:`prepare_clips` (float16 -> float32, z-score, clip, scatter) on this CPU."""
    import torch

    from flatprep.learn.data import FlatClipsStream, prepare_clips

    stream = FlatClipsStream(root, batch_size=batch_size, shuffle=False)
    values = next(iter(stream))["values"]
    prepare_clips(values, stream.pixels, normalize="frame", clip_value=3.0)
    start_time = time.perf_counter()
    for _ in range(repeats):
        prepare_clips(values, stream.pixels, normalize="frame", clip_value=3.0)
    return (time.perf_counter() - start_time) / repeats / values.shape[0] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="existing OUTPUT_DIR with shards/ (default: build a temporary one)")
    parser.add_argument("--keep", type=Path, help="build the shards here and keep them")
    parser.add_argument("--clips", type=int, default=400)
    parser.add_argument("--compression", choices=("none", "blosc-lz4"), default="none")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", help="also time packed batches moved to this device and prepared there "
                                         "(e.g. cuda)")
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

    from flatprep.learn.data import ShardIndex

    index = ShardIndex.read(root)
    size = sum(index.shard_path(k).stat().st_size for k in range(len(index.shard_files)))
    print(f"{len(index)} clips of {index.clip_frames} frames in {len(index.shard_files)} shards "
          f"({size / 1e9:.2f} GB on disk, compression {index.compression}); batch {args.batch_size}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    read_raw(root)  # warm the page cache: everything below reads from memory
    seconds, n_bytes = read_raw(root)
    raw_before = len(index) / seconds
    print(f"raw h5py read   : {raw_before:7.1f} clips/s ({n_bytes / seconds / 1e9:.2f} GB/s of float16)")
    results = []
    for n in args.workers:
        for dense in (True, False):
            seconds, n_clips, clip_bytes = time_stream(root, num_workers=n, batch_size=args.batch_size,
                                                       epochs=args.epochs, dense=dense)
            results.append((n, dense, n_clips / seconds, clip_bytes))
    if args.device:
        for n in args.workers:
            seconds, n_clips, clip_bytes = time_stream(root, num_workers=n, batch_size=args.batch_size,
                                                       epochs=args.epochs, dense=False, device=args.device)
            results.append((n, args.device, n_clips / seconds, clip_bytes))
    seconds, _ = read_raw(root)
    raw_after = len(index) / seconds
    raw = (raw_before + raw_after) / 2
    print(f"raw h5py read   : {raw_after:7.1f} clips/s (again, after the loaders); mean {raw:.1f}")
    print("| path | workers | clips/s | x raw | MB shipped per clip |")
    print("|---|---|---|---|---|")
    for n, dense, rate, clip_bytes in results:
        how = ("dense (float32 image, CPU collate)" if dense is True else "packed (float16 values)" if not dense
               else f"packed -> {dense}, prepared there")
        print(f"| {how} | {n} | {rate:.1f} | {rate / raw:.2f} | {clip_bytes / 1e6:.2f} |")
    print(f"prepare on this CPU (z-score, clip, scatter; on the GPU in training): "
          f"{time_prepare(root, args.batch_size):.2f} ms per clip")
    print(f"({args.epochs} timed epochs of {len(index)} clips after a warm-up epoch each; "
          f"load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
