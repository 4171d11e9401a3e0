"""Per-run prep cost on runs shaped like real data, against an fm-MAE-style reference in the same run.

Writes a synthetic fMRIPrep-style dataset into a temporary folder (nothing is
stored in the repository), one subject per shape:

=========  ==========  ======  ====================  ===============================
shape      space       TR (s)  frames in -> out      like
=========  ==========  ======  ====================  ===============================
hcp        fsLR        0.72    1200 -> 864           HCP-YA rest (downsampling)
fslr-1.4   fsLR        1.4     650 -> 909            multiband 1.4 s (upsampling)
fs5-1.4    fsaverage5  1.4     650 -> 909            fMRIPrep fsaverage5 (upsampling)
fs6-2.0    fsaverage6  2.0     300 -> 599            OpenNeuro TR 2 s (upsampling)
=========  ==========  ======  ====================  ===============================

For each shape, ``flatprep BIDS OUT participant`` runs in a fresh process over
``--runs`` runs (process start, pybids discovery, cleaning, projection, HDF5
and QC figures all inside the timing; operators are built beforehand, as a
cached operator is the normal case), then the reference does the same runs in
a fresh process: nibabel load, per-vertex z-score, anti-alias low-pass + PCHIP
to TR 1 s, one ``LinearNDInterpolator`` per hemisphere over the whole run,
float16, one HDF5 dataset per run (no figures). Both are timed in this run on
the same files.

Prints, per shape: seconds per 1,000 output frames, peak RSS of the process,
and the speed ratio flatprep / reference. With ``--repeats N`` each shape runs
N rounds (flatprep, flatprep without figures, reference, in turn) and the
medians are printed, with the range of the rounds' ratios: on a shared or
virtual machine one round's ratio varies by 10-20 %. Goals: <= 4 s per 1,000 output
frames on one core with figures, >= 4x the reference, peak <= 1 GB.

With ``--breakdown``, one more flatprep process per shape runs under cProfile
and the table says where its seconds go, per 1,000 output frames: discovery,
hashing the inputs, reading and decoding, cleaning, projection and float16
cast, HDF5 writing and checksum, QC figures, and the rest (imports, Nipype's
bookkeeping, locks and checks). These are the profiler's wall-clock seconds
(its CPU clock costs a system call per Python call, which would swamp the
import-heavy stages); on one idle core they are CPU seconds plus a few waits
on the disk, and the profiler adds about 10 %: the shares are the point.

Usage: python benchmarks/prep.py [--runs 4] [--shapes hcp fslr-1.4 fs5-1.4 fs6-2.0] [--repeats 1] [--keep DIR]
       [--breakdown]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: name -> (space, TR in s, frames in)
SHAPES = {
    "hcp": ("fsLR", 0.72, 1200),
    "fslr-1.4": ("fsLR", 1.4, 650),
    "fs5-1.4": ("fsaverage5", 1.4, 650),
    "fs6-2.0": ("fsaverage6", 2.0, 300),
}
FMRIPREP = Path("derivatives") / "fmriprep"


# --------------------------------------------------------------------------- synthetic data


def _bold(rng: np.random.Generator, n_frames: int, n_columns: int) -> np.ndarray:
    """(n_frames, n_columns) float32: a tissue baseline, slow shared signals and noise, like BOLD."""
    baseline = rng.uniform(500, 1500, size=n_columns).astype(np.float32)
    slow = np.cumsum(rng.normal(size=(n_frames, 8)), axis=0).astype(np.float32)  # random walks
    loading = rng.normal(scale=2.0, size=(8, n_columns)).astype(np.float32)
    data = rng.standard_normal((n_frames, n_columns), dtype=np.float32)
    data *= 10.0
    data += slow @ loading
    data += baseline
    return data


def output_frames(shape: str) -> int:
    """Frames of one run of ``shape`` after resampling to TR 1 s."""
    _, tr, n_in = SHAPES[shape]
    return int(np.floor((n_in - 1) * tr / 1.0 + 1e-6)) + 1


def subject_of(shape: str) -> str:
    """The subject label that holds ``shape``'s runs: its place in :data:`SHAPES`, whatever shapes are chosen."""
    return f"{list(SHAPES).index(shape) + 1:02d}"


def write_dataset(root: Path, shapes: list[str], n_runs: int, seed: int = 0) -> None:
    """A raw BIDS folder plus fMRIPrep-style surface derivatives, one subject per shape.

    A shape whose subject is already there (``--keep`` of an earlier run) is left as it is.
    """
    from flatprep.sample.generate import _cifti_bytes, _gifti_bytes
    from flatprep.spaces import get_space

    description = {"Name": "flatprep prep benchmark (synthetic)", "BIDSVersion": "1.9.0"}
    (root / FMRIPREP).mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(description | {"DatasetType": "raw"}))
    (root / FMRIPREP / "dataset_description.json").write_text(json.dumps(
        description | {"DatasetType": "derivative", "GeneratedBy": [{"Name": "benchmark"}]}))
    for shape in shapes:
        space, tr, n_frames = SHAPES[shape]
        subject = subject_of(shape)
        if (root / FMRIPREP / f"sub-{subject}").exists():
            continue
        rng = np.random.default_rng([seed, int(subject)])
        raw, derived = root / f"sub-{subject}" / "func", root / FMRIPREP / f"sub-{subject}" / "func"
        raw.mkdir(parents=True, exist_ok=True)
        derived.mkdir(parents=True, exist_ok=True)
        for run in range(1, n_runs + 1):
            stem = f"sub-{subject}_task-rest_run-{run}"
            sidecar = {"RepetitionTime": tr, "TaskName": "rest"}
            (raw / f"{stem}_bold.json").write_text(json.dumps(sidecar))
            if space == "fsLR":
                name = f"{stem}_space-fsLR_den-91k_bold"
                (derived / f"{name}.dtseries.nii").write_bytes(_cifti_bytes(_bold(rng, n_frames, 91282), tr=tr))
                (derived / f"{name}.json").write_text(json.dumps(sidecar))
                continue
            n_vertices = get_space(space).n_vertices
            for hemi in ("L", "R"):
                name = f"{stem}_hemi-{hemi}_space-{space}_bold"
                frames = _bold(rng, n_frames, n_vertices)
                (derived / f"{name}.func.gii").write_bytes(_gifti_bytes(frames, tr=tr, hemi=hemi))
                (derived / f"{name}.json").write_text(json.dumps(sidecar))


# --------------------------------------------------------------------------- reference


def write_flat_positions(folder: Path, spaces) -> None:
    """What an fm-MAE-style script loads once: each vertex's flat (x, y) and the grid's pixel centres.

    Saved as .npy (the reference's "flat surface" files), so that the reference
    process pays only its own loading, not flatprep's geometry code.
    """
    from flatprep.flatmap import _vertex_flat_positions, make_grid
    from flatprep.spaces import HEMIS, get_space

    grid = make_grid()
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "pixel_centers.npy", grid.pixel_centers())
    np.save(folder / "pixel_hemi.npy", np.asarray(grid.pixel_hemi))
    for space in spaces:
        for hemi in HEMIS:
            np.save(folder / f"{space}_{hemi}.npy", _vertex_flat_positions(grid, get_space(space), hemi))


def _reference_load(files: list[Path]) -> tuple[list[np.ndarray], float]:
    """nibabel load: per hemisphere (n_frames, n_vertices) float32, and the TR from the sidecar."""
    import nibabel as nib

    tr = json.loads(files[0].with_name(files[0].name.split(".")[0] + ".json").read_text())["RepetitionTime"]
    if len(files) == 2:
        return [np.stack([d.data for d in nib.load(str(f)).darrays]) for f in files], tr
    image = nib.load(str(files[0]))
    raw = image.get_fdata(dtype=np.float32)
    hemis = []
    for name in ("CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT"):
        for structure, slc, model in image.header.get_axis(1).iter_structures():
            if structure == name:
                full = np.zeros((raw.shape[0], int(model.nvertices[name])), np.float32)
                full[:, model.vertex] = raw[:, slc]
                hemis.append(full)
    return hemis, tr


def _reference_resample(data: np.ndarray, tr: float, target: float = 1.0) -> np.ndarray:
    """Anti-alias low-pass (when downsampling), then PCHIP onto the target grid: (T, V) -> (T', V)."""
    from scipy.interpolate import PchipInterpolator
    from scipy.signal import butter, sosfiltfilt

    if tr < target:
        data = sosfiltfilt(butter(8, 0.9 * 0.5 / target, fs=1 / tr, output="sos"), data, axis=0)
    t_in = np.arange(len(data)) * tr
    t_out = np.arange(0, t_in[-1] + 1e-6, target)
    return PchipInterpolator(t_in, data, axis=0)(t_out)


def reference_main(bids: Path, out: Path, subject: str) -> None:
    """fm-MAE style: load, z-score, resample, one LinearNDInterpolator per hemisphere, float16, HDF5."""
    import h5py
    from scipy.interpolate import LinearNDInterpolator

    flat = out.parent.parent / "flat"
    centers, pixel_hemi = np.load(flat / "pixel_centers.npy"), np.load(flat / "pixel_hemi.npy")
    derived = bids / FMRIPREP / f"sub-{subject}" / "func"
    runs = sorted({p.name.split("_hemi-")[0].split("_space-")[0] for p in derived.glob("*_bold.*i*")})
    for stem in runs:
        files = sorted(derived.glob(f"{stem}_*bold.dtseries.nii")) or sorted(derived.glob(f"{stem}_hemi-*_bold.func.gii"))
        space = files[0].name.split("space-")[1].split("_")[0]
        hemis, tr = _reference_load(files)
        frames = None
        for h, data in enumerate(hemis):
            data = data.astype(np.float64)
            std = data.std(axis=0)
            data = (data - data.mean(axis=0)) / np.where(std > 0, std, 1.0)  # per-vertex z-score
            data = _reference_resample(data, tr)
            xy = np.load(flat / f"{space}_{'LR'[h]}.npy")
            keep = np.all(np.isfinite(xy), axis=1)
            pixels = pixel_hemi == h
            values = LinearNDInterpolator(xy[keep], data[:, keep].T)(centers[pixels])  # (P_h, T)
            if frames is None:
                frames = np.zeros((data.shape[0], len(pixel_hemi)), np.float16)
            frames[:, pixels] = values.T
        with h5py.File(out / f"{stem}.h5", "w") as handle:
            handle.create_dataset("bold", data=frames)
    print("PEAK_KB", peak_kb())


# --------------------------------------------------------------------------- timing


def peak_kb() -> int:
    """This process's peak resident memory in kB.

    From /proc (VmHWM, which starts afresh at exec); ``ru_maxrss`` would carry
    over the parent's peak into a child started from a large benchmark process.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux


_FLATPREP = ("import sys\n"
             f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
             "from prep import peak_kb\n"
             "from flatprep.pipelines.cli.run import main\n"
             "code = main(sys.argv[1:])\n"
             "print('PEAK_KB', peak_kb())\n"
             "sys.exit(code)\n")


_PROFILED = ("import cProfile, sys\n"
             "profile = cProfile.Profile()\n"
             "profile.enable()\n"  # before the imports: they are part of a run's cost
             f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
             "from prep import peak_kb\n"
             "from flatprep.pipelines.cli.run import main\n"
             "code = main(sys.argv[2:])\n"
             "profile.disable()\n"
             "profile.dump_stats(sys.argv[1])\n"
             "print('PEAK_KB', peak_kb())\n"
             "sys.exit(code)\n")

#: Stages of ``--breakdown``: (label, file, function). Only "HDF5 + checksum" holds another stage (it consumes
#: the projection's blocks), whose time is taken out of it.
_STAGES = (
    ("discovery", "pipelines/bids.py", "discover_runs"),
    ("input sha256", "pipelines/runner.py", "sources_of"),
    ("read+decode", "flatprep/io.py", "load_surface_bold"),
    ("cleaning", "flatprep/clean.py", "clean_bold"),
    ("projection+f16", "flatprep/flatmap.py", "project_float16_blocks"),
    ("HDF5+checksum", "flatprep/h5.py", "write_run_blocks"),
    ("figures", "pipelines/outputs.py", "run_figures"),
)


def profile_breakdown(bids: Path, out: Path, subject: str, space: str) -> dict[str, float]:
    """Seconds of each of :data:`_STAGES` in one profiled ``flatprep participant`` process, and "other"."""
    import pstats

    shutil.rmtree(out, ignore_errors=True)
    stats_file = out.with_suffix(".prof")
    _timed(["-c", _PROFILED, str(stats_file), str(bids), str(out),
            "participant", "--participant-label", subject, "--space", space, "--nprocs", "1"])
    profile = pstats.Stats(str(stats_file))
    table = profile.stats  # (file, line, function) -> (calls, primitive calls, own time, cumulative time, callers)
    seconds = {}
    for label, file, function in _STAGES:
        seconds[label] = sum(entry[3] for (path, _, name), entry in table.items()
                             if name == function and Path(path).as_posix().endswith(file))
    seconds["HDF5+checksum"] -= seconds["projection+f16"]
    seconds["other"] = profile.total_tt - sum(seconds.values())
    stats_file.unlink()
    return seconds


def _timed(argv: list[str]) -> tuple[float, float, float]:
    """Run a fresh Python process: (wall seconds, CPU seconds (user + system), its peak RSS in GB).

    CPU seconds are what one core pays: on a shared machine the wall time
    also counts the time other processes held the cores.
    """
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak_kb = int(done.stdout.split("PEAK_KB")[-1].split()[0])
    return wall, cpu, peak_kb / 1024**2


def run_flatprep(bids: Path, out: Path, subject: str, space: str, *extra: str) -> tuple[float, float, float]:
    """``flatprep BIDS OUT participant`` on one subject's runs, one process, one core."""
    shutil.rmtree(out, ignore_errors=True)  # a rerun would skip complete runs and time nothing
    return _timed(["-c", _FLATPREP, str(bids), str(out), "participant", "--participant-label", subject,
                   "--space", space, "--nprocs", "1", *extra])


def _median_round(rounds: list[dict], side: str) -> tuple[float, float, float]:
    """(wall, CPU, peak) of ``side``: the median wall and CPU seconds over the rounds, the largest peak."""
    walls, cpus, peaks = zip(*(r[side] for r in rounds))
    return float(np.median(walls)), float(np.median(cpus)), max(peaks)


def run_reference(bids: Path, out: Path, subject: str) -> tuple[float, float, float]:
    """The fm-MAE-style script on the same runs, one process."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return _timed([__file__, "--reference-child", str(bids), str(out), subject])


def main() -> None:
    if sys.argv[1:2] == ["--reference-child"]:
        reference_main(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="runs per shape and process (HCP: 4 rest runs a subject)")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--no-reference", action="store_true", help="time flatprep only")
    parser.add_argument("--breakdown", action="store_true",
                        help="also profile one flatprep process per shape and print where its time goes, by stage")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds per shape (flatprep, without figures, reference, interleaved); medians are "
                             "printed, and the range of the per-round ratios")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="flatprep-prep-bench-"))
    bids = root / "bids"
    write_dataset(bids, args.shapes, args.runs)
    # Build (or load) each space's operator once: a cached operator is the normal case.
    from flatprep.flatmap import make_grid

    grid = make_grid()
    spaces = sorted({SHAPES[s][0] for s in args.shapes})
    for space in spaces:
        grid.operator(space)
    write_flat_positions(root / "flat", spaces)

    print(f"{args.runs} runs per shape, one process per shape and side, one core (OMP_NUM_THREADS=1). "
          "Per 1,000 output frames: CPU s (user + system) and wall s, process start and discovery included; "
          f"ratio = reference CPU / flatprep CPU; median of {args.repeats} interleaved round(s)"
          + (" (range of the rounds' ratios in brackets)" if args.repeats > 1 else ""))
    print(f"{'shape':>9} {'frames':>13} | {'flatprep cpu':>12} {'wall':>6} {'peak GB':>7} | {'no figures':>10} | "
          f"{'reference cpu':>13} {'wall':>6} {'peak GB':>7} | {'ratio':>5}")
    for shape in args.shapes:
        space, tr, n_in = SHAPES[shape]
        subject = subject_of(shape)
        n_run = output_frames(shape)
        per = 1000 / (args.runs * n_run)
        rounds = []
        for _ in range(args.repeats):  # interleaved, so drifting load from other processes hits both sides
            timed = {"flatprep": run_flatprep(bids, root / "out" / shape, subject, space),
                     "bare": run_flatprep(bids, root / "out-nofig" / shape, subject, space, "--no-figures")}
            if not args.no_reference:
                timed["reference"] = run_reference(bids, root / "reference" / shape, subject)
            rounds.append(timed)
        wall, cpu, peak = _median_round(rounds, "flatprep")
        bare = _median_round(rounds, "bare")[1]
        line = (f"{shape:>9} {args.runs} x {n_in:>4}->{n_run:<4}| {cpu * per:12.2f} {wall * per:6.2f} {peak:7.2f} | "
                f"{bare * per:10.2f} |")
        if not args.no_reference:
            ref_wall, ref_cpu, ref_peak = _median_round(rounds, "reference")
            ratios = sorted(r["reference"][1] / r["flatprep"][1] for r in rounds)
            spread = f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
            line += (f" {ref_cpu * per:13.2f} {ref_wall * per:6.2f} {ref_peak:7.2f} | "
                     f"{ratios[len(ratios) // 2]:5.2f}{spread}")
        print(line, flush=True)
    if args.breakdown:
        print("\nWhere flatprep's time goes (one profiled process per shape, s per 1,000 output frames; the "
              "profiler adds about 10 %)")
        labels = [label for label, _, _ in _STAGES] + ["other"]
        print(f"{'shape':>9} | " + " ".join(f"{label:>14}" for label in labels) + f" | {'total':>6}")
        for shape in args.shapes:
            per = 1000 / (args.runs * output_frames(shape))
            seconds = profile_breakdown(bids, root / "out-profiled" / shape, subject_of(shape), SHAPES[shape][0])
            print(f"{shape:>9} | " + " ".join(f"{seconds[label] * per:14.2f}" for label in labels)
                  + f" | {sum(seconds.values()) * per:6.2f}", flush=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
