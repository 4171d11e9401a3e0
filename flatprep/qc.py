"""Quality-control figures.

matplotlib is imported inside the functions with the non-interactive Agg
backend, so plotting works on machines without a display.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .clean import MOTION_COLUMNS, temporal_snr
from .exceptions import FlatmapError
from .flatmap import FlatGrid


def _save_and_close(figure, path, *, dpi: int) -> Path:
    """Write ``figure`` to ``path`` atomically, close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        # Figures use constrained layout: bbox_inches="tight" would render every figure twice.
        with atomic_path(path, suffix=path.suffix) as tmp:
            figure.savefig(tmp, dpi=dpi)
    finally:
        plt.close(figure)
    return path


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
    size = (2 + 8 * width / max(width, height), 1.2 + 8 * height / max(width, height))
    figure, axes = plt.subplots(figsize=size, layout="constrained")
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
    return _save_and_close(figure, path, dpi=dpi)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_frames_png(grid: FlatGrid, frames: np.ndarray, path, *, times: list[float], limit: float = 3.0) -> Path:
    """A row of a few z-scored frames.

    Parameters
    ----------
    frames : array, shape (n_shown, n_pixels)
    times : list of float
        Time of each shown frame in s (titles).
    limit : float, default=3.0
        Symmetric colour limit (z units).
    """
    plt = _pyplot()
    frames = np.asarray(frames, dtype=np.float32)
    figure, axes = plt.subplots(len(frames), 1, figsize=(6.5, 2.2 * len(frames)), squeeze=False,
                                layout="constrained")
    x0, x1, y0, y1 = grid.bbox
    for ax, frame, t in zip(axes[:, 0], frames, times):
        image = np.ma.masked_invalid(grid.to_image(frame, fill=np.nan))
        shown = ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit, extent=(x0, x1, y0, y1))
        ax.set_title(f"t = {t:.0f} s", fontsize=9)
        ax.set_axis_off()
    figure.colorbar(shown, ax=axes[:, 0].tolist(), fraction=0.02, pad=0.01, label="z")
    return _save_and_close(figure, path, dpi=90)


def save_carpet_png(frames: np.ndarray, path, *, tr: float, pixel_hemi: np.ndarray, n_rows: int = 1500,
                    limit: float = 2.0) -> Path:
    """Carpet plot: a sample of pixels (rows, left then right hemisphere) against time.

    Parameters
    ----------
    frames : array, shape (n_timepoints, n_pixels)
    pixel_hemi : array, shape (n_pixels,)
        0 left, 1 right; rows are grouped by hemisphere.
    """
    plt = _pyplot()
    order = np.argsort(pixel_hemi, kind="stable")
    rows = order[np.linspace(0, len(order) - 1, min(n_rows, len(order))).astype(int)]
    carpet = np.asarray(frames[:, rows], dtype=np.float32).T
    figure, ax = plt.subplots(figsize=(9, 3.2), layout="constrained")
    ax.imshow(carpet, aspect="auto", cmap="gray", vmin=-limit, vmax=limit, interpolation="nearest",
              extent=(0, frames.shape[0] * tr, len(rows), 0))
    split = int(np.searchsorted(np.sort(pixel_hemi[rows]), 1))
    ax.axhline(split, color="tab:orange", lw=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("pixels (left | right)")
    return _save_and_close(figure, path, dpi=90)


def save_motion_png(confounds: dict, path, *, tr: float, n_dropped: int = 0) -> Path:
    """Framewise displacement and the six motion parameters from fMRIPrep confounds."""
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 3.6), sharex=True, layout="constrained")
    n = len(next(iter(confounds.values())))
    t = np.arange(n) * tr
    if "framewise_displacement" in confounds:
        top.plot(t, confounds["framewise_displacement"], color="k", lw=0.8)
    top.set_ylabel("FD (mm)")
    for name in MOTION_COLUMNS:
        if name in confounds:
            bottom.plot(t, confounds[name], lw=0.8, label=name)
    bottom.legend(ncol=6, fontsize=7, loc="upper right")
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("mm / rad")
    for ax in (top, bottom):
        if n_dropped:
            ax.axvspan(0, n_dropped * tr, color="tab:red", alpha=0.15)
    return _save_and_close(figure, path, dpi=90)


def save_flatmap_grid_png(grid: FlatGrid, maps: np.ndarray, titles: list[str], path, *, n_columns: int = 4,
                          cmap: str = "gray") -> Path:
    """Small multiples: one flat map per panel, each with its own 2-98 % colour range.

    Parameters
    ----------
    maps : array, shape (n_maps, n_pixels)
    titles : list of str, one per map
    """
    plt = _pyplot()
    maps = np.asarray(maps, dtype=np.float32)
    n_rows = max(1, -(-len(maps) // n_columns))
    figure, axes = plt.subplots(n_rows, n_columns, figsize=(3.2 * n_columns, 1.6 * n_rows), squeeze=False,
                                layout="constrained")
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, values, title in zip(axes.ravel(), maps, titles):
        low, high = np.percentile(values, [2, 98]) if values.size else (0, 1)
        ax.imshow(np.ma.masked_invalid(grid.to_image(values, fill=np.nan)), cmap=cmap, vmin=low, vmax=high)
        ax.set_title(title, fontsize=6)
    return _save_and_close(figure, path, dpi=100)


def run_quality(mean: np.ndarray, std: np.ndarray) -> dict:
    """QC numbers of a run from its per-pixel mean and std (both (n_pixels,)).

    Returns
    -------
    dict
        ``tsnr_median`` over pixels with signal, ``coverage`` (fraction of valid pixels with signal).
    """
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    signal = std > 0
    tsnr = temporal_snr(mean, std)
    return {"tsnr_median": round(float(np.median(tsnr[signal])), 2) if signal.any() else 0.0,
            "coverage": round(float(signal.mean()), 4)}


def save_reconstruction_figure(grid: FlatGrid, frame: np.ndarray, hidden: np.ndarray, prediction: np.ndarray,
                               path, *, limit: float = 3.0) -> Path:
    """Input, masked input and prediction of one frame, side by side on the flat map.

    Parameters
    ----------
    grid : FlatGrid or PixelIndex
        Gives the valid-pixel ``mask``.
    frame, hidden, prediction : arrays, shape (height, width)
        The input frame, the pixels hidden from the encoder (bool), the decoder's output.
    """
    plt = _pyplot()
    background = ~grid.mask
    shown_input = np.where(background, np.nan, frame)
    masked = np.where(background | hidden, np.nan, frame)
    predicted = np.where(background, np.nan, np.where(hidden, prediction, frame))
    figure, axes = plt.subplots(1, 3, figsize=(15, 2.6), layout="constrained")
    for ax, image, title in zip(axes, (shown_input, masked, predicted),
                                ("input", "visible to the encoder", "reconstruction (hidden patches predicted)")):
        ax.imshow(np.ma.masked_invalid(image), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    return _save_and_close(figure, path, dpi=90)
