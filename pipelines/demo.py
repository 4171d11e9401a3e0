"""``make demo``: from simulated subjects to a probe table, on a CPU, in a few minutes.

1. ``flatprep-sample``: eight sample subjects (rest and motor runs on fsaverage5) in OUTPUT_DIR/bids,
   unless a complete sample dataset is already there.
2. ``flatprep ... participant``: per-run flat maps and QC reports (a rerun skips complete runs).
3. ``flatprep ... group`` and ``flatprep-validate``: training shards, manifest, subject splits.
4. ``flatprep-train``: a short CPU pretraining of the micro MAE (1,500 steps of 8 clips, 16-frame
   tubes, mask ratio 0.75, about 3.5 minutes on 2 cores), scored against predicting zeros and the
   PCA baseline.
5. ``flatprep-embed`` (twice: the trained encoder, and the same architecture at a seeded random
   initialisation) and ``flatprep-probe``: linear probes with subject-level folds for the block
   condition of each clip (from the events files) and the two sample traits (network coupling,
   visual-network amplitude), trained vs random-init encoder vs the FC and mean-map baselines; the
   table is printed at the end.

The demo uses the 2.4 mm grid (112 x 288), the CPU grid of the design; labs use the default 1.2 mm.

Usage: ``python -m flatprep.pipelines.demo OUTPUT_DIR [--nprocs N] [--steps N]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flatprep-demo", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="folder for the sample dataset and every output")
    parser.add_argument("--nprocs", type=int, default=2, help="runs processed at once (default: 2)")
    parser.add_argument("--steps", type=int, default=1500, help="pretraining steps (default: 1500)")
    return parser


def _step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    from .cli.logs import configure_logging

    # INFO from the start: the first command configures logging for the whole process, and the
    # sample writer alone logs at WARNING, which would hide every later step's progress lines.
    configure_logging()
    from .cli.embed import main as embed_main
    from .cli.probe import main as probe_main
    from .cli.run import main as flatprep_main
    from .cli.sample import main as sample_main
    from .cli.train import main as train_main
    from .cli.validate import main as validate_main

    root = args.output_dir.resolve()
    bids, out, run_dir, emb = root / "bids", root / "flatprep", root / "train", root / "embeddings"
    emb_random = root / "embeddings-random-init"
    _step("sample subjects")
    if (bids / "sourcedata" / "flatprep-sample" / "ground_truth.json").exists():
        print(f"already in {bids}")
    elif code := sample_main([str(bids), "--subjects", "8", "--spaces", "fsaverage5", "--duration", "180",
                              *(["--overwrite"] if bids.exists() else [])]):
        return code
    common = ["--nprocs", str(args.nprocs), "--pixel-size", "2.4"]
    steps = [
        ("participant level", lambda: flatprep_main([str(bids), str(out), "participant", *common])),
        ("group level", lambda: flatprep_main([str(bids), str(out), "group", "--nprocs", str(args.nprocs),
                                               "--split-ratios", "0.75", "0.25", "0"])),
        ("validate", lambda: validate_main([str(out)])),
        # One 16-frame tube per patch (4x fewer tokens than 4-frame tubes; a token holds the patch's
        # whole time course) and a quarter of the patches visible (MAE's image default; the reference
        # hides 0.9): the settings under which the micro model learns within these minutes.
        ("pretraining (micro MAE, CPU)", lambda: train_main([
            *(["--resume"] if (run_dir / "checkpoints" / "latest").exists() else []),
            "--data", str(out), "--out-dir", str(run_dir), "--set", f"steps={args.steps}",
            "--set", "model_args.tubelet=16", "--set", "model_args.mask_ratio=0.75",
            "--set", "batch_size=8", "--set", "lr=0.003",
            "--set", "eval_every=500", "--set", "save_every=500", "--set", "log_every=100"])),
        ("embeddings", lambda: embed_main([str(run_dir), str(emb), str(out)])),
        ("embeddings at random initialisation", lambda: embed_main([str(run_dir), str(emb_random), str(out),
                                                                     "--random-init", "0"])),
        ("linear probes", lambda: probe_main([str(emb), str(out), str(bids), str(emb),
                                              "--compare", f"random-init={emb_random}",
                                              # two subjects per test fold: per-run chance is then 0.5
                                              "--folds", "4"])),
    ]
    for title, command in steps:
        _step(title)
        if code := command():
            return code
    _step("where everything is")
    print(f"flat maps (HDF5):   {out}/sub-*/func/*_desc-flat_bold.h5")
    print(f"QC reports:         {out}/sub-*.html, {out / 'group.html'}")
    print(f"training shards:    {out / 'shards'} (manifest.tsv, manifest.json)")
    print(f"pretraining run:    {run_dir} (config.toml, metrics.jsonl, checkpoints/, figures/)")
    print(f"embeddings:         {emb / 'embeddings.h5'}")
    print(f"probe table:        {emb / 'probe.tsv'} and {emb / 'probe.png'}")
    _print_validation(run_dir / "metrics.jsonl")
    _print_probe_table(emb / "probe.tsv")
    print(VARIATION)
    return 0


#: Printed under the demo's numbers: how far they move between machines (README, "What the demo shows").
VARIATION = (
    "\nThese numbers are this machine's. The flat maps are the same bytes with any thread setting, but a short\n"
    "CPU pretraining follows the order of its sums: another torch thread count or BLAS kernel gives another\n"
    "loss and another table (README, 'What the demo shows', gives the spread measured across settings).\n"
    "The same machine, seed and thread count give the same numbers."
)


def _print_validation(path: Path) -> None:
    """The last validation scores of the pretraining run (metrics.jsonl)."""
    import json

    scores = [record for record in map(json.loads, path.read_text().splitlines()) if "val_loss" in record]
    if not scores:
        return
    last = scores[-1]
    pca = f", PCA baseline {last['val_pca_loss']:.4f}" if "val_pca_loss" in last else ""
    _step(f"validation loss at step {last['step']}")
    print(f"model {last['val_loss']:.4f}, predicting zeros {last['val_zero_loss']:.4f}{pca}")


def _print_probe_table(path: Path) -> None:
    """The probe table (targets x feature sets) from probe.tsv."""
    import csv

    from flatprep.learn.probe import format_probe_table

    with path.open(newline="", encoding="utf-8") as handle:
        rows = [row | {"mean": float(row["mean"]), "std": float(row["std"]), "chance": float(row["chance"])}
                for row in csv.DictReader(handle, delimiter="\t")]
    _step("probe table (accuracy, mean ± std over subject-level folds)")
    print(format_probe_table(rows))


if __name__ == "__main__":
    sys.exit(main())
