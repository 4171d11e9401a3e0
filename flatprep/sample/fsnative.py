"""Sample fsnative files: a subject mesh, its registration sphere, a cortex mask and BOLD on it.

The subject mesh is fsaverage5 with its vertices permuted and slightly jittered
along the sphere, so its vertex order and positions are the subject's own, as
for a FreeSurfer subject. Subject vertex ``i`` carries the fsaverage5 value of
vertex ``order[i]``, and the registration sphere puts it at that vertex's
position plus the jitter, so the fsnative run is the fsaverage5 run seen
through a slightly imperfect registration (flat maps agree with r >= 0.99 on
smooth data). Files, as fMRIPrep >= 23 writes them::

    derivatives/fmriprep/sub-01/anat/sub-01_hemi-{L,R}_space-fsaverage_desc-reg_sphere.surf.gii
    derivatives/fmriprep/sub-01/anat/sub-01_hemi-{L,R}_desc-cortex_mask.label.gii
    derivatives/fmriprep/sub-01/func/<entities>_hemi-{L,R}_space-fsnative_bold.func.gii (+ .json)
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..geometry import Mesh, normalize_rows
from ..spaces import HEMIS, load_cortex_mask, load_sphere

#: The standard space whose rendered data the fsnative files carry.
SOURCE_SPACE = "fsaverage5"
#: Jitter of the registered positions, as a fraction of the mean edge length.
JITTER = 0.1
#: FreeSurfer spheres have a radius of 100 mm.
SPHERE_RADIUS_MM = 100.0
_MESH_STREAM = 7  # SeedSequence spawn-key tag of the subject meshes (generate.py uses 0-3)


class NativeMesh(NamedTuple):
    """One hemisphere of a sample subject's mesh.

    Attributes
    ----------
    sphere : Mesh
        Registration sphere: unit vertices (n_vertices, 3), faces (n_faces, 3).
    order : ndarray, int64, shape (n_vertices,)
        fsaverage5 vertex that each subject vertex comes from.
    cortex : ndarray, bool, shape (n_vertices,)
    """

    sphere: Mesh
    order: np.ndarray
    cortex: np.ndarray


def native_meshes(seed: int, index: int, *, jitter: float = JITTER) -> dict[str, NativeMesh]:
    """The meshes of the sample subject at 0-based ``index``: hemisphere -> NativeMesh."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_MESH_STREAM, index)))
    meshes = {}
    for hemi in HEMIS:
        base = load_sphere(SOURCE_SPACE, hemi)
        n = len(base.vertices)
        order = rng.permutation(n)
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)  # fsaverage5 vertex -> subject vertex
        edges = base.vertices[base.faces[:, 0]] - base.vertices[base.faces[:, 1]]
        step = jitter * float(np.linalg.norm(edges, axis=1).mean())
        vertices = base.vertices[order]
        noise = rng.standard_normal((n, 3))
        noise -= (noise * vertices).sum(axis=1, keepdims=True) * vertices  # tangent to the sphere
        sphere = Mesh(normalize_rows(vertices + step / np.sqrt(2) * noise), position[base.faces])
        meshes[hemi] = NativeMesh(sphere, order, load_cortex_mask(SOURCE_SPACE, hemi)[order])
    return meshes


def _surface_bytes(mesh: Mesh, hemi: str) -> bytes:
    from nibabel.gifti import GiftiDataArray, GiftiImage, GiftiMetaData

    structure = {"L": "CortexLeft", "R": "CortexRight"}[hemi]
    arrays = [
        GiftiDataArray((mesh.vertices * SPHERE_RADIUS_MM).astype(np.float32), intent="NIFTI_INTENT_POINTSET",
                       datatype="NIFTI_TYPE_FLOAT32", meta=GiftiMetaData({"AnatomicalStructurePrimary": structure})),
        GiftiDataArray(mesh.faces.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE", datatype="NIFTI_TYPE_INT32"),
    ]
    return GiftiImage(meta=GiftiMetaData({"AnatomicalStructurePrimary": structure}), darrays=arrays).to_bytes()


def _label_bytes(mask: np.ndarray) -> bytes:
    from nibabel.gifti import GiftiDataArray, GiftiImage, GiftiLabel, GiftiLabelTable

    table = GiftiLabelTable()
    for key, name in ((0, "medial_wall"), (1, "cortex")):
        label = GiftiLabel(key=key)
        label.label = name
        table.labels.append(label)
    array = GiftiDataArray(mask.astype(np.int32), intent="NIFTI_INTENT_LABEL", datatype="NIFTI_TYPE_INT32")
    return GiftiImage(labeltable=table, darrays=[array]).to_bytes()


def write_native_anat(writer, folder: Path, subject: str, meshes: dict[str, NativeMesh]) -> list[str]:
    """Registration spheres and cortex masks of one subject under ``folder/sub-X/anat``."""
    anat = folder / f"sub-{subject}" / "anat"
    files = []
    for hemi in HEMIS:
        sphere = anat / f"sub-{subject}_hemi-{hemi}_space-fsaverage_desc-reg_sphere.surf.gii"
        mask = anat / f"sub-{subject}_hemi-{hemi}_desc-cortex_mask.label.gii"
        writer.write_bytes(sphere, _surface_bytes(meshes[hemi].sphere, hemi))
        writer.write_bytes(mask, _label_bytes(meshes[hemi].cortex))
        files += [str(sphere), str(mask)]
    return files


def native_frames(frames: np.ndarray, meshes: dict[str, NativeMesh]) -> dict[str, np.ndarray]:
    """fsaverage5 frames (T, 2 * 10242) as each hemisphere's subject-ordered frames (T, n_vertices)."""
    n = len(meshes["L"].order)
    return {hemi: np.ascontiguousarray(frames[:, h_index * n + meshes[hemi].order])
            for h_index, hemi in enumerate(HEMIS)}
