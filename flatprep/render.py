"""Raster figures drawn straight from arrays: colour lookup, colour bars, line traces, PNG files.

The per-run QC figures are images of arrays (flat maps, carpets) and a few
traces: drawing them through matplotlib's figure machinery (layout, axes,
text, anti-aliasing) costs about a second per run, more than flattening the
run. Here each picture is a uint8 RGB array built with numpy and written by
a small PNG encoder (zlib level 1: fast, files ~10 % larger than level 6; no filter), so the same
input always gives the same bytes. Text (titles, tick labels, units, legends)
is drawn by Pillow's FreeType renderer with the DejaVu Sans font that
matplotlib ships (:func:`draw_texts`); titles and scales also go into the
PNG's text chunks (:func:`read_png_text`) and from there into the HTML report.

matplotlib is imported only to build a colour map's lookup table once (:func:`colormap_lut`).
"""

from __future__ import annotations

import importlib.util
import math
import os
import struct
import zlib
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .atomic import atomic_path

#: Background of pixels without a value (light grey).
BACKGROUND = (217, 217, 217)
#: matplotlib's "tab10" cycle, the colours of line traces in order.
TAB10 = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
         (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
TAB10_NAMES = ("blue", "orange", "green", "red", "purple", "brown", "pink", "grey", "olive", "cyan")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@lru_cache(maxsize=None)
def colormap_lut(name: str, n: int = 256) -> np.ndarray:
    """(n, 3) uint8 RGB of matplotlib colour map ``name`` (read-only).

    Kept in the flatprep cache by matplotlib version: importing matplotlib
    costs ~0.2 s, more than drawing a run's figures.
    """
    from importlib.metadata import version

    from .cache import cached_arrays, make_key

    def build() -> dict[str, np.ndarray]:
        import matplotlib

        rgba = matplotlib.colormaps[name].resampled(n)(np.arange(n))  # (n, 4) float in 0..1
        return {"lut": np.round(rgba[:, :3] * 255).astype(np.uint8)}

    key = make_key(kind="colormap", name=name, n=n, matplotlib=version("matplotlib"))
    lut = cached_arrays("colormaps", key, build)["lut"]
    lut.flags.writeable = False
    return lut


def colorize(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """Map values to colours like matplotlib's ``Normalize`` + colour map; NaN gets :data:`BACKGROUND`.

    Parameters
    ----------
    values : array, shape (...)
        Any real dtype; NaN marks "no value".
    cmap : str
        A matplotlib colour map name.
    vmin, vmax : float
        Values at the first and last colour; values outside are clipped to them.

    Returns
    -------
    array, shape (..., 3), uint8
    """
    lut = colormap_lut(cmap)
    values = np.asarray(values, dtype=np.float64)
    span = vmax - vmin
    scaled = (values - vmin) * (len(lut) / span) if span > 0 else np.zeros(values.shape)
    finite = np.isfinite(scaled)
    index = np.clip(np.where(finite, scaled, 0), 0, len(lut) - 1).astype(np.intp)
    rgb = lut[index]
    rgb[~finite] = BACKGROUND
    return rgb


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel as a ``factor`` x ``factor`` block: (H, W, ...) -> (H * factor, W * factor, ...)."""
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def colorbar(height: int, cmap: str, *, width: int = 16) -> np.ndarray:
    """(height, width, 3) uint8 vertical colour bar: the top row is the map's last colour."""
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(width, axis=1)
    return colorize(ramp * (1 - 1e-9), cmap, 0.0, 1.0)


def hstack(*images: np.ndarray, gap: int = 8, fill: int = 255) -> np.ndarray:
    """RGB images side by side, top-aligned, ``gap`` columns of ``fill`` between them."""
    height = max(image.shape[0] for image in images)
    width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
    out = np.full((height, width, 3), fill, np.uint8)
    x = 0
    for image in images:
        out[: image.shape[0], x : x + image.shape[1]] = image
        x += image.shape[1] + gap
    return out


def vstack(*images: np.ndarray, gap: int = 8, fill: int = 255) -> np.ndarray:
    """RGB images one below the other, left-aligned, ``gap`` rows of ``fill`` between them."""
    width = max(image.shape[1] for image in images)
    height = sum(image.shape[0] for image in images) + gap * (len(images) - 1)
    out = np.full((height, width, 3), fill, np.uint8)
    y = 0
    for image in images:
        out[y : y + image.shape[0], : image.shape[1]] = image
        y += image.shape[0] + gap
    return out


#: Text colour (near black) and the grey of axes, frames and tick marks.
INK = (34, 34, 34)
AXIS = (110, 110, 110)


def _font_file(name: str) -> Path:
    """A DejaVu font file as shipped by matplotlib (found without importing matplotlib)."""
    spec = importlib.util.find_spec("matplotlib")
    return Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "fonts" / "ttf" / name


@lru_cache(maxsize=None)
def _font(size: int, bold: bool = False):
    from PIL import ImageFont

    return ImageFont.truetype(str(_font_file("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")), size)


def text_width(text: str, size: int = 13, *, bold: bool = False) -> int:
    """Width in pixels of ``text`` drawn by :func:`draw_texts` at ``size``."""
    left, _, right, _ = _font(size, bold).getbbox(text)
    return int(math.ceil(right - min(left, 0)))


class Label(NamedTuple):
    """One piece of text for :func:`draw_texts`."""

    xy: tuple  # (x, y) in pixels of the anchor point
    text: str
    size: int = 13  # pixel size of the font
    color: tuple = INK
    anchor: str = "la"  # Pillow text anchor: l/m/r across, a(scender)/m(iddle)/s(baseline)/d(escender) down
    halo: bool = False  # a white outline that keeps the text legible over a map
    bold: bool = False


def draw_texts(image: np.ndarray, labels) -> np.ndarray:
    """Draw ``labels`` (:class:`Label`) on ``image`` ((H, W, 3) uint8, modified in place); return it.

    FreeType renders the same pixels for the same text, font and Pillow version.
    """
    labels = list(labels)
    if not labels:
        return image
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for label in labels:
        draw.text(label.xy, label.text, fill=tuple(label.color), font=_font(label.size, label.bold),
                  anchor=label.anchor, stroke_width=2 if label.halo else 0, stroke_fill=(255, 255, 255))
    image[...] = np.asarray(canvas)
    return image


def text_image(text: str, *, size: int = 13, color=INK, bold: bool = False, rotate: bool = False) -> np.ndarray:
    """``text`` alone on white, cropped to it: (h, w, 3) uint8; ``rotate`` turns it to read bottom to top."""
    left, top, right, bottom = _font(size, bold).getbbox(text)
    image = np.full((bottom - top + 2, right - left + 2, 3), 255, np.uint8)
    draw_texts(image, [Label((1 - left, 1 - top), text, size, color, bold=bold)])
    return np.rot90(image).copy() if rotate else image


def nice_ticks(low: float, high: float, *, n: int = 5) -> tuple[np.ndarray, list[str]]:
    """About ``n`` round values in [low, high] (steps of 1, 2, 2.5 or 5 x 10^k) and their labels.

    The labels carry the decimals that tell the steps apart (``0``, ``2.5``, ``0.05``).
    """
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        value = low if math.isfinite(low) else 0.0
        return np.array([value]), [f"{value:.3g}"]
    raw = (high - low) / max(n, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    ticks = np.arange(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1) * step
    decimals = next((d for d in range(8) if abs(round(step, d) - step) <= 1e-9 * step), 8)
    return ticks, [f"{0.0 if abs(t) < step * 1e-9 else t:.{decimals}f}" for t in ticks]


def colorbar_axis(height: int, cmap: str, vmin: float, vmax: float, *, label: str = "", size: int = 12,
                  width: int = 16) -> np.ndarray:
    """A vertical colour bar with tick marks, tick labels and its units read bottom to top.

    Returns
    -------
    array, shape (height, bar width + labels, 3), uint8
        ``vmin`` at the bottom row, ``vmax`` at the top row.
    """
    ticks, texts = nice_ticks(vmin, vmax)
    label_width = max(text_width(t, size) for t in texts)
    units = text_image(label, size=size, rotate=True)[:height] if label else np.zeros((0, 0, 3), np.uint8)
    out = np.full((height, width + 8 + label_width + 6 + units.shape[1], 3), 255, np.uint8)
    out[:, :width] = colorbar(height, cmap, width=width)
    out[[0, -1], :width] = AXIS
    out[:, [0, width - 1]] = AXIS
    labels = []
    span = vmax - vmin if vmax > vmin else 1.0
    for value, text in zip(ticks, texts):
        row = int(round((vmax - value) / span * (height - 1)))
        out[row, width : width + 5] = AXIS
        labels.append(Label((width + 7, min(max(row, size // 2 + 1), height - size // 2 - 2)), text, size,
                            anchor="lm"))
    draw_texts(out, labels)
    if units.size:
        top = (height - units.shape[0]) // 2
        out[top : top + units.shape[0], -units.shape[1]:] = units
    return out


def plot_panel(traces, *, duration: float, low: float, high: float, width: int = 800, height: int = 130,
               ylabel: str = "", xlabel: str = "time (s)", shaded: float = 0.0, hlines=(), size: int = 12,
               title: str = "", legend=()) -> np.ndarray:
    """Line traces in a framed plot with y and x tick labels: (height, width, 3) uint8.

    Parameters
    ----------
    traces : list of (array (n_samples,), rgb)
        Sample i of n is drawn at time i * duration / (n - 1).
    duration : float
        Time of the last sample, s (the x axis runs from 0).
    low, high : float
        y range (bottom and top of the plot area).
    shaded : float
        Fraction of the time axis shaded red from the left (dropped volumes).
    hlines : list of (value, rgb)
        Dashed horizontal lines (a threshold).
    title : str
        Drawn above the plot area, left-aligned.
    legend : list of (name, rgb)
        Names drawn in their traces' colours after the title.
    """
    y_ticks, y_texts = nice_ticks(low, high, n=4)
    left = 10 + size + 6 + max(text_width(t, size) for t in y_texts) + 6
    top, bottom, right = (size + 10 if title else size // 2 + 4), (2 * size + 14 if xlabel else size + 10), 12
    out = np.full((height, width, 3), 255, np.uint8)
    area = out[top : height - bottom, left : width - right]  # a view: drawing in it draws in ``out``
    area_h, area_w = area.shape[:2]
    if shaded:
        area[:, : int(round(area_w * min(shaded, 1.0)))] = (251, 220, 220)
    to_row = lambda v: int(round((high - v) / (high - low if high > low else 1.0) * (area_h - 1)))  # noqa: E731
    for value, rgb in hlines:
        if low <= value <= high:
            dashes = (np.arange(area_w) // 6) % 2 == 0
            area[to_row(value), dashes] = rgb
    for values, rgb in traces:
        draw_trace(area, values, low, high, rgb)
    out[top - 1, left - 1 : width - right + 1] = out[height - bottom, left - 1 : width - right + 1] = AXIS
    out[top - 1 : height - bottom + 1, [left - 1, width - right]] = AXIS
    labels = [Label((4, top - 4), title, size, anchor="ls")] if title else []
    for value, text in zip(y_ticks, y_texts):
        row = top + to_row(value)
        out[row, left - 5 : left - 1] = AXIS
        labels.append(Label((left - 7, row), text, size, anchor="rm"))
    x = 10 + text_width(title, size) + 16
    for name, rgb in legend:
        labels.append(Label((x, top - 4), name, size, color=rgb, anchor="ls", bold=True))
        x += text_width(name, size, bold=True) + 12
    draw_texts(out, labels)
    out[height - bottom + 1 :] = time_axis(bottom - 1, width, left, area_w, duration, xlabel=xlabel, size=size)
    if ylabel:
        rotated = text_image(ylabel, size=size, rotate=True)[:area_h]
        start = top + (area_h - rotated.shape[0]) // 2
        out[start : start + rotated.shape[0], 4 : 4 + rotated.shape[1]] = rotated
    return out


def time_axis(height: int, width: int, left: int, area_w: int, duration: float, *, xlabel: str = "time (s)",
              size: int = 12) -> np.ndarray:
    """The (height, width, 3) strip under a plot area that starts at column ``left``, ``area_w`` wide:
    tick marks and labels from 0 to ``duration`` s, and ``xlabel`` under them."""
    out = np.full((height, width, 3), 255, np.uint8)
    labels = []
    ticks, texts = nice_ticks(0.0, duration, n=8)
    for value, text in zip(ticks, texts):
        column = left + int(round(value / (duration if duration > 0 else 1.0) * (area_w - 1)))
        out[:4, column] = AXIS
        labels.append(Label((column, 5), text, size, anchor="ma"))
    if xlabel:
        labels.append(Label((left + area_w // 2, height - 2), xlabel, size, anchor="md"))
    return draw_texts(out, labels)


def draw_trace(panel: np.ndarray, y: np.ndarray, low: float, high: float, color) -> None:
    """Draw one trace across ``panel`` ((H, W, 3) uint8, modified): sample i at column i * (W - 1) / (n - 1).

    Each column gets the trace's value there (linear between samples), and a
    vertical segment joins neighbouring columns, so steep steps stay connected.
    Values are mapped linearly from [low, high] to the bottom and top rows;
    NaN samples are left out.
    """
    height, width = panel.shape[:2]
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        return
    columns = np.linspace(0, len(y) - 1, width)
    at = np.interp(columns, np.arange(len(y)), y)  # NaN samples make NaN columns
    span = high - low if high > low else 1.0
    rows = np.clip(np.round((high - at) / span * (height - 1)), 0, height - 1)  # (W,) top = high
    ok = np.isfinite(rows)
    rows = np.where(ok, rows, 0).astype(np.intp)
    start = np.minimum(rows, np.r_[rows[1:], rows[-1]])
    stop = np.maximum(rows, np.r_[rows[1:], rows[-1]])
    row = np.arange(height)[:, None]  # (H, 1)
    panel[(row >= start) & (row <= stop) & ok] = color  # (H, W) mask: each column's segment


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(image: np.ndarray, *, text: dict[str, str] | None = None, level: int = 1) -> bytes:
    """Encode a (H, W) grey or (H, W, 3) RGB uint8 image as PNG; ``text`` becomes tEXt chunks (Latin-1)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    color_type = 2 if image.ndim == 3 else 0
    rows = np.zeros((height, 1 + image[0].size), np.uint8)  # filter byte 0 ("none") on every row
    rows[:, 1:] = image.reshape(height, -1)
    parts = [_PNG_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))]
    for key, value in (text or {}).items():
        parts.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace")))
    parts += [_chunk(b"IDAT", zlib.compress(rows.tobytes(), level)), _chunk(b"IEND", b"")]
    return b"".join(parts)


def write_png(path: str | os.PathLike, image: np.ndarray, *, text: dict[str, str] | None = None) -> Path:
    """Write :func:`png_bytes` of ``image`` to ``path`` atomically; return the path."""
    data = png_bytes(image, text=text)
    with atomic_path(path, suffix=".png") as tmp, open(tmp, "wb") as handle:  # a full disk names the file
        handle.write(data)
    return Path(path)


def read_png_text(path: str | os.PathLike) -> dict[str, str]:
    """The tEXt chunks before the image data of a PNG ({} for a file that is not one or has none)."""
    text = {}
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != _PNG_SIGNATURE:
                return {}
            while header := handle.read(8):
                if len(header) < 8:
                    break
                length, tag = struct.unpack(">I4s", header)
                if tag in (b"IDAT", b"IEND"):
                    break
                data = handle.read(length + 4)[:length]
                if tag == b"tEXt" and b"\0" in data:
                    key, value = data.split(b"\0", 1)
                    text[key.decode("latin-1")] = value.decode("latin-1")
    except OSError:
        return {}
    return text
