"""Cost per run of each level as the dataset grows: participant, rerun, group and validate at N runs.

For each N in ``--sizes``, a dataset of N runs is built from one sample subject
(4 fsaverage5 runs: rest and motor, 2 runs each) by hard-linking its input files
under new subject labels (no data is copied, so N = 8,192 needs no more disk for
the inputs than N = 32). Then, each in a fresh process, on 2.4 mm grids:

1. ``flatprep BIDS OUT participant --no-figures``  (every run processed)
2. the same again                                   (rerun: every run verified and skipped)
3. ``flatprep BIDS OUT group --split-ratios 0.8 0.1 0.1``
4. ``flatprep-validate OUT``

and prints, per stage, wall and CPU seconds per run (CPU time is what other
processes sharing the machine disturb least), the process's peak RSS and, for the
group level, the size of the group report (``group.html`` plus the pictures
it shows). A least-squares line ``seconds = a + b * N`` per stage then gives
the cost extrapolated to 10^4 and 10^5 runs, and ``exponent`` (the slope of
log seconds against log N; 1.0 is linear) shows whether a stage grows faster
than the number of runs.

With ``--clone-outputs`` the participant level runs once, for one subject, and its outputs are copied
under the N-run labels (the subject entity inside each file rewritten): group and validate only, at sizes
where running the participant level would take hours.

Usage: python benchmarks/scale.py [--sizes 32 128 512 2048 8192] [--keep DIR] [--pixel-size 2.4] [--duration 180]
       [--clone-outputs]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD = ("import resource, sys, importlib\n"
          "module = importlib.import_module(sys.argv[1])\n"
          "code = module.main(sys.argv[2:])\n"
          "usage = resource.getrusage(resource.RUSAGE_SELF)\n"
          "print('PEAK_KB', usage.ru_maxrss, 'CPU_S', usage.ru_utime + usage.ru_stime, flush=True)\n"
          "sys.exit(code)\n")
STAGES = ("participant", "rerun", "group", "validate")
RUNS_PER_SUBJECT = 4


def _source_subject(root: Path, duration: float) -> Path:
    """One sample subject (sub-01: 4 fsaverage5 runs of ``duration`` s), written once per duration."""
    source = root / f"source-{duration:g}s"
    if not (source / "participants.tsv").exists():
        shutil.rmtree(source, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "flatprep.pipelines.cli.sample", str(source), "--subjects", "1",
                        "--runs", "2", "--spaces", "fsaverage5", "--duration", f"{duration:g}"],
                       check=True, capture_output=True)
    return source


def build_dataset(source: Path, bids: Path, n_runs: int) -> None:
    """A BIDS dataset of ``n_runs`` runs: sub-01's files hard-linked under labels 0001, 0002, ..."""
    if (bids / "participants.tsv").exists():
        return
    shutil.rmtree(bids, ignore_errors=True)
    n_subjects = -(-n_runs // RUNS_PER_SUBJECT)
    shared = [p for p in source.rglob("*") if p.is_file() and "sub-01" not in p.parts]
    for path in shared:
        if path.name != "participants.tsv":
            target = bids / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    subject_files = [p for p in source.rglob("*") if p.is_file() and "sub-01" in p.parts]
    header, row = (source / "participants.tsv").read_text().splitlines()[:2]
    rows = [header]
    for index in range(1, n_subjects + 1):
        label = f"sub-{index:05d}"
        for path in subject_files:
            target = bids / str(path.relative_to(source)).replace("sub-01", label)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
        rows.append(row.replace("sub-01", label, 1))
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")


def clone_outputs(template: Path, out: Path, n_runs: int) -> None:
    """The participant level's output for ``n_runs`` runs without running it: the per-run files of
    ``template`` (one subject, label 00001) copied under labels 00001, 00002, ..., each made another scan
    (:func:`_make_distinct`), and runs.tsv and the subject reports likewise. For the group and validate stages at sizes where the
    participant level would take hours on a shared machine."""
    import h5py

    from flatprep.pipelines.runner import RUNS_COLUMNS
    from flatprep.tables import read_tsv, write_tsv

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(template, out, ignore=shutil.ignore_patterns("sub-*", "runs.tsv", "shards", "group.html",
                                                                   "figures"))
    rows = read_tsv(template / "runs.tsv")
    cloned = []
    for index in range(1, -(-n_runs // RUNS_PER_SUBJECT) + 1):
        label = f"{index:05d}"
        for path in (template / "sub-00001").rglob("*"):
            target = out / str(path.relative_to(template)).replace("sub-00001", f"sub-{label}")
            if path.is_dir():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            if target.suffix == ".h5":
                _make_distinct(target, label, index)
        report = (template / "sub-00001.html").read_text().replace("sub-00001", f"sub-{label}")
        (out / f"sub-{label}.html").write_text(report)
        cloned += [{k: (v.replace("00001", label) if isinstance(v, str) else v) for k, v in row.items()}
                   for row in rows]
    write_tsv(out / "runs.tsv", cloned, RUNS_COLUMNS)


def _make_distinct(path: Path, label: str, index: int) -> None:
    """Make a cloned run file another scan: its subject entity, one frame value and its BOLD inputs' recorded
    sha256 become the clone's own, and its content checksum is recomputed. The group level packs identical
    frames or inputs under two names once, so exact copies would leave all but the first out."""
    import hashlib

    import h5py

    from flatprep.h5 import CHECKSUM_ATTR, content_sha256

    with h5py.File(path, "r+") as handle:
        entities = json.loads(handle.attrs["entities"])
        handle.attrs["entities"] = json.dumps(entities | {"subject": label}, sort_keys=True)
        frames = handle["frames"]
        frames[0, index % frames.shape[1]] = np.float16(-4.0 + (index % 8000) / 1000)  # one value, one chunk
        sources = json.loads(handle.attrs["sources"])
        for source in sources:
            if source.get("sha256") and "_bold." in str(source.get("path", "")):
                source["sha256"] = hashlib.sha256(f"{source['sha256']}:{label}".encode()).hexdigest()
        handle.attrs["sources"] = json.dumps(sources)
        datasets = {name: handle[name] for name in ("frames", "mean", "std", "grid/mask")}
        handle.attrs[CHECKSUM_ATTR] = content_sha256(datasets)


def _run_stage(module: str, *args: str) -> tuple[float, float, float]:
    """Run ``module.main(args)`` in a fresh process: (wall seconds, CPU seconds, peak RSS in MB) of that process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, module, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode or "PEAK_KB" not in done.stdout:  # a failed stage (or invalid output) times nothing useful
        raise SystemExit(f"{module} {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    peak_kb, _, cpu = done.stdout.split("PEAK_KB")[-1].split()[:3]
    return wall, float(cpu), int(peak_kb) / 1024


def report_bytes(out: Path) -> int:
    """Bytes of group.html and of every file under figures/ whose name starts with ``group``."""
    files = [out / "group.html", *(out / "figures").glob("group*")]
    return sum(p.stat().st_size for p in files if p.is_file())


def measure(root: Path, source: Path, n_runs: int, pixel_size: str, *, clone: bool = False) -> dict:
    """Every stage at ``n_runs``: {stage: (wall s, CPU s, peak MB)} and ``report_mb`` (with ``clone``,
    the participant outputs are cloned from ``out-warm`` and only the group and validate stages run)."""
    bids, out = root / f"bids-{n_runs}", root / f"out-{n_runs}"
    build_dataset(source, bids, n_runs)
    shutil.rmtree(out, ignore_errors=True)
    run = "flatprep.pipelines.cli.run"
    participant = [str(bids), str(out), "participant", "--no-figures", "--pixel-size", pixel_size,
                   "--space", "fsaverage5"]
    if clone:
        clone_outputs(root / "out-warm", out, n_runs)
        result = {"participant": (float("nan"),) * 3, "rerun": (float("nan"),) * 3}
    else:
        result = {"participant": _run_stage(run, *participant), "rerun": _run_stage(run, *participant)}
    result["group"] = _run_stage(run, str(bids), str(out), "group", "--split-ratios", "0.8", "0.1", "0.1")
    result["validate"] = _run_stage("flatprep.pipelines.cli.validate", str(out))
    result["report_mb"] = report_bytes(out) / 1e6
    return result


def fit(sizes: list[int], seconds: list[float]) -> tuple[float, float, float]:
    """Least-squares ``seconds = a + b * N``: (a, b, exponent of the log-log slope)."""
    n, t = np.asarray(sizes, float), np.asarray(seconds, float)
    b, a = np.polyfit(n, t, 1)
    exponent = np.polyfit(np.log(n), np.log(t), 1)[0] if len(n) > 1 else float("nan")
    return float(a), float(b), float(exponent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 128, 512, 2048, 8192])
    parser.add_argument("--pixel-size", default="2.4")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (datasets are reused)")
    parser.add_argument("--duration", type=float, default=180.0,
                        help="seconds per sample run (shorter runs need less disk at large N; default 180)")
    parser.add_argument("--clone-outputs", action="store_true",
                        help="skip the participant level: clone one subject's outputs (group and validate only)")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="flatprep-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    source = _source_subject(root, args.duration)
    # The operator is built once, before anything is timed.
    build_dataset(source, root / "bids-warm", RUNS_PER_SUBJECT)
    _run_stage("flatprep.pipelines.cli.run", str(root / "bids-warm"), str(root / "out-warm"), "participant",
               "--no-figures", "--pixel-size", args.pixel_size, "--participant-label", "00001")
    print(f"fsaverage5 runs of {args.duration:g} s at {args.pixel_size} mm, one process per stage, "
          f"{os.cpu_count()} cores; per stage: wall s/run, CPU s/run, peak RSS MB")
    print(f"{'runs':>6} " + " ".join(f"{s:>23}" for s in STAGES) + f" {'report MB':>9}")
    results = {}
    for n_runs in args.sizes:
        results[n_runs] = r = measure(root, source, n_runs, args.pixel_size, clone=args.clone_outputs)
        cells = " ".join(f"{r[s][0] / n_runs:7.4f} {r[s][1] / n_runs:7.4f} {r[s][2]:7.0f}" for s in STAGES)
        print(f"{n_runs:>6} {cells} {r['report_mb']:>9.2f}", flush=True)
    if len(args.sizes) > 1:
        print("fitted seconds = a + b * N on wall (CPU) time; exponent: log-log slope, 1.0 = linear")
        for stage in STAGES[2:] if args.clone_outputs else STAGES:
            (a, b, exponent), (a_cpu, b_cpu, exponent_cpu) = (
                fit(args.sizes, [results[n][stage][i] for n in args.sizes]) for i in (0, 1))
            print(f"{stage:>12}: a {a:7.1f} ({a_cpu:.1f}) s, b {b:.4f} ({b_cpu:.4f}) s/run, exponent {exponent:.2f} "
                  f"({exponent_cpu:.2f}); 1e4 runs {(a + b * 1e4) / 3600:.2f} h, 1e5 runs {(a + b * 1e5) / 3600:.1f} h")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
