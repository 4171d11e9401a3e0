"""Flat templates: the 2D layout that every input space is projected onto.

A template is one flat mesh per hemisphere whose vertices are those of a
standard surface space, laid out side by side (left hemisphere on the left)
with a fixed gap. Three sources:

* :func:`load_template` ``("fsaverage")``: the bundled fsaverage flat layout
  (nilearn's fsaverage5 flat mesh, pycortex's fsaverage cuts);
* :func:`template_from_gifti`: a pair of GIFTI flat surfaces;
* :func:`template_from_pycortex`: a subject of a pycortex filestore (for
  example a user's full-resolution ``fsaverage``).

Vertices that belong to no face (the cuts; in nilearn's mesh they also have
z != 0) have no flat position and are stored as NaN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import array_digest
from .exceptions import FlatmapError
from .geometry import Mesh
from .gifti import read_gifti_mesh
from .spaces import HEMIS, SurfaceSpace, identify_space, nilearn_fsaverage5_file

logger = logging.getLogger(__name__)

#: Gap between the hemispheres in the layout, in mm.
DEFAULT_GAP_MM = 8.0


@dataclass(frozen=True, eq=False)
class FlatTemplate:
    """Both hemispheres' flat meshes in one layout.

    :func:`load_template` returns the bundled layouts or one from GIFTI/pycortex
    files; :func:`flatprep.flatmap.make_grid` rasterizes it into pixels.

    Attributes
    ----------
    name : str
        Identifier recorded in outputs (e.g. ``"fsaverage"``).
    space : SurfaceSpace
        Space of the template's vertices (their sphere gives every flat pixel
        a position on the cortex).
    flats : dict
        ``{"L": Mesh, "R": Mesh}``; vertices of shape (n_vertices, 2) in mm in
        the shared layout (NaN for cut vertices), faces of shape (n_faces, 3).
    fingerprint : str
        SHA-256 of the layout; part of every cache key built on it.
    """

    name: str
    space: SurfaceSpace
    flats: dict
    fingerprint: str

    def extent(self) -> tuple[float, float, float, float]:
        """Bounding box of the layout: (x_min, x_max, y_min, y_max) in mm."""
        xy = np.concatenate([self.flats[h].vertices for h in HEMIS])
        lo, hi = np.nanmin(xy, axis=0), np.nanmax(xy, axis=0)
        return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def _flat_xy(mesh: Mesh, source: str) -> Mesh:
    """Keep x, y of a flat mesh; vertices used by no face become NaN."""
    if len(mesh.faces) == 0:
        raise FlatmapError(f"{source}: flat surface has no triangles")
    used = np.zeros(len(mesh.vertices), dtype=bool)
    used[mesh.faces.ravel()] = True
    xy = np.asarray(mesh.vertices[:, :2], dtype=np.float64).copy()
    xy[~used] = np.nan
    if not np.all(np.isfinite(xy[used])):
        raise FlatmapError(f"{source}: flat surface has non-finite coordinates on its triangles")
    return Mesh(xy, np.asarray(mesh.faces, dtype=np.int64))


def build_template(
    name: str, left: Mesh, right: Mesh, *, gap_mm: float = DEFAULT_GAP_MM, source: str = ""
) -> FlatTemplate:
    """Lay two flat hemisphere meshes side by side.

    The left hemisphere is shifted so its right edge is at ``-gap_mm / 2`` and
    the right hemisphere so its left edge is at ``+gap_mm / 2``; both are then
    shifted together so the layout is centred on y = 0.

    Parameters
    ----------
    name : str
    left, right : Mesh
        Flat meshes, vertices of shape (n_vertices, 2 or 3) (z is ignored).
    gap_mm : float, default=8.0
    source : str
        Where the meshes came from, for error messages.
    """
    if gap_mm < 0:
        raise FlatmapError(f"gap_mm must be >= 0, got {gap_mm}")
    label = source or name
    if len(left.vertices) != len(right.vertices):
        raise FlatmapError(
            f"{label}: left flat surface has {len(left.vertices):,} vertices but the right has "
            f"{len(right.vertices):,}; both hemispheres must be of one surface space"
        )
    space = identify_space(len(left.vertices), source=label)
    lh, rh = _flat_xy(left, f"{label} (left)"), _flat_xy(right, f"{label} (right)")
    lh_xy = lh.vertices - [np.nanmax(lh.vertices[:, 0]) + gap_mm / 2, 0.0]
    rh_xy = rh.vertices - [np.nanmin(rh.vertices[:, 0]) - gap_mm / 2, 0.0]
    y_lo = min(np.nanmin(lh_xy[:, 1]), np.nanmin(rh_xy[:, 1]))
    y_hi = max(np.nanmax(lh_xy[:, 1]), np.nanmax(rh_xy[:, 1]))
    shift = np.array([0.0, (y_lo + y_hi) / 2])
    flats = {"L": Mesh(lh_xy - shift, lh.faces), "R": Mesh(rh_xy - shift, rh.faces)}
    fingerprint = array_digest(
        flats["L"].vertices, flats["L"].faces, flats["R"].vertices, flats["R"].faces
    )
    return FlatTemplate(name, space, flats, fingerprint)


def template_from_gifti(
    left: str | Path, right: str | Path, *, name: str | None = None, gap_mm: float = DEFAULT_GAP_MM
) -> FlatTemplate:
    """A template from a pair of GIFTI flat surfaces (vertices of a standard space)."""
    meshes = [read_gifti_mesh(p) for p in (left, right)]
    return build_template(name or Path(left).name, *meshes, gap_mm=gap_mm, source=f"{left} / {right}")


def template_from_pycortex(
    subject: str, filestore: str | Path, *, gap_mm: float = DEFAULT_GAP_MM
) -> FlatTemplate:
    """A template from a pycortex subject's flat surfaces.

    Parameters
    ----------
    subject : str
        Subject in the filestore, whose surfaces must be on a standard space
        (e.g. pycortex's ``fsaverage``).
    filestore : path
        pycortex filestore folder, passed explicitly so no user configuration
        is consulted for it.
    """
    filestore = Path(filestore)
    folder = filestore / subject / "surfaces"
    if not folder.is_dir():
        raise FlatmapError(f"{folder}: no pycortex subject {subject!r} in filestore {filestore}")
    from cortex.database import Database  # heavy, and writes its config on first import

    database = Database(str(filestore))
    meshes = []
    for hemi in ("lh", "rh"):
        try:
            points, polys = database.get_surf(subject, "flat", hemi)
        except Exception as err:
            raise FlatmapError(
                f"{folder}: cannot read flat surface of hemisphere {hemi} ({type(err).__name__}: {err})"
            ) from err
        meshes.append(Mesh(np.asarray(points, dtype=np.float64), np.asarray(polys, dtype=np.int64)))
    return build_template(
        f"pycortex:{subject}", *meshes, gap_mm=gap_mm, source=f"pycortex subject {subject} ({filestore})"
    )


def load_template(name: str | FlatTemplate = "fsaverage", *, gap_mm: float = DEFAULT_GAP_MM) -> FlatTemplate:
    """The bundled template (``"fsaverage"``), or pass a FlatTemplate through."""
    if isinstance(name, FlatTemplate):
        return name
    if name != "fsaverage":
        raise FlatmapError(
            f"unknown bundled flat template {name!r}; the bundled one is 'fsaverage' "
            "(use template_from_pycortex or template_from_gifti for others)"
        )
    meshes = [read_gifti_mesh(nilearn_fsaverage5_file("flat", h)) for h in HEMIS]
    return build_template("fsaverage", *meshes, gap_mm=gap_mm, source="nilearn fsaverage5 flat")
