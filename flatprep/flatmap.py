"""The flat-map grid and its sparse projection operators.

A :class:`FlatGrid` is (template, pixel size, fixed bounding box). Its mask of
valid pixels is a property of the grid alone: a pixel is valid when its centre
lies in a template triangle whose three vertices are cortex. Every input space
therefore yields images of one geometry.

For each input space, :meth:`FlatGrid.operator` gives a
:class:`ProjectionOperator`, a sparse matrix of shape
(n_valid_pixels, 2 * n_vertices) (left-hemisphere vertices first) that is built
once, cached on disk (:mod:`flatprep.cache`) and applied to a whole run as one
sparse product::

    grid = make_grid()                       # 224 x 560 at 1.2 mm
    op = grid.operator("fsLR")
    pixels = op.project(bold)                # (T, 2 * 32492) -> (T, P)
    images = grid.to_image(pixels)           # (T, P) -> (T, 224, 560)

How a pixel reaches a vertex of any space: the pixel centre has barycentric
weights in a template triangle; the same weights place it on the template's
sphere; from there it goes to the fs_LR sphere if needed (HCP registration)
and into the triangle of the target sphere that contains it, whose weights
are the operator's row. For the template's own space the flat weights are
used directly, so a function linear in flat coordinates is reproduced exactly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from .cache import cached_arrays, file_digest, make_key
from .exceptions import FlatmapError
from .geometry import Location, Mesh, locate_on_sphere, normalize_rows, rasterize_triangles
from .spaces import (
    HEMIS,
    SurfaceSpace,
    get_space,
    load_cortex_mask,
    load_sphere,
    map_sphere_points,
    space_files,
)
from .templates import FlatTemplate, load_template

logger = logging.getLogger(__name__)

#: Default pixel edge, as in the reference fm-MAE grid.
DEFAULT_PIXEL_SIZE = 1.2
#: Default box (height, width) in mm: 224 x 560 pixels of 1.2 mm, whose 16-pixel
#: patch grid is 14 x 35 like the reference model's.
DEFAULT_EXTENT_MM = (268.8, 672.0)
#: Grid dimensions are multiples of this (the ViT patch size).
DEFAULT_PATCH_SIZE = 16
METHODS = ("linear", "nearest")
#: Frames per sparse product in :meth:`ProjectionOperator.project` (measured on fs_LR:
#: 8 frames 0.2-0.4 s per 900 frames, 64 frames 0.6 s, the whole run 1.2 s with its reorder).
_PROJECT_FRAMES = 8
#: Bump when operator construction changes, to invalidate cached operators.
OPERATOR_VERSION = 1


def _space_digest(space: SurfaceSpace) -> list[str]:
    return [file_digest(f) for h in HEMIS for f in space_files(space, h)]


@dataclass(frozen=True, eq=False)
class FlatGrid:
    """A flat-map grid: template, pixel size, bounding box and valid-pixel mask.

    Pixel (row, col) has its centre at ``x = x_min + (col + 0.5) * pixel_size``,
    ``y = y_max - (row + 0.5) * pixel_size`` (row 0 is the top of the image).

    Attributes
    ----------
    template : FlatTemplate
    pixel_size : float
        Pixel edge in mm.
    bbox : (float, float, float, float)
        (x_min, x_max, y_min, y_max) in mm.
    shape : (int, int)
        (height, width).
    mask : ndarray, bool, shape (height, width)
        Valid pixels.
    pixel_hemi : ndarray, int8, shape (n_pixels,)
        0 for left, 1 for right, for each valid pixel in row-major order.
    pixel_face : ndarray, int64, shape (n_pixels,)
        Template face containing each valid pixel centre.
    pixel_bary : ndarray, float64, shape (n_pixels, 3)
        Barycentric weights of the pixel centre in that face.
    """

    template: FlatTemplate
    pixel_size: float
    bbox: tuple
    shape: tuple
    mask: np.ndarray = field(repr=False)
    pixel_hemi: np.ndarray = field(repr=False)
    pixel_face: np.ndarray = field(repr=False)
    pixel_bary: np.ndarray = field(repr=False)

    @property
    def n_pixels(self) -> int:
        """Number of valid pixels P."""
        return int(self.pixel_hemi.shape[0])

    @cached_property
    def pixel_index(self) -> np.ndarray:
        """(height, width) int64 image of each pixel's index in 0..P-1, -1 off the mask."""
        index = np.full(self.shape, -1, dtype=np.int64)
        index[self.mask] = np.arange(self.n_pixels)
        return index

    @cached_property
    def key(self) -> str:
        """Hash of everything the grid depends on (part of operator cache keys)."""
        return make_key(
            what="grid",
            template=self.template.fingerprint,
            template_space=_space_digest(self.template.space),
            pixel_size=self.pixel_size,
            bbox=[round(v, 9) for v in self.bbox],
            shape=list(self.shape),
        )

    def pixel_centers(self) -> np.ndarray:
        """Centres of the valid pixels in mm: (n_pixels, 2) float64 (x, y)."""
        rows, cols = np.nonzero(self.mask)
        x = self.bbox[0] + (cols + 0.5) * self.pixel_size
        y = self.bbox[3] - (rows + 0.5) * self.pixel_size
        return np.stack([x, y], axis=1)

    @cached_property
    def pixels(self) -> "PixelIndex":
        """The :class:`~flatprep.pixels.PixelIndex` of the mask (valid pixels <-> images)."""
        from .pixels import PixelIndex

        return PixelIndex(self.mask)

    def to_image(self, pixels: np.ndarray, *, fill: float = 0.0) -> np.ndarray:
        """Scatter valid-pixel values into images: (..., n_pixels) -> (..., height, width).

        See :meth:`flatprep.pixels.PixelIndex.to_image` (numpy arrays or torch tensors).
        """
        return self.pixels.to_image(pixels, fill=fill)

    def from_image(self, images: np.ndarray) -> np.ndarray:
        """Gather valid pixels: (..., height, width) -> (..., n_pixels) (new array)."""
        return self.pixels.to_values(images)

    def operator(self, space: str | SurfaceSpace, *, method: str = "linear") -> "ProjectionOperator":
        """The projection operator from ``space`` onto this grid (cached on disk)."""
        return build_operator(self, space, method=method)

    def describe(self) -> dict:
        """JSON-ready description, recorded in outputs."""
        return {
            "template": self.template.name,
            "template_space": self.template.space.name,
            "template_fingerprint": self.template.fingerprint,
            "pixel_size_mm": self.pixel_size,
            "bbox_mm": list(self.bbox),
            "shape": list(self.shape),
            "n_valid_pixels": self.n_pixels,
        }


def grid_from_description(description: dict) -> FlatGrid:
    """Rebuild the grid that :meth:`FlatGrid.describe` described (bundled template only)."""
    return make_grid(description["template"], pixel_size=description["pixel_size_mm"],
                     bbox=tuple(description["bbox_mm"]), patch_size=1)


def _grid_shape(extent_mm, pixel_size, patch_size) -> tuple[int, int]:
    return tuple(
        int(math.ceil(round(e / pixel_size, 6) / patch_size) * patch_size) for e in extent_mm
    )


def make_grid(
    template: str | FlatTemplate = "fsaverage",
    *,
    pixel_size: float = DEFAULT_PIXEL_SIZE,
    patch_size: int = DEFAULT_PATCH_SIZE,
    extent_mm: tuple[float, float] = DEFAULT_EXTENT_MM,
    bbox: tuple[float, float, float, float] | None = None,
) -> FlatGrid:
    """Build the flat-map grid.

    Parameters
    ----------
    template : str or FlatTemplate, default="fsaverage"
    pixel_size : float, default=1.2
        Pixel edge in mm.
    patch_size : int, default=16
        Height and width are rounded up to multiples of it; the box grows
        about its centre to fit.
    extent_mm : (float, float), default=(268.8, 672.0)
        Box (height, width) in mm, centred on the layout. The default gives the
        reference 224 x 560 grid at 1.2 mm and 112 x 288 at 2.4 mm.
    bbox : (x_min, x_max, y_min, y_max), optional
        Explicit box in mm; its size must be a whole number of pixels, and of
        patches.

    Returns
    -------
    FlatGrid
    """
    if not pixel_size > 0:
        raise FlatmapError(f"pixel_size must be > 0 mm, got {pixel_size}")
    if int(patch_size) != patch_size or patch_size < 1:
        raise FlatmapError(f"patch_size must be a positive integer, got {patch_size}")
    template = load_template(template)
    if bbox is None:
        x0, x1, y0, y1 = template.extent()
        height, width = _grid_shape(extent_mm, pixel_size, patch_size)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half_w, half_h = width * pixel_size / 2, height * pixel_size / 2
        bbox = (cx - half_w, cx + half_w, cy - half_h, cy + half_h)
    else:
        bbox = tuple(float(v) for v in bbox)
        sizes = (bbox[3] - bbox[2], bbox[1] - bbox[0])
        counts = [s / pixel_size for s in sizes]
        if any(c <= 0 or abs(c - round(c)) > 1e-6 or round(c) % patch_size for c in counts):
            raise FlatmapError(
                f"bbox {bbox} spans {counts[0]:g} x {counts[1]:g} pixels of {pixel_size} mm; "
                f"both must be whole multiples of patch_size={patch_size}"
            )
        height, width = (int(round(c)) for c in counts)
    arrays = _rasterize_template(template, pixel_size, bbox, (height, width))
    mask = np.zeros(height * width, dtype=bool)
    mask[arrays["pixel"]] = True
    grid = FlatGrid(
        template=template,
        pixel_size=float(pixel_size),
        bbox=tuple(float(v) for v in bbox),
        shape=(height, width),
        mask=mask.reshape(height, width),
        pixel_hemi=arrays["hemi"].astype(np.int8),
        pixel_face=arrays["face"],
        pixel_bary=arrays["bary"],
    )
    if grid.n_pixels == 0:
        raise FlatmapError(f"grid {grid.shape} with box {bbox} covers no cortex of template {template.name}")
    return grid


#: Rasterized templates of this process, by (fingerprint, space, pixel size, box, shape): a run's
#: projection and its figures each rebuild the grid, and rasterizing costs ~0.1 s.
_RASTERS: dict[tuple, dict[str, np.ndarray]] = {}


def _rasterize_template(template: FlatTemplate, pixel_size, bbox, shape) -> dict[str, np.ndarray]:
    """Valid pixels (row-major) with their hemisphere, face and weights (read-only arrays, memoised)."""
    key = (template.fingerprint, template.space.name, float(pixel_size), tuple(bbox), tuple(shape))
    if key not in _RASTERS:
        arrays = _rasterize(template, pixel_size, bbox, shape)
        for array in arrays.values():
            array.flags.writeable = False
        if len(_RASTERS) >= 8:
            _RASTERS.pop(next(iter(_RASTERS)))
        _RASTERS[key] = arrays
    return _RASTERS[key]


def _rasterize(template: FlatTemplate, pixel_size, bbox, shape) -> dict[str, np.ndarray]:
    parts = []
    for h_index, hemi in enumerate(HEMIS):
        flat = template.flats[hemi]
        cortex = load_cortex_mask(template.space, hemi)
        # Faces touching the medial wall carry no cortex signal: leave them out.
        faces = flat.faces[cortex[flat.faces].all(axis=1)]
        keep_face = np.flatnonzero(cortex[flat.faces].all(axis=1))
        pixel, loc = rasterize_triangles(
            Mesh(flat.vertices, faces), origin=(bbox[0], bbox[3]), pixel_size=pixel_size, shape=shape
        )
        parts.append((pixel, np.full(len(pixel), h_index), keep_face[loc.face], loc.bary))
    pixel = np.concatenate([p[0] for p in parts])
    order = np.argsort(pixel, kind="stable")
    pixel = pixel[order]
    if np.any(pixel[1:] == pixel[:-1]):
        raise FlatmapError(f"template {template.name}: the hemispheres overlap in the layout")
    return {
        "pixel": pixel,
        "hemi": np.concatenate([p[1] for p in parts])[order],
        "face": np.concatenate([p[2] for p in parts])[order],
        "bary": np.concatenate([p[3] for p in parts])[order],
    }


# --------------------------------------------------------------------------- operators


@dataclass(frozen=True, eq=False)
class ProjectionOperator:
    """Sparse map from a surface space onto a grid's valid pixels.

    Attributes
    ----------
    grid : FlatGrid
    space : SurfaceSpace
    method : str
        ``"linear"`` (barycentric) or ``"nearest"`` (nearest cortex vertex).
    matrix : scipy.sparse.csr_matrix, float64, shape (n_pixels, 2 * n_vertices)
        Rows sum to 1 and are non-negative; columns are left then right vertices.
    back_matrix : scipy.sparse.csr_matrix, float64, shape (2 * n_vertices, n_pixels)
        Bilinear sampling of the image at each vertex's flat position (QC);
        empty rows for vertices off the map (medial wall, cuts).
    key : str
        Cache key (hash of everything the operator depends on).
    """

    grid: FlatGrid
    space: SurfaceSpace
    method: str
    matrix: sp.csr_matrix = field(repr=False)
    back_matrix: sp.csr_matrix = field(repr=False)
    key: str

    @property
    def n_vertices(self) -> int:
        """Columns of the input: 2 * vertices per hemisphere."""
        return self.matrix.shape[1]

    @cached_property
    def _matrix32(self) -> sp.csr_matrix:
        return self.matrix.astype(np.float32)

    def project(self, data: np.ndarray) -> np.ndarray:
        """Project vertex data onto the grid's valid pixels.

        Parameters
        ----------
        data : array, shape (n_timepoints, 2 * n_vertices) or (2 * n_vertices,)
            Left-hemisphere vertices first. Not modified.

        Returns
        -------
        ndarray, shape (n_timepoints, n_pixels) or (n_pixels,)
            float32 for float32 (or float16) input, else float64; C order
            (frame after frame, as stored and read).
        """
        data = np.asarray(data)
        if data.ndim not in (1, 2) or data.shape[-1] != self.n_vertices:
            raise FlatmapError(
                f"{self.space.name} data must have shape (n_timepoints, {self.n_vertices:,}) or "
                f"({self.n_vertices:,},) (left then right hemisphere), got {data.shape}"
            )
        single = data.dtype in (np.float32, np.float16)
        matrix = self._matrix32 if single else self.matrix
        dtype = np.float32 if single else np.float64
        if data.ndim == 1:
            return matrix @ data.astype(dtype, copy=False)
        # A few frames at a time, (P, V) @ (V, b) -> (P, b), written straight into
        # frame order: the transposes stay in cache, where one (P, T) product for
        # the whole run left a Fortran-ordered result that cost more to reorder
        # than to compute.
        out = np.empty((data.shape[0], self.grid.n_pixels), dtype=matrix.dtype)
        for start in range(0, data.shape[0], _PROJECT_FRAMES):
            frames = slice(start, start + _PROJECT_FRAMES)
            out[frames] = (matrix @ data[frames].astype(dtype, copy=False).T).T
        return out

    def project_float16(self, data: np.ndarray, *, source: str = "", block: int = 16) -> np.ndarray:
        """:meth:`project` into the stored form: (T, 2 * n_vertices) -> (T, n_pixels) float16, C order.

        The same values as ``to_float16(op.project(data))`` (:func:`flatprep.h5.to_float16`), without a
        (T, n_pixels) float32 temporary (see :meth:`project_float16_blocks`).

        Raises
        ------
        RunFileError
            A value beyond the float16 range (the message names ``source``).
        """
        data = np.asarray(data)
        out = np.empty((len(data), self.grid.n_pixels), np.float16)
        start = 0
        for piece in self.project_float16_blocks(data, source=source, block=block):
            out[start : start + len(piece)] = piece
            start += len(piece)
        return out

    def project_float16_blocks(self, data: np.ndarray, *, source: str = "", block: int = 16):
        """The rows of :meth:`project_float16`, ``block`` frames at a time: (<= block, n_pixels) float16 arrays.

        Each block is projected, checked and cast while it is in cache; a
        writer can store the run block by block without ever holding it whole.
        """
        from .h5 import to_float16

        data = np.asarray(data)
        if data.ndim != 2:
            raise FlatmapError(f"{source}: expected (n_timepoints, {self.n_vertices:,}) data, got {data.shape}")
        for start in range(0, data.shape[0], block):
            projected = self.project(data[start : start + block])  # (block, n_pixels), float32 or float64
            yield to_float16(projected, source=source)

    def backproject(self, pixels: np.ndarray) -> np.ndarray:
        """Sample pixel data back onto vertices (for QC).

        Parameters
        ----------
        pixels : array, shape (n_timepoints, n_pixels) or (n_pixels,)

        Returns
        -------
        ndarray, float64, shape (n_timepoints, 2 * n_vertices) or (2 * n_vertices,)
            NaN at vertices that are off the map.
        """
        pixels = np.asarray(pixels, dtype=np.float64)
        if pixels.shape[-1] != self.grid.n_pixels:
            raise FlatmapError(
                f"expected pixel data with last axis {self.grid.n_pixels:,}, got shape {pixels.shape}"
            )
        on_map = np.diff(self.back_matrix.indptr) > 0
        out = (self.back_matrix @ pixels.T).T if pixels.ndim == 2 else self.back_matrix @ pixels
        out = np.array(out, dtype=np.float64)
        out[..., ~on_map] = np.nan
        return out


def build_operator(
    grid: FlatGrid, space: str | SurfaceSpace, *, method: str = "linear"
) -> ProjectionOperator:
    """The operator from ``space`` onto ``grid``, loaded from cache or built."""
    space = get_space(space)
    if method not in METHODS:
        raise FlatmapError(f"method must be one of {METHODS}, got {method!r}")
    if space.family == "fsnative":
        raise FlatmapError("fsnative data need the subject's registration spheres: "
                           "use flatprep.fsnative.build_native_operator(grid, (lh_sphere, rh_sphere))")
    key = make_key(
        what="operator", version=OPERATOR_VERSION, grid=grid.key, space=space.name,
        space_files=_space_digest(space), method=method,
    )
    n_pixels, n_columns = grid.n_pixels, 2 * space.n_vertices

    def build():
        logger.info("building the %s operator at %g mm pixels (first use; cached for later runs)", space.name,
                    grid.pixel_size)
        forward = _forward_triplets(grid, space, method)
        backward = _backward_triplets(grid, space)
        return {f"forward_{k}": v for k, v in forward.items()} | {f"back_{k}": v for k, v in backward.items()}

    arrays = cached_arrays("operators", key, build)
    matrix = sp.csr_matrix(
        (arrays["forward_weight"], (arrays["forward_row"], arrays["forward_col"])), shape=(n_pixels, n_columns)
    )
    back = sp.csr_matrix(
        (arrays["back_weight"], (arrays["back_row"], arrays["back_col"])), shape=(n_columns, n_pixels)
    )
    return ProjectionOperator(grid, space, method, matrix, back, key)


def _pixel_sphere_points(grid: FlatGrid, hemi_index: int) -> np.ndarray:
    """Valid pixels of one hemisphere placed on the template's sphere: (n, 3)."""
    hemi = HEMIS[hemi_index]
    select = grid.pixel_hemi == hemi_index
    sphere = load_sphere(grid.template.space, hemi).vertices
    faces = grid.template.flats[hemi].faces[grid.pixel_face[select]]
    return normalize_rows(np.einsum("nk,nkd->nd", grid.pixel_bary[select], sphere[faces]))


def _forward_triplets(grid: FlatGrid, space: SurfaceSpace, method: str) -> dict[str, np.ndarray]:
    """(row, col, weight) of the forward operator, rows sum to 1."""
    parts = []
    for h_index, hemi in enumerate(HEMIS):
        pixel_rows = np.flatnonzero(grid.pixel_hemi == h_index)
        cortex = load_cortex_mask(space, hemi)
        if space == grid.template.space:
            corners = grid.template.flats[hemi].faces[grid.pixel_face[pixel_rows]]
            bary = grid.pixel_bary[pixel_rows]
        else:
            points = map_sphere_points(
                _pixel_sphere_points(grid, h_index), grid.template.space.family, space.family, hemi
            )
            loc = locate_on_sphere(points, load_sphere(space, hemi))
            corners, bary = load_sphere(space, hemi).faces[loc.face], loc.bary

        def nearest(lost, hemi=hemi, h_index=h_index):
            points = map_sphere_points(_pixel_sphere_points(grid, h_index)[lost], grid.template.space.family,
                                       space.family, hemi)
            return nearest_cortex(points, load_sphere(space, hemi).vertices, load_cortex_mask(space, hemi))

        corners, bary = cortex_weights(corners, bary, cortex, method=method, nearest=nearest)
        parts.append(_row_triplets(pixel_rows, corners, bary, h_index * space.n_vertices))
    return _join_triplets(parts)


def cortex_weights(corners: np.ndarray, bary: np.ndarray, cortex: np.ndarray, *, method: str,
                   nearest) -> tuple[np.ndarray, np.ndarray]:
    """Operator rows from containing faces: medial wall dropped, rows renormalised.

    Parameters
    ----------
    corners : ndarray, int64, shape (n_pixels, 3)
        Vertices of the face containing each pixel.
    bary : ndarray, float64, shape (n_pixels, 3)
        Barycentric weights in that face.
    cortex : ndarray, bool, shape (n_vertices,)
    method : {"linear", "nearest"}
    nearest : callable
        ``nearest(lost)`` with a boolean (n_pixels,) mask returns the nearest cortex
        vertex (int64, one per lost pixel) of pixels whose face has no cortex vertex.

    Returns
    -------
    corners, bary : new arrays of the same shapes; rows of ``bary`` sum to 1.
    """
    # Medial-wall vertices carry no signal: renormalise without them.
    bary = np.where(cortex[corners], bary, 0.0)
    if method == "nearest":
        best = bary.argmax(axis=1)
        bary = np.where(np.arange(3) == best[:, None], (bary.max(axis=1) > 0)[:, None], 0.0)
    total = bary.sum(axis=1)
    lost = total <= 0
    corners = corners.copy()
    if lost.any():
        # No cortex vertex in the containing face: take the nearest cortex vertex.
        corners[lost] = np.asarray(nearest(lost))[:, None]
        bary[lost] = [1.0, 0.0, 0.0]
        total[lost] = 1.0
    return corners, bary / total[:, None]


def _row_triplets(pixel_rows, corners, bary, offset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nonzero = bary > 0
    return np.repeat(pixel_rows, 3).reshape(-1, 3)[nonzero], (corners + offset)[nonzero], bary[nonzero]


def _join_triplets(parts) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(("row", "col", "weight"))}


def nearest_cortex(points: np.ndarray, sphere_vertices: np.ndarray, cortex: np.ndarray) -> np.ndarray:
    """Index (int64, (n_points,)) of the cortex vertex nearest to each sphere point."""
    from scipy.spatial import cKDTree

    index = np.flatnonzero(cortex)
    _, nearest = cKDTree(normalize_rows(sphere_vertices[index])).query(normalize_rows(points))
    return index[nearest]


def flat_positions(grid: FlatGrid, points: np.ndarray, family: str, hemi: str) -> np.ndarray:
    """Flat (x, y) in mm of sphere points of a sphere family; NaN off the map. (n_points, 2)"""
    template = grid.template
    points = map_sphere_points(points, family, template.space.family, hemi)
    sphere = load_sphere(template.space, hemi)
    loc: Location = locate_on_sphere(points, sphere)
    return np.einsum("nk,nkd->nd", loc.bary, template.flats[hemi].vertices[sphere.faces[loc.face]])  # NaN where cut


def _vertex_flat_positions(grid: FlatGrid, space: SurfaceSpace, hemi: str) -> np.ndarray:
    """Flat (x, y) in mm of each vertex of ``space``; NaN off the map. (n_vertices, 2)"""
    if space == grid.template.space:
        return grid.template.flats[hemi].vertices.copy()
    return flat_positions(grid, load_sphere(space, hemi).vertices, space.family, hemi)


def _backward_triplets(grid: FlatGrid, space: SurfaceSpace) -> dict[str, np.ndarray]:
    """(row, col, weight) of the QC back-projection: bilinear over valid pixels."""
    return _join_triplets([
        bilinear_triplets(grid, h_index, _vertex_flat_positions(grid, space, hemi), load_cortex_mask(space, hemi),
                          offset=h_index * space.n_vertices)
        for h_index, hemi in enumerate(HEMIS)
    ])


def bilinear_triplets(grid: FlatGrid, h_index: int, xy: np.ndarray, cortex: np.ndarray, *,
                      offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Back-projection rows of one hemisphere: bilinear weights of the valid pixels around each vertex.

    Parameters
    ----------
    grid : FlatGrid
    h_index : {0, 1}
    xy : ndarray, float64, shape (n_vertices, 2)
        Flat position of each vertex (NaN off the map).
    cortex : ndarray, bool, shape (n_vertices,)
    offset : int
        Column offset of this hemisphere's first vertex.

    Returns
    -------
    rows, cols, weights : 1-D arrays (vertex row + offset, pixel column, weight)
    """
    height, width = grid.shape
    index = grid.pixel_index
    vertex = np.flatnonzero(np.all(np.isfinite(xy), axis=1) & cortex)
    col_f = (xy[vertex, 0] - grid.bbox[0]) / grid.pixel_size - 0.5
    row_f = (grid.bbox[3] - xy[vertex, 1]) / grid.pixel_size - 0.5
    c0, r0 = np.floor(col_f).astype(np.int64), np.floor(row_f).astype(np.int64)
    fc, fr = col_f - c0, row_f - r0
    nb_pixel, nb_weight = [], []
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        p = np.where(inside, index[np.clip(r, 0, height - 1), np.clip(c, 0, width - 1)], -1)
        same_hemi = (p >= 0) & (grid.pixel_hemi[np.maximum(p, 0)] == h_index)
        nb_pixel.append(np.where(same_hemi, p, -1))
        nb_weight.append(np.where(same_hemi, w, 0.0))
    nb_pixel, nb_weight = np.stack(nb_pixel, 1), np.stack(nb_weight, 1)
    total = nb_weight.sum(axis=1)
    keep = total > 1e-9
    nb_weight = nb_weight[keep] / total[keep, None]
    nb_pixel = nb_pixel[keep]
    nonzero = nb_weight > 0
    return (np.repeat(vertex[keep] + offset, 4).reshape(-1, 4)[nonzero], nb_pixel[nonzero], nb_weight[nonzero])
