"""Raster figures drawn straight from arrays: colour lookup, colour bars, line traces, PNG files.

The per-run QC figures are images of arrays (flat maps, carpets) and a few
traces: drawing them through matplotlib's figure machinery (layout, axes,
text, anti-aliasing) costs about a second per run, more than flattening the
run. Here each picture is a uint8 RGB array built with numpy and written by
a small PNG encoder (zlib level 1: fast, files ~10 % larger than level 6; no filter), so the same
input always gives the same bytes. Titles, colour scales and legends go into
the PNG's text chunks (:func:`read_png_text`) and from there into the HTML
report, instead of being drawn as text.

matplotlib is imported only to build a colour map's lookup table once (:func:`colormap_lut`).
"""

from __future__ import annotations

import os
import struct
import zlib
from functools import lru_cache
from pathlib import Path

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
    return hstack(*(np.swapaxes(image, 0, 1) for image in images), gap=gap, fill=fill).swapaxes(0, 1).copy()


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
