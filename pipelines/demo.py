"""``make demo``: sample subjects through the participant level.

1. Writes the bundled sample subjects (``flatprep-sample``) into OUTPUT_DIR/bids,
   unless a complete sample dataset is already there.
2. Runs ``flatprep OUTPUT_DIR/bids OUTPUT_DIR/flatprep participant`` on them
   (a rerun skips the runs that are complete).
3. Runs the group level (training shards, manifest, subject splits) and
   ``flatprep-validate`` on the result.
4. Prints where the flat maps, the QC reports, the shards and the run table are.

Usage: ``python -m flatprep.pipelines.demo OUTPUT_DIR [--nprocs N] [--pixel-size MM]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flatprep-demo", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="folder for the sample dataset and the outputs")
    parser.add_argument("--nprocs", type=int, default=2, help="runs processed at once (default: 2)")
    parser.add_argument("--pixel-size", default="1.2", help="pixel edge in mm (default: 1.2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    from .cli.run import main as flatprep_main
    from .cli.sample import main as sample_main
    from .cli.validate import main as validate_main

    root = args.output_dir.resolve()
    bids, out = root / "bids", root / "flatprep"
    if not (bids / "sourcedata" / "flatprep-sample" / "ground_truth.json").exists():
        code = sample_main([str(bids), "--overwrite"] if bids.exists() else [str(bids)])
        if code:
            return code
    else:
        print(f"sample subjects already in {bids}")
    common = ["--nprocs", str(args.nprocs), "--pixel-size", args.pixel_size]
    code = flatprep_main([str(bids), str(out), "participant", *common])
    if code:
        return code
    # Four sample subjects: two train, one val, one test.
    code = flatprep_main([str(bids), str(out), "group", "--nprocs", str(args.nprocs),
                          "--split-ratios", "0.5", "0.25", "0.25"])
    if code:
        return code
    code = validate_main([str(out)])
    print()
    print(f"flat maps (HDF5):  {out}/sub-*/func/*_desc-flat_bold.h5")
    print(f"QC reports:        {', '.join(str(p) for p in sorted(out.glob('sub-*.html')))}")
    print(f"group report:      {out / 'group.html'}")
    print(f"training shards:   {out / 'shards'} (manifest.tsv, manifest.json)")
    print(f"run table:         {out / 'runs.tsv'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
