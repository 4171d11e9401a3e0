"""Low-level GIFTI reading: data arrays, file metadata and surface meshes.

Shared by :mod:`flatprep.spaces` (template spheres and ROIs) and
:mod:`flatprep.io` (BOLD time series); every error names the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .exceptions import SurfaceFileError
from .geometry import Mesh


def read_gifti(path: str | Path) -> tuple[list[np.ndarray], dict[str, str]]:
    """The data arrays and the file-level metadata of a GIFTI file, parsed once.

    Errors name the file.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise SurfaceFileError(f"{path}: no such file")
    try:
        image = nib.load(str(path))
        arrays = [np.asarray(d.data) for d in image.darrays]
        meta = dict(image.meta)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise SurfaceFileError(f"{path}: not a readable GIFTI file ({type(err).__name__}: {err})") from err
    if not arrays:
        raise SurfaceFileError(f"{path}: GIFTI file holds no data arrays")
    return arrays, meta


def read_gifti_arrays(path: str | Path) -> list[np.ndarray]:
    """The data arrays of a GIFTI file, with errors that name the file."""
    return read_gifti(path)[0]


def read_gifti_mesh(path: str | Path) -> Mesh:
    """A GIFTI surface as a Mesh (vertices float64, faces int64)."""
    arrays = read_gifti_arrays(path)
    points = [a for a in arrays if a.ndim == 2 and a.shape[1] == 3 and a.dtype.kind == "f"]
    triangles = [a for a in arrays if a.ndim == 2 and a.shape[1] == 3 and a.dtype.kind in "iu"]
    if not points or not triangles:
        raise SurfaceFileError(
            f"{path}: expected a surface (a float (n, 3) pointset and an int (n, 3) triangle array), "
            f"found arrays of shapes {[a.shape for a in arrays]}"
        )
    vertices, faces = points[0].astype(np.float64), triangles[0].astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise SurfaceFileError(
            f"{path}: triangles index vertices 0..{faces.max()} but the surface has {len(vertices)}"
        )
    return Mesh(vertices, faces)
