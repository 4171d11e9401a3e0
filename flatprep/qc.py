"""Quality-control figures.

matplotlib is imported inside the functions with the non-interactive Agg
backend, so plotting works on machines without a display.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .exceptions import FlatmapError
from .flatmap import FlatGrid


def _atomic_savefig(figure, path: Path, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        figure.savefig(tmp, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_flatmap_png(
    grid: FlatGrid,
    pixels: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str = "",
    cmap="RdBu_r",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str = "",
    dpi: int = 120,
) -> Path:
    """Save one flat map as a PNG: both hemispheres, colour bar, grey background.

    Parameters
    ----------
    grid : FlatGrid
    pixels : array, shape (n_pixels,)
        Values of the valid pixels (NaN shown as background).
    path : path
        Output PNG (written atomically).
    cmap : str or matplotlib Colormap, default="RdBu_r"
    vmin, vmax : float, optional
        Colour limits; default: 2nd and 98th percentiles.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.shape != (grid.n_pixels,):
        raise FlatmapError(f"{path}: expected one map of {grid.n_pixels:,} pixels, got shape {pixels.shape}")
    finite = pixels[np.isfinite(pixels)]
    if vmin is None:
        vmin = float(np.percentile(finite, 2)) if finite.size else 0.0
    if vmax is None:
        vmax = float(np.percentile(finite, 98)) if finite.size else 1.0
    image = np.ma.masked_invalid(grid.to_image(pixels, fill=np.nan))
    colormap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    colormap = colormap.with_extremes(bad="#d9d9d9")
    height, width = grid.shape
    figure, axes = plt.subplots(figsize=(2 + 8 * width / max(width, height), 1.2 + 8 * height / max(width, height)))
    x0, x1, y0, y1 = grid.bbox
    shown = axes.imshow(image, cmap=colormap, vmin=vmin, vmax=vmax, extent=(x0, x1, y0, y1),
                        interpolation="nearest")
    axes.set_xlabel("flat x (mm)")
    axes.set_ylabel("flat y (mm)")
    for label, x in (("left hemisphere", x0 + (x1 - x0) / 4), ("right hemisphere", x0 + 3 * (x1 - x0) / 4)):
        axes.text(x, y1, label, ha="center", va="bottom")
    axes.set_title(title, pad=18)
    bar = figure.colorbar(shown, ax=axes, fraction=0.025, pad=0.02)
    bar.set_label(colorbar_label)
    path = Path(path)
    _atomic_savefig(figure, path, dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return path
