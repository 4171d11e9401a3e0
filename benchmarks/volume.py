"""Volume projection speed and memory: the cached (pixels x voxels) operator against nilearn.

On fMRIPrep's 2 mm MNI152NLin6Asym grid (91 x 109 x 91), a synthetic run of
N frames (default 200; smooth spatial patterns with random time courses,
float32) goes onto the flat map's valid pixels by:

* flatprep: :func:`flatprep.volume.build_volume_operator` (build time measured
  cold, in an empty cache, and warm, loaded from it), then one sparse product
  per chunk of frames (``op.project``), from memory, and end to end from a
  ``.nii`` file and from the same file gzipped at nibabel's level 1 as fMRIPrep
  writes it (:func:`flatprep.volume.project_volume_frames`, chunked reads; a
  ``.nii.gz`` is inflated by ISA-L), beside the same chunked reads through
  nibabel's own ``gzip`` reader;
* reference: nilearn ``vol_to_surf`` per hemisphere (``kind="depth"`` between
  the same white and pial surfaces, trilinear, nilearn's default 10 depths),
  followed by the fs_LR -> flat operator; timed on ``--reference-frames``.

Times are CPU seconds of this process (``time.process_time``; run with
OMP_NUM_THREADS=1: every method is single-threaded), steadier than wall time
on a shared machine. Prints s per 1000 frames of each, the ratio (goal >= 10 x) and the absolute
(goal <= 5 s per 1000 frames), the median frame r between the two outputs,
and the peak memory (VmHWM) of a separate process that runs
:func:`flatprep.volume.prepare_volume_run` (read in chunks, project, clean)
on a ``--memory-frames`` run (default 1,200: HCP length, 3.6 GB as float32;
written as an uncompressed temporary ``.nii`` and deleted; ``--memory-frames 0``
skips it). Goal: under 1.5 GB. Prints numbers only.

Usage: python benchmarks/volume.py [--frames 200] [--reference-frames 20] [--pixel-size 1.2]
       [--memory-frames 1200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
SHAPE = (91, 109, 91)


def synthetic_frames(n_frames: int, seed: int = 0) -> np.ndarray:
    """(n_frames, n_voxels) float32, Fortran voxel order: smooth patterns with random time courses."""
    rng = np.random.default_rng(seed)
    ijk = np.column_stack(np.unravel_index(np.arange(int(np.prod(SHAPE))), SHAPE, order="F"))
    x = (ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3]) / 50.0
    patterns = np.stack([np.sin(3 * x[:, 0]), np.cos(2 * x[:, 1]) * x[:, 2], x[:, 0] * x[:, 1]]).astype(np.float32)
    return 1000 + (rng.normal(size=(n_frames, 3)).astype(np.float32) @ patterns) * 10


def _chunks(n_frames: int, chunk: int = 50):
    for start in range(0, n_frames, chunk):
        yield synthetic_frames(min(chunk, n_frames - start), seed=start)


def write_nifti(path: Path, n_frames: int, chunks, *, tr: float = 0.72) -> Path:
    """An uncompressed 4D NIfTI of n_frames, written chunk by chunk ((t, n_voxels) float32 each)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(SHAPE + (n_frames,))
    header.set_zooms((2.0, 2.0, 2.0, tr))
    header.set_xyzt_units("mm", "sec")
    header.set_sform(AFFINE, code=4)
    header.set_qform(AFFINE, code=4)
    header.set_data_offset(352)
    with open(path, "wb") as handle:
        header.write_to(handle)
        handle.write(b"\0" * (352 - handle.tell()))
        for block in chunks:
            handle.write(np.ascontiguousarray(block).tobytes())  # (t, voxels) C order = voxels fastest
    return path


def gzip_copy(path: Path) -> Path:
    """``path`` gzipped at level 1 (nibabel's default, so fMRIPrep's) beside it: ``<path>.gz``."""
    import gzip
    import shutil

    target = path.with_name(path.name + ".gz")
    with open(path, "rb") as source, gzip.open(target, "wb", compresslevel=1) as handle:
        shutil.copyfileobj(source, handle, 1 << 24)
    return target


def nibabel_gzip_project(path: Path, op) -> np.ndarray:
    """The chunked read of a ``.nii.gz`` through nibabel's own ``gzip`` reader, projected like
    :func:`flatprep.volume.project_volume_frames`: (T, n_pixels) float32."""
    import nibabel as nib

    from flatprep.io import VOLUME_CHUNK_FRAMES as chunk_frames

    image = nib.load(str(path), keep_file_open=True, mmap=False)
    n = image.shape[3]
    out = []
    for start in range(0, n, chunk_frames):
        block = np.asarray(image.dataobj[..., start:start + chunk_frames], dtype=np.float32)
        out.append(op.project(block.reshape(-1, block.shape[-1], order="F").T))
    return np.concatenate(out)


def nilearn_project(frames: np.ndarray, surface_op) -> np.ndarray:
    """nilearn vol_to_surf (depth sampling between white and pial) then the fs_LR operator: (T, P)."""
    import nibabel as nib
    from nilearn.surface import InMemoryMesh, vol_to_surf

    from flatprep.spaces import HEMIS
    from flatprep.volume import load_ribbon_surfaces

    image = nib.Nifti1Image(frames.T.reshape(SHAPE + (len(frames),), order="F"), AFFINE)
    parts = []
    for hemi in HEMIS:
        white, pial = load_ribbon_surfaces(hemi)
        parts.append(vol_to_surf(image, InMemoryMesh(pial.vertices, pial.faces),
                                 inner_mesh=InMemoryMesh(white.vertices, white.faces), kind="depth").T)
    return surface_op.project(np.concatenate(parts, axis=1).astype(np.float32))


def _peak_gb() -> float:
    """This process's peak resident memory in GB: ``VmHWM`` (Linux), else ``ru_maxrss``.

    ``VmHWM`` starts afresh at ``exec``; ``ru_maxrss`` is kept across ``exec``, so a child
    forked from a large parent would report the parent's size.
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _memory_child(path: str, pixel_size: float) -> None:
    """Run prepare_volume_run on ``path`` and print its peak memory as JSON."""
    from flatprep.flatmap import make_grid
    from flatprep.volume import prepare_volume_run

    start = time.process_time()
    run = prepare_volume_run(path, make_grid(pixel_size=pixel_size), space="MNI152NLin6Asym")
    print(json.dumps({"peak_gb": _peak_gb(),
                      "cpu_seconds": time.process_time() - start,
                      "frames_out": int(run.prepared.cleaned.data.shape[0])}))


def _time_build(grid):
    from flatprep.volume import build_volume_operator

    saved = os.environ.get("FLATPREP_CACHE_DIR")
    with tempfile.TemporaryDirectory() as empty:
        os.environ["FLATPREP_CACHE_DIR"] = empty
        grid.operator("fsLR")  # the fs_LR operator is shared by every volume grid: not part of the build
        start = time.process_time()
        build_volume_operator(grid, AFFINE, SHAPE)
        cold = time.process_time() - start
        start = time.process_time()
        op = build_volume_operator(grid, AFFINE, SHAPE)
        warm = time.process_time() - start
    if saved is None:
        os.environ.pop("FLATPREP_CACHE_DIR")
    else:
        os.environ["FLATPREP_CACHE_DIR"] = saved
    return op, cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--reference-frames", type=int, default=20)
    parser.add_argument("--pixel-size", type=float, default=1.2)
    parser.add_argument("--memory-frames", type=int, default=1200)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return _memory_child(args.memory_child, args.pixel_size)

    from flatprep.flatmap import make_grid
    from flatprep.io import open_volume_bold
    from flatprep.volume import project_volume_frames

    grid = make_grid(pixel_size=args.pixel_size)
    op, cold, warm = _time_build(grid)
    print(f"grid {grid.shape[0]} x {grid.shape[1]} at {grid.pixel_size} mm, {grid.n_pixels:,} valid pixels; "
          f"2 mm MNI grid {SHAPE}, {op.matrix.nnz:,} non-zeros")
    print(f"operator build (cold cache) {cold:.1f} CPU s, load (warm) {warm:.2f} CPU s")
    frames = synthetic_frames(args.frames)
    op.project(frames[:2])  # converts the matrix to float32 once
    start = time.process_time()
    fast = np.concatenate([op.project(frames[i:i + 16]) for i in range(0, len(frames), 16)])
    per_1000 = (time.process_time() - start) / len(frames) * 1000
    with tempfile.TemporaryDirectory() as folder:
        path = write_nifti(Path(folder) / "bold.nii", args.frames, [frames])
        gzipped = gzip_copy(path)
        seconds = {}
        for name, read in (("nii", lambda: project_volume_frames(open_volume_bold(path), op)),
                           ("gz", lambda: project_volume_frames(open_volume_bold(gzipped), op)),
                           ("gz nibabel", lambda: nibabel_gzip_project(gzipped, op))):
            start = time.process_time()
            from_file = read()
            seconds[name] = (time.process_time() - start) / args.frames * 1000
            assert np.allclose(from_file, fast, rtol=1e-4, atol=1e-2), name
        file_per_1000 = seconds["nii"]
    subset = frames[: args.reference_frames]
    start = time.process_time()
    reference = nilearn_project(subset, grid.operator("fsLR"))
    ref_per_1000 = (time.process_time() - start) / len(subset) * 1000
    r = [np.corrcoef(a, b)[0, 1] for a, b in zip(fast[: len(subset)], reference)]
    print(f"{'method':<44}{'CPU s / 1000 frames':>20}")
    print(f"{'flatprep operator (frames in memory)':<44}{per_1000:>20.2f}")
    print(f"{'flatprep read .nii in chunks + operator':<44}{file_per_1000:>20.2f}")
    print(f"{'flatprep read .nii.gz (ISA-L) + operator':<44}{seconds['gz']:>20.2f}")
    print(f"{'  same, nibabel gzip reader':<44}{seconds['gz nibabel']:>20.2f}"
          f"   ({seconds['gz nibabel'] / seconds['gz']:.2f} x slower)")
    print(f"{'nilearn vol_to_surf (depth) + fs_LR operator':<44}{ref_per_1000:>20.2f}")
    print(f"ratio nilearn / flatprep: {ref_per_1000 / per_1000:.1f} x (goal >= 10); "
          f"flatprep {per_1000:.2f} s / 1000 frames (goal <= 5)")
    print(f"median frame r flatprep vs nilearn: {np.median(r):.4f}")
    if args.memory_frames:
        with tempfile.TemporaryDirectory() as folder:
            path = write_nifti(Path(folder) / "bold.nii", args.memory_frames, _chunks(args.memory_frames))
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(path),
                                  "--pixel-size", str(args.pixel_size)], capture_output=True, text=True, check=True)
        child = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"prepare_volume_run on {args.memory_frames} frames of {SHAPE} "
              f"({args.memory_frames * np.prod(SHAPE) * 4 / 1e9:.1f} GB as float32): peak {child['peak_gb']:.2f} GB "
              f"(goal < 1.5), {child['cpu_seconds']:.1f} CPU s, {child['frames_out']} frames out")


if __name__ == "__main__":
    main()
