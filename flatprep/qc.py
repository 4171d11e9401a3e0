"""Quality-control figures.

The per-run figures (flat maps, frames, carpet, motion) are drawn straight
from the arrays by :mod:`flatprep.render`: the same pictures as a matplotlib
figure, at a small fraction of its cost, and the same bytes on every rerun;
their titles and scales travel in the PNG text chunks to the HTML report.
The group page draws its maps the same way; the training figures use
matplotlib, imported inside the functions with the non-interactive Agg
backend, so plotting works without a display.
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


def _percentile_limits(values: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    """``vmin``/``vmax``, each defaulting to the 2nd/98th percentile of the finite values (0/1 if none)."""
    finite = values[np.isfinite(values)]
    if vmin is None:
        vmin = float(np.percentile(finite, 2)) if finite.size else 0.0
    if vmax is None:
        vmax = float(np.percentile(finite, 98)) if finite.size else 1.0
    return vmin, vmax


def _map_scale(grid: FlatGrid) -> int:
    """Integer zoom that draws a flat map about 1,000 pixels wide (at least 1)."""
    return max(1, round(1000 / grid.shape[1]))


def save_flatmap_png(
    grid: FlatGrid,
    pixels: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str = "",
    cmap: str = "RdBu_r",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str = "",
) -> Path:
    """Save one flat map as a PNG: both hemispheres (left one on the left), a colour bar, grey background.

    Drawn from the array (:mod:`flatprep.render`): each grid pixel is a square
    block, row 0 at the top, the colour bar on the right runs from ``vmin``
    (bottom) to ``vmax`` (top). The title and the colour scale are stored in
    the PNG's text chunks ("Title", "Description"), shown by the HTML report.

    Parameters
    ----------
    grid : FlatGrid
    pixels : array, shape (n_pixels,)
        Values of the valid pixels (NaN shown as background).
    path : path
        Output PNG (written atomically; the same values give the same bytes).
    cmap : str, default="RdBu_r"
        A matplotlib colour map name.
    vmin, vmax : float, optional
        Colour limits; default: 2nd and 98th percentiles.

    Returns
    -------
    Path
    """
    from .render import colorbar, colorize, hstack, upscale, write_png

    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.shape != (grid.n_pixels,):
        raise FlatmapError(f"{path}: expected one map of {grid.n_pixels:,} pixels, got shape {pixels.shape}")
    vmin, vmax = _percentile_limits(pixels, vmin, vmax)
    image = upscale(colorize(grid.to_image(pixels, fill=np.nan), cmap, vmin, vmax), _map_scale(grid))
    scale = f"colour scale {cmap}: {vmin:.4g} (bottom of the bar) to {vmax:.4g} (top)"
    scale += f" {colorbar_label}" if colorbar_label else ""
    return write_png(path, hstack(image, colorbar(image.shape[0], cmap)),
                     text={"Title": title, "Description": scale})


def save_frames_png(grid: FlatGrid, frames: np.ndarray, path, *, times: list[float], limit: float = 3.0) -> Path:
    """A column of a few z-scored frames, top to bottom, with a colour bar (RdBu_r, -limit..limit).

    Parameters
    ----------
    frames : array, shape (n_shown, n_pixels)
    times : list of float
        Time of each shown frame in s (stored in the PNG's "Description").
    limit : float, default=3.0
        Symmetric colour limit (z units).
    """
    from .render import colorbar, colorize, hstack, vstack, write_png

    frames = np.asarray(frames, dtype=np.float32)
    images = [colorize(grid.to_image(frame, fill=np.nan), "RdBu_r", -limit, limit) for frame in frames]
    column = vstack(*images)
    shown = ", ".join(f"{t:.0f}" for t in times)
    text = {"Title": "z-scored frames",
            "Description": f"t = {shown} s, top to bottom; colour scale RdBu_r: z from {-limit:g} to {limit:g}"}
    return write_png(path, hstack(column, colorbar(column.shape[0], "RdBu_r")), text=text)


def carpet_pixels(pixel_hemi: np.ndarray, *, n_rows: int = 300) -> np.ndarray:
    """The pixels a carpet plot shows: ``n_rows`` evenly spaced, left hemisphere first.

    Parameters
    ----------
    pixel_hemi : array, shape (n_pixels,)
        0 left, 1 right.

    Returns
    -------
    array of int, shape (min(n_rows, n_pixels),)
        Pixel indices in carpet order. Drawing the carpet of ``frames[:, rows]``
        with ``pixel_hemi[rows]`` gives the same picture as that of ``frames``.
    """
    order = np.argsort(pixel_hemi, kind="stable")
    return order[np.linspace(0, len(order) - 1, min(n_rows, len(order))).astype(int)]


def save_carpet_png(frames: np.ndarray, path, *, tr: float, pixel_hemi: np.ndarray, n_rows: int = 300,
                    limit: float = 2.0) -> Path:
    """Carpet plot: a sample of pixels (rows, left then right hemisphere) against time (one column per frame).

    Parameters
    ----------
    frames : array, shape (n_timepoints, n_pixels)
    pixel_hemi : array, shape (n_pixels,)
        0 left, 1 right; rows are grouped by hemisphere, split by an orange line.
    n_rows : int, default=300
        Pixels shown, evenly spaced in that order.
    limit : float, default=2.0
        Grey scale from -limit (black) to limit (white).
    """
    from .render import colorize, write_png

    rows = carpet_pixels(pixel_hemi, n_rows=n_rows)
    carpet = colorize(np.asarray(frames[:, rows], dtype=np.float32).T, "gray", -limit, limit)  # (rows, T, 3)
    split = int(np.searchsorted(np.sort(pixel_hemi[rows]), 1))
    if 0 < split < len(rows):
        carpet = np.insert(carpet, split, (255, 127, 14), axis=0)  # an orange row between the hemispheres
    text = {"Title": "carpet plot",
            "Description": f"{len(rows)} pixels (left hemisphere above the orange line, right below) against "
                           f"time, one column per frame ({frames.shape[0]} frames, TR {tr:g} s); "
                           f"grey scale: z from {-limit:g} (black) to {limit:g} (white)"}
    return write_png(path, carpet, text=text)


def save_motion_png(confounds: dict, path, *, tr: float, n_dropped: int = 0) -> Path:
    """Framewise displacement (top panel, black) and the six motion parameters (bottom) against time.

    The value range of each panel and the colour of each trace are stored in
    the PNG's "Description"; dropped volumes are shaded red.
    """
    from .render import TAB10, TAB10_NAMES, draw_trace, vstack, write_png

    n = len(next(iter(confounds.values())))
    width, height = 800, 120
    panels, notes = [], []
    for names, colors in ((("framewise_displacement",), [("black", (0, 0, 0))]),
                          (MOTION_COLUMNS, list(zip(TAB10_NAMES, TAB10)))):
        traces = [(name, np.asarray(confounds[name], np.float64), color)
                  for name, color in zip(names, colors) if name in confounds]
        panel = np.full((height, width, 3), 255, np.uint8)
        if n_dropped:
            panel[:, : int(round(width * min(n_dropped, n) / n))] = (251, 220, 220)  # red at 15 %
        values = np.concatenate([y[np.isfinite(y)] for _, y, _ in traces]) if traces else np.zeros(0)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        for _, y, (_, rgb) in traces:
            draw_trace(panel, y, low, high, rgb)
        panels.append(panel)
        colours = ", ".join(f"{name} {colour}" for name, _, (colour, _) in traces)
        notes.append(f"{low:.3g} (bottom) to {high:.3g} (top): {colours or 'no column'}")
    text = {"Title": "motion",
            "Description": f"{n} volumes over {n * tr:g} s; top panel FD (mm) {notes[0]}; bottom panel "
                           f"(mm / rad) {notes[1]}" + (f"; first {n_dropped} volumes dropped" if n_dropped else "")}
    return write_png(path, vstack(*panels, gap=6, fill=160), text=text)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


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
