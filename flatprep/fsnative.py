"""fsnative input: a subject's own surface mesh, reached through its registration sphere.

fMRIPrep's default surface output (``space-fsnative``) samples BOLD on the
subject's own FreeSurfer mesh, whose vertex count differs per subject and
hemisphere. FreeSurfer registers that mesh to fsaverage: the registration
sphere (fMRIPrep ``anat/sub-<label>_hemi-<L|R>_[space-fsaverage_]desc-reg_sphere.surf.gii``,
or FreeSurfer's ``surf/<lh|rh>.sphere.reg``) places every subject vertex on
the fsaverage sphere. Each grid pixel's point on the fsaverage sphere is
located in that registered mesh, giving barycentric weights on the subject's
vertices: one sparse operator per subject, built like
:func:`flatprep.flatmap.build_operator` and cached under the content hash of
the sphere (and cortex mask) files::

    op = build_native_operator(grid, (lh_sphere, rh_sphere), cortex_masks=(lh_mask, rh_mask))
    pixels = op.project(bold)               # (T, n_left + n_right) -> (T, P)

Data layout: (n_timepoints, n_left + n_right), left hemisphere first; the two
hemispheres may have different vertex counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .cache import cached_arrays, file_digest, make_key
from .exceptions import FlatmapError, SurfaceFileError
from .flatmap import (
    METHODS,
    OPERATOR_VERSION,
    FlatGrid,
    ProjectionOperator,
    _join_triplets,
    _pixel_sphere_points,
    _row_triplets,
    bilinear_triplets,
    cortex_weights,
    flat_positions,
    nearest_cortex,
)
from .geometry import Mesh, locate_on_sphere, normalize_rows
from .gifti import read_gifti_arrays, read_gifti_mesh
from .spaces import FSNATIVE, HEMIS, load_cortex_mask, load_sphere, map_sphere_points

#: Bump when the fsnative operator construction changes.
NATIVE_OPERATOR_VERSION = 1
SPHERE_HINT = ("fsnative runs need the subject's registration sphere to fsaverage (fMRIPrep "
               "anat/sub-<label>_hemi-<L|R>_[space-fsaverage_]desc-reg_sphere.surf.gii, "
               "or FreeSurfer surf/<lh|rh>.sphere.reg)")


def _is_gifti(path: Path) -> bool:
    return path.name.endswith(".gii") or path.name.endswith(".gii.gz")


def read_sphere(path: str | Path) -> Mesh:
    """A registration sphere (GIFTI or FreeSurfer geometry) with unit-length vertices.

    Returns
    -------
    Mesh
        vertices float64 (n_vertices, 3) on the unit sphere, faces int64 (n_faces, 3).

    Raises
    ------
    SurfaceFileError
        The file is missing (naming the file and what fsnative runs need) or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise SurfaceFileError(f"{path}: registration sphere not found; {SPHERE_HINT}")
    if _is_gifti(path):
        mesh = read_gifti_mesh(path)
    else:
        import nibabel as nib

        try:
            vertices, faces = nib.freesurfer.read_geometry(str(path))
        except Exception as err:  # nibabel raises several types for corrupt files
            raise SurfaceFileError(f"{path}: not a readable FreeSurfer surface ({type(err).__name__}: {err})") from err
        mesh = Mesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int64))
    radius = np.linalg.norm(mesh.vertices, axis=1)
    if len(radius) < 4 or radius.min() <= 0 or radius.max() > 1.05 * radius.min():
        raise SurfaceFileError(f"{path}: not a sphere (vertex radii {radius.min():.3g} to {radius.max():.3g}); "
                               f"{SPHERE_HINT}")
    return Mesh(normalize_rows(mesh.vertices), mesh.faces)


def read_native_cortex(path: str | Path, n_vertices: int) -> np.ndarray:
    """A subject's cortex mask: GIFTI (``desc-cortex_mask.label.gii``, value > 0) or FreeSurfer ``?h.cortex.label``.

    Returns
    -------
    ndarray, bool, shape (n_vertices,)
    """
    path = Path(path)
    if _is_gifti(path):
        values = np.asarray(read_gifti_arrays(path)[0]).ravel()
        if len(values) != n_vertices:
            raise SurfaceFileError(f"{path}: cortex mask has {len(values):,} values but the registration sphere "
                                   f"has {n_vertices:,} vertices; use the files of one subject")
        return values > 0
    import nibabel as nib

    try:
        index = np.asarray(nib.freesurfer.read_label(str(path)), np.int64)
    except Exception as err:
        raise SurfaceFileError(f"{path}: not a readable FreeSurfer label ({type(err).__name__}: {err})") from err
    if index.size and (index.min() < 0 or index.max() >= n_vertices):
        raise SurfaceFileError(f"{path}: label lists vertex {index.max()} but the sphere has {n_vertices:,}")
    mask = np.zeros(n_vertices, bool)
    mask[index] = True
    return mask


def fsaverage_cortex_on(sphere: Mesh, hemi: str) -> np.ndarray:
    """The fsaverage cortex mask carried to a registered subject mesh: (n_vertices,) bool.

    The medial wall is the same definition as for the standard spaces: each subject
    vertex interpolates fsaverage's mask at its registered position (>= 0.5 is cortex).
    """
    fsaverage = load_sphere("fsaverage", hemi)
    loc = locate_on_sphere(sphere.vertices, fsaverage)
    inside = (load_cortex_mask("fsaverage", hemi)[fsaverage.faces[loc.face]] * loc.bary).sum(axis=1)
    return inside >= 0.5


def _native_key(grid: FlatGrid, files: list[Path], method: str) -> str:
    return make_key(what="fsnative_operator", version=OPERATOR_VERSION, native_version=NATIVE_OPERATOR_VERSION,
                    grid=grid.key, files=[file_digest(f) if f else None for f in files], method=method)


def build_native_operator(
    grid: FlatGrid, spheres, *, cortex_masks=None, method: str = "linear"
) -> ProjectionOperator:
    """The operator from a subject's fsnative mesh onto ``grid``, loaded from cache or built.

    Parameters
    ----------
    grid : FlatGrid
    spheres : (path, path)
        Left and right registration spheres (GIFTI or FreeSurfer ``?h.sphere.reg``).
    cortex_masks : (path or None, path or None), optional
        The subject's cortex masks; default: fsaverage's medial wall carried
        through the registration.
    method : {"linear", "nearest"}, default="linear"

    Returns
    -------
    ProjectionOperator
        ``space`` is :data:`flatprep.spaces.FSNATIVE`; ``matrix`` has shape
        (n_pixels, n_left + n_right).
    """
    if method not in METHODS:
        raise FlatmapError(f"method must be one of {METHODS}, got {method!r}")
    spheres = [Path(p) for p in spheres]
    if len(spheres) != 2:
        raise FlatmapError(f"expected a left and a right registration sphere, got {[str(p) for p in spheres]}")
    masks = [Path(p) if p else None for p in (cortex_masks or (None, None))]
    meshes = [read_sphere(p) for p in spheres]  # validates (and names a missing sphere) before the cache
    counts = [len(m.vertices) for m in meshes]
    key = _native_key(grid, spheres + masks, method)

    def build():
        cortex = [read_native_cortex(m, n) if m else fsaverage_cortex_on(mesh, h)
                  for m, n, mesh, h in zip(masks, counts, meshes, HEMIS)]
        forward, backward = [], []
        for h_index, hemi in enumerate(HEMIS):
            offset = counts[0] * h_index
            forward.append(_native_rows(grid, h_index, meshes[h_index], cortex[h_index], method, offset))
            xy = flat_positions(grid, meshes[h_index].vertices, "fsaverage", hemi)
            backward.append(bilinear_triplets(grid, h_index, xy, cortex[h_index], offset=offset))
        forward, backward = _join_triplets(forward), _join_triplets(backward)
        return {f"forward_{k}": v for k, v in forward.items()} | {f"back_{k}": v for k, v in backward.items()}

    arrays = cached_arrays("operators", key, build)
    n_pixels, n_columns = grid.n_pixels, sum(counts)
    matrix = sp.csr_matrix((arrays["forward_weight"], (arrays["forward_row"], arrays["forward_col"])),
                           shape=(n_pixels, n_columns))
    back = sp.csr_matrix((arrays["back_weight"], (arrays["back_row"], arrays["back_col"])),
                         shape=(n_columns, n_pixels))
    return ProjectionOperator(grid, FSNATIVE, method, matrix, back, key)


def _native_rows(grid: FlatGrid, h_index: int, sphere: Mesh, cortex: np.ndarray, method: str, offset: int):
    """Forward (row, col, weight) of one hemisphere: pixels located in the registered subject mesh."""
    hemi = HEMIS[h_index]
    pixel_rows = np.flatnonzero(grid.pixel_hemi == h_index)
    points = map_sphere_points(_pixel_sphere_points(grid, h_index), grid.template.space.family, "fsaverage", hemi)
    loc = locate_on_sphere(points, sphere)
    corners, bary = cortex_weights(sphere.faces[loc.face], loc.bary, cortex, method=method,
                                   nearest=lambda lost: nearest_cortex(points[lost], sphere.vertices, cortex))
    return _row_triplets(pixel_rows, corners, bary, offset)


def _first(paths) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _freesurfer_dirs(subject: str, roots) -> list[Path]:
    """Where a subject's FreeSurfer folder may be, relative to derivative folders."""
    dirs = []
    for root in (Path(r) for r in roots):
        dirs += [root / f"sub-{subject}", root / "sourcedata" / "freesurfer" / f"sub-{subject}",
                 root.parent / "freesurfer" / f"sub-{subject}"]
    return dirs


def find_native_surfaces(subject: str, roots, *, session: str | None = None) -> tuple[str, str, str, str]:
    """The registration spheres and cortex masks of a subject, searched in derivative folders.

    Looked for, per hemisphere, in order: fMRIPrep's
    ``[ses-Y/]anat/sub-X[_ses-Y]_hemi-H_space-fsaverage_desc-reg_sphere.surf.gii`` (>= 23.2),
    ``..._hemi-H_desc-reg_sphere.surf.gii`` (20.x-23.1), then FreeSurfer's ``surf/?h.sphere.reg`` in
    ``sub-X/``, ``sourcedata/freesurfer/sub-X/`` or a sibling ``freesurfer/sub-X/`` folder. Cortex masks:
    ``..._hemi-H_desc-cortex_mask.label.gii`` or FreeSurfer ``label/?h.cortex.label``.

    Parameters
    ----------
    subject : str
        Label without ``sub-``.
    roots : sequence of path
        Derivative folders (fMRIPrep's first).
    session : str, optional

    Returns
    -------
    (sphere_L, sphere_R, mask_L, mask_R) : tuple of str
        A missing sphere is given as the path where fMRIPrep would write it
        (so the run's error names it); a missing mask as "".
    """
    roots = [Path(r) for r in roots]
    anat = [r / f"sub-{subject}" / f"ses-{session}" / "anat" for r in roots if session] + \
        [r / f"sub-{subject}" / "anat" for r in roots]
    freesurfer = _freesurfer_dirs(subject, roots)
    spheres, masks = [], []
    for hemi, fs in (("L", "lh"), ("R", "rh")):
        globs = (f"sub-{subject}_*hemi-{hemi}_space-fsaverage_desc-reg_sphere.surf.gii",
                 f"sub-{subject}_*hemi-{hemi}_desc-reg_sphere.surf.gii")
        candidates = [p for d in anat for glob in globs for p in sorted(d.glob(glob))]
        candidates += [d / "surf" / f"{fs}.sphere.reg" for d in freesurfer]
        expected = anat[-1] / f"sub-{subject}_hemi-{hemi}_space-fsaverage_desc-reg_sphere.surf.gii"
        spheres.append(str(_first(candidates) or expected))
        mask = _first([p for d in anat for p in sorted(d.glob(f"sub-{subject}_*hemi-{hemi}_desc-cortex_mask.*.gii"))]
                      + [d / "label" / f"{fs}.cortex.label" for d in freesurfer])
        masks.append(str(mask) if mask else "")
    return (*spheres, *masks)
