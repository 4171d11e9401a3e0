"""Volumetric sample runs: fMRIPrep-style ``space-MNI152NLin6Asym_res-2`` BOLD and brain mask.

The same signal model as the surface runs: each voxel of the cortical ribbon
(voxel centre within :data:`RIBBON_MM` of the HCP S1200 mid-thickness surface,
the surface flatprep samples volumes with) takes the embedding point of its
nearest fs_LR 32k vertex, so its networks, task maps and drifts are those of
that vertex, with its own thermal noise. The brain mask is those voxels; the
rest of the 2 mm MNI grid is 0.
"""

from __future__ import annotations

import functools
import gzip
import io

import numpy as np

from ..spaces import HEMIS

#: The volume space the generator writes, as fMRIPrep names it.
VOLUME_SPACE = "MNI152NLin6Asym"
#: fMRIPrep's ``res-2`` grid of MNI152NLin6Asym (91 x 109 x 91, 2 mm).
AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
SHAPE = (91, 109, 91)
#: Voxels whose centre lies this close to the mid-thickness surface carry signal.
RIBBON_MM = 2.5


@functools.lru_cache(maxsize=1)
def ribbon_voxels() -> tuple[np.ndarray, np.ndarray]:
    """Fortran indices of the ribbon voxels (n,) int64 and their nearest fs_LR vertex (n,) int64 (L then R)."""
    from scipy.spatial import cKDTree

    from ..volume import load_ribbon_surfaces

    middle = np.concatenate([(w.vertices + p.vertices) / 2 for w, p in map(load_ribbon_surfaces, HEMIS)])
    ijk = np.column_stack(np.unravel_index(np.arange(int(np.prod(SHAPE))), SHAPE, order="F"))
    distance, nearest = cKDTree(middle).query(ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3], distance_upper_bound=RIBBON_MM)
    inside = np.isfinite(distance)
    return np.flatnonzero(inside), nearest[inside]


def _nifti_gz(data: np.ndarray, *, tr: float | None = None) -> bytes:
    """A gzipped NIfTI-1 image (float32 or uint8) of ``data`` (x, y, z[, t]) on the 2 mm grid."""
    import nibabel as nib

    image = nib.Nifti1Image(data, AFFINE)
    image.header.set_qform(AFFINE, code=4)  # 4 = MNI152
    image.header.set_sform(AFFINE, code=4)
    if tr is not None:
        image.header.set_zooms((2.0, 2.0, 2.0, float(tr)))
        image.header.set_xyzt_units("mm", "sec")
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1, mtime=0) as handle:
        handle.write(image.to_bytes())
    return buffer.getvalue()


def volume_bold_bytes(frames: np.ndarray, *, tr: float) -> bytes:
    """``*_desc-preproc_bold.nii.gz`` of (n_frames, n_ribbon_voxels) frames (float32)."""
    index, _ = ribbon_voxels()
    volume = np.zeros((int(np.prod(SHAPE)), len(frames)), dtype=np.float32)
    volume[index] = frames.T
    return _nifti_gz(volume.reshape(SHAPE + (len(frames),), order="F"), tr=tr)


def brain_mask_bytes() -> bytes:
    """``*_desc-brain_mask.nii.gz``: the ribbon voxels (uint8)."""
    mask = np.zeros(int(np.prod(SHAPE)), dtype=np.uint8)
    mask[ribbon_voxels()[0]] = 1
    return _nifti_gz(mask.reshape(SHAPE, order="F"))
