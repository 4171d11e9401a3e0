"""Flat maps drawn so that a reader can tell where on the cortex every value is.

The one renderer of flat-map pictures (run QC, group pages, reconstructions):
:func:`draw_flatmap` returns an RGB image with a title, the hemisphere names
over each hemisphere, "anterior" / "posterior" under each hemisphere's ends,
the sulcal depth in grey under pixels without a value, the outlines of the
Yeo-7 networks with their short names, and a colour bar with tick labels and
units. The context of a grid (:mod:`flatprep.landmarks`) is drawn once per
grid and zoom and kept for the process, so a figure costs a colour lookup
and a few text draws.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .flatmap import FlatGrid
from .render import BACKGROUND, INK, Label, colorbar_axis, colorize, draw_texts, hstack, upscale, vstack

#: Colour of the line around pixels without a value (orange).
NO_VALUE_EDGE = (255, 127, 14)
#: Grey of the sulcal-depth underlay: gyri (sulc -1.5) light, sulci (sulc 1.5) dark.
UNDERLAY_GREYS = (225.0, 150.0)


def _row_heights(size: int) -> tuple[int, int]:
    """Heights in pixels of the title row and of the rows of hemisphere and direction names, for a font size."""
    return size + 12, size + 6


class _Context(NamedTuple):
    underlay: np.ndarray  # (H * s, W * s, 3) uint8: sulcal grey inside the mask, white outside
    outline: np.ndarray  # (n,) int64 flat indices into the (H * s, W * s) map of borders between networks
    text: tuple  # (flat indices (m,), rgb (m, 3) float, alpha (m, 1) float) of the network names
    name_row: np.ndarray  # (rows, W * s, 3) uint8: hemisphere names
    direction_row: np.ndarray | None  # (rows, W * s, 3) uint8: anterior / posterior, None without the atlas


_CONTEXTS: dict[tuple, _Context] = {}


def map_scale(grid, *, width: int = 1000) -> int:
    """Integer zoom that draws ``grid`` about ``width`` pixels wide (at least 1)."""
    return max(1, round(width / grid.shape[1]))


def _without_overlaps(labels: list) -> tuple:
    """``labels`` in order, leaving out any whose box (with its halo) would overlap one already kept."""
    from .render import text_width

    kept, boxes = [], []
    for label in labels:
        half_w, half_h = text_width(label.text, label.size) / 2 + 3, label.size / 2 + 3
        box = (label.xy[0] - half_w, label.xy[1] - half_h, label.xy[0] + half_w, label.xy[1] + half_h)
        if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in boxes):
            kept.append(label)
            boxes.append(box)
    return tuple(kept)


def _hemisphere_labels(grid: FlatGrid, network: np.ndarray | None, scale: int, size: int):
    """Hemisphere names over each hemisphere's middle; "anterior"/"posterior" under its two ends.

    The posterior end is the one nearer the visual network's centre (in the
    pycortex layout the occipital poles face each other in the middle).
    """
    columns = np.nonzero(grid.mask)[1]  # valid pixels in row-major order, as pixel_hemi
    hemi = np.asarray(grid.pixel_hemi)
    names, directions = [], []
    for h, name in ((0, "left hemisphere"), (1, "right hemisphere")):
        own = columns[hemi == h]
        if own.size == 0:
            continue
        low, high = own.min() * scale, (own.max() + 1) * scale
        names.append(Label(((low + high) / 2, 0), name, size, anchor="mm", bold=True))
        if network is None or not (visual := (network == 1) & (hemi == h)).any():
            continue
        posterior_high = abs(columns[visual].mean() * scale - high) < abs(columns[visual].mean() * scale - low)
        ends = ("anterior", "posterior") if posterior_high else ("posterior", "anterior")
        directions += [Label((low, 0), f"\u2190 {ends[0]}", size, anchor="lm"),
                       Label((high, 0), f"{ends[1]} \u2192", size, anchor="rm")]
    return tuple(names), tuple(directions)


def _plain_context(mask: np.ndarray, scale: int) -> _Context:
    """The context of a bare valid-pixel mask (a shard's grid without its template): grey pixels, no names."""
    underlay = np.full((*mask.shape, 3), 255, np.uint8)
    underlay[mask] = BACKGROUND
    empty = np.zeros(0, np.int64)
    return _Context(upscale(underlay, scale), empty, (empty, np.zeros((0, 3)), np.zeros((0, 1))),
                    np.zeros((0, mask.shape[1] * scale, 3), np.uint8), None)


def _context(grid, scale: int, size: int) -> _Context:
    """The drawn context of ``grid`` at ``scale`` (kept for the process)."""
    from .landmarks import YEO7_SHORT, grid_landmarks

    if not isinstance(grid, FlatGrid):
        return _plain_context(np.asarray(grid.mask), scale)
    key = (grid.key, scale, size)
    if key in _CONTEXTS:
        return _CONTEXTS[key]
    marks = grid_landmarks(grid)
    underlay = np.full((*grid.shape, 3), 255, np.uint8)
    network_labels = ()
    if marks is None:
        underlay[grid.mask] = BACKGROUND
    else:
        grey = np.interp(marks.sulc, [-1.5, 1.5], UNDERLAY_GREYS)
        underlay[grid.mask] = np.round(grey).astype(np.uint8)[:, None]
        network_labels = _without_overlaps([Label((c * scale, r * scale), YEO7_SHORT[int(k)], size, anchor="mm",
                                                  halo=True) for r, c, k in marks.label_points])
    underlay = upscale(underlay, scale)
    outline = np.zeros(underlay.shape[:2], bool)  # (H * s, W * s)
    if marks is not None:
        labels = upscale(grid.to_image(marks.network.astype(np.int16), fill=-1), scale)
        inside = labels >= 0
        outline[:, 1:] |= (labels[:, 1:] != labels[:, :-1]) & inside[:, 1:] & inside[:, :-1]
        outline[1:] |= (labels[1:] != labels[:-1]) & inside[1:] & inside[:-1]
    hemi_labels, direction_labels = _hemisphere_labels(grid, None if marks is None else marks.network, scale, size)
    width, name_row = underlay.shape[1], _row_heights(size)[1]
    _CONTEXTS[key] = _Context(
        underlay, np.flatnonzero(outline), _text_layer(underlay.shape[:2], network_labels),
        _text_row(width, name_row, hemi_labels),
        _text_row(width, name_row, direction_labels) if direction_labels else None)
    return _CONTEXTS[key]


def _text_layer(shape: tuple, labels) -> tuple:
    """``labels`` rendered once, to be laid over any map: (flat indices, rgb, alpha) of the pixels they touch.

    Drawn on black and on white: where the two agree the text is opaque, and
    their difference gives each pixel's transparency.
    """
    on_black = draw_texts(np.zeros((*shape, 3), np.uint8), labels).astype(np.float64)
    on_white = draw_texts(np.full((*shape, 3), 255, np.uint8), labels).astype(np.float64)
    alpha = 1.0 - (on_white - on_black).mean(axis=-1) / 255.0  # (H, W) in 0..1
    index = np.flatnonzero(alpha > 0.01)
    a = alpha.reshape(-1)[index, None]  # (m, 1)
    rgb = on_black.reshape(-1, 3)[index] / np.maximum(a, 1e-6)  # un-premultiplied colour
    return index, np.clip(rgb, 0, 255), a


def draw_flatmap(grid: FlatGrid, pixels: np.ndarray, *, cmap: str, vmin: float, vmax: float, units: str = "",
                 title: str = "", scale: int | None = None, colorbar: bool = True, size: int = 14) -> np.ndarray:
    """One flat map with its anatomical context, as an RGB image.

    Parameters
    ----------
    grid : FlatGrid or PixelIndex
        A :class:`~flatprep.pixels.PixelIndex` (a mask without its template)
        gives the map and its colour bar without anatomical context.
    pixels : array, shape (n_pixels,)
        Values of the valid pixels; NaN shows the sulcal-depth underlay, ringed
        by an orange line. Not modified.
    cmap : str
        A matplotlib colour map name.
    vmin, vmax : float
        Values at the bottom and top of the colour bar (values beyond are clipped).
    units : str
        Written along the colour bar (e.g. "tSNR", "z").
    title : str
        Drawn in bold above the map.
    scale : int, optional
        Zoom (each grid pixel a scale x scale block); default about 1,000 pixels wide.
    colorbar : bool, default=True
        False leaves the colour bar out (a caller that draws one for several maps).
    size : int, default=14
        Font size in pixels (a figure shown at 1,000 pixels wide keeps its text at 12 px or more).

    Returns
    -------
    ndarray, uint8, shape (height, width, 3)
        The title row, the hemisphere names, the map (H * scale, W * scale),
        the anterior/posterior row, and the colour bar on the right of the map.
    """
    scale = map_scale(grid) if scale is None else scale
    context = _context(grid, scale, size)
    values = grid.to_image(np.asarray(pixels, np.float64), fill=np.nan)  # (H, W)
    has_value = upscale(np.isfinite(values), scale)  # (H * s, W * s)
    image = np.where(has_value[..., None], upscale(colorize(values, cmap, vmin, vmax), scale), context.underlay)
    flat = image.reshape(-1, 3)  # a view
    flat[context.outline] = (flat[context.outline] * 0.35).astype(np.uint8)  # darken: keeps the hue
    mask = np.asarray(grid.mask)
    if not has_value[::scale, ::scale][mask].all():  # some pixels have no value: ring them (a grey map's
        image[_edge(upscale(np.isfinite(values) | ~mask, scale))] = NO_VALUE_EDGE  # values look like the underlay)
    index, rgb, alpha = context.text
    flat[index] = np.round(flat[index] * (1 - alpha) + rgb * alpha).astype(np.uint8)
    rows = [row for row in (context.name_row, image, context.direction_row) if row is not None and row.size]
    figure = vstack(*rows, gap=2)
    if colorbar:
        bar = colorbar_axis(image.shape[0], cmap, vmin, vmax, label=units, size=size)
        column = np.full((figure.shape[0], bar.shape[1], 3), 255, np.uint8)
        top = context.name_row.shape[0] + 2 if context.name_row.size else 0
        column[top : top + bar.shape[0]] = bar
        figure = hstack(figure, column, gap=10)
    if title:
        figure = vstack(_text_row(figure.shape[1], _row_heights(size)[0], [Label((4, 0), title, size + 1, anchor="lm",
                                                                      bold=True)]), figure, gap=2)
    return figure


def _edge(inside: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of ``inside`` ((H, W) bool) that touch a pixel outside it (4-neighbours)."""
    edge = np.zeros_like(inside)
    edge[:, 1:] |= inside[:, 1:] & ~inside[:, :-1]
    edge[:, :-1] |= inside[:, :-1] & ~inside[:, 1:]
    edge[1:] |= inside[1:] & ~inside[:-1]
    edge[:-1] |= inside[:-1] & ~inside[1:]
    return edge


def _text_row(width: int, height: int, labels) -> np.ndarray:
    """A white (height, width, 3) row with ``labels`` centred vertically (their y is replaced)."""
    row = np.full((height, width, 3), 255, np.uint8)
    return draw_texts(row, [label._replace(xy=(label.xy[0], height // 2), color=INK) for label in labels])
