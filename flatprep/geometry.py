"""Triangle-mesh geometry: point location and barycentric weights.

Two primitives carry every projection in flatprep:

* :func:`rasterize_triangles` finds, for each pixel centre of a regular grid,
  the planar triangle that contains it (flat maps);
* :func:`locate_on_sphere` finds, for each point on the unit sphere, the
  spherical triangle that contains it (moving between surface densities and
  between the fsaverage and fs_LR spheres).

Both return a face index and barycentric weights per point, so a value defined
on vertices is interpolated linearly as ``(values[faces[face]] * bary).sum(1)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Mesh(NamedTuple):
    """A triangle mesh.

    Attributes
    ----------
    vertices : ndarray, float64, shape (n_vertices, d)
        Vertex coordinates (d = 2 for flat meshes, 3 for spheres).
    faces : ndarray, int64, shape (n_faces, 3)
        Vertex indices of each triangle.
    """

    vertices: np.ndarray
    faces: np.ndarray


class Location(NamedTuple):
    """Where points fall on a mesh.

    Attributes
    ----------
    face : ndarray, int64, shape (n_points,)
        Index of the containing face.
    bary : ndarray, float64, shape (n_points, 3)
        Barycentric weights of the face's three vertices (non-negative, sum 1).
    outside : ndarray, bool, shape (n_points,)
        True where no face contained the point within tolerance, so the
        nearest face was used with its weights clipped to the triangle.
    """

    face: np.ndarray
    bary: np.ndarray
    outside: np.ndarray


def normalize_rows(points: np.ndarray) -> np.ndarray:
    """Scale each row to unit length: (n, 3) -> (n, 3) float64 (new array)."""
    points = np.asarray(points, dtype=np.float64)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def vertex_face_table(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """Faces incident to each vertex, padded with -1.

    Returns
    -------
    ndarray, int64, shape (n_vertices, max_degree)
    """
    faces = np.asarray(faces, dtype=np.int64)
    vertex = faces.ravel()
    face = np.repeat(np.arange(len(faces)), 3)
    order = np.argsort(vertex, kind="stable")
    vertex, face = vertex[order], face[order]
    counts = np.bincount(vertex, minlength=n_vertices)
    table = np.full((n_vertices, max(int(counts.max(initial=0)), 1)), -1, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(vertex)) - np.repeat(starts, counts)
    table[vertex, slot] = face
    return table


def clip_barycentric(bary: np.ndarray) -> np.ndarray:
    """Clip negative weights to 0 and renormalise rows to sum 1 (new array)."""
    bary = np.clip(bary, 0.0, None)
    total = bary.sum(axis=1, keepdims=True)
    total[total == 0] = 1.0
    return bary / total


def locate_on_sphere(
    points: np.ndarray,
    sphere: Mesh,
    *,
    n_neighbors: int = 4,
    tolerance: float = 1e-7,
    chunk_size: int = 65536,
) -> Location:
    """Find the spherical triangle containing each point.

    Each point is intersected with the planes of the faces around its nearest
    vertices (a gnomonic projection), which makes the weights exact for a
    point that lies on a flat triangle and linear along great-circle arcs.

    Parameters
    ----------
    points : array, shape (n_points, 3)
        Points on (or near) the sphere; only their direction matters.
    sphere : Mesh
        Sphere mesh, vertices of shape (n_vertices, 3) centred on the origin.
    n_neighbors : int, default=4
        Nearest vertices whose incident faces are tested.
    tolerance : float, default=1e-7
        Negative weight still counted as inside (points on an edge).
    chunk_size : int, default=65536
        Points processed at once (bounds memory).

    Returns
    -------
    Location
    """
    from scipy.spatial import cKDTree

    unit_vertices = normalize_rows(sphere.vertices)
    faces = np.asarray(sphere.faces, dtype=np.int64)
    # p = M @ w with M = [A B C] as columns; w = M^-1 p, then scaled to sum 1.
    inverse = np.linalg.inv(unit_vertices[faces].transpose(0, 2, 1))
    table = vertex_face_table(faces, len(unit_vertices))
    tree = cKDTree(unit_vertices)
    points = normalize_rows(points)
    n_points = len(points)
    face_out = np.empty(n_points, dtype=np.int64)
    bary_out = np.empty((n_points, 3))
    outside_out = np.empty(n_points, dtype=bool)
    k = min(n_neighbors, len(unit_vertices))
    for start in range(0, n_points, chunk_size):
        chunk = points[start : start + chunk_size]
        _, nearest = tree.query(chunk, k=k)
        nearest = nearest.reshape(len(chunk), k)
        candidates = table[nearest].reshape(len(chunk), -1)  # (n, k * degree)
        valid = candidates >= 0
        safe = np.where(valid, candidates, 0)
        weights = np.einsum("nkij,nj->nki", inverse[safe], chunk)  # (n, K, 3)
        total = weights.sum(axis=2, keepdims=True)
        # A face on the far side of the sphere gives a negative total.
        usable = valid & (total[..., 0] > 0)
        weights = weights / np.where(total > 0, total, 1.0)
        score = np.where(usable, weights.min(axis=2), -np.inf)
        best = score.argmax(axis=1)
        rows = np.arange(len(chunk))
        face_out[start : start + len(chunk)] = safe[rows, best]
        chosen = weights[rows, best]
        outside_out[start : start + len(chunk)] = score[rows, best] < -tolerance
        bary_out[start : start + len(chunk)] = clip_barycentric(chosen)
    return Location(face_out, bary_out, outside_out)


def rasterize_triangles(
    flat: Mesh,
    *,
    origin: tuple[float, float],
    pixel_size: float,
    shape: tuple[int, int],
    tolerance: float = 1e-9,
) -> tuple[np.ndarray, Location]:
    """Find the planar triangle that contains each pixel centre of a grid.

    Row 0 is the top of the image: pixel (row, col) has its centre at
    ``x = origin[0] + (col + 0.5) * pixel_size`` and
    ``y = origin[1] - (row + 0.5) * pixel_size`` where origin is the top-left
    corner ``(x_min, y_max)``. Where triangles overlap, the one in which the
    pixel lies deepest (largest smallest weight) wins.

    Parameters
    ----------
    flat : Mesh
        Flat mesh, vertices of shape (n_vertices, 2) in mm.
    origin : (float, float)
        Top-left corner of the grid in mm.
    pixel_size : float
        Pixel edge in mm.
    shape : (int, int)
        Grid (height, width).

    Returns
    -------
    pixels : ndarray, int64, shape (n_covered,)
        Flat (row-major) index of each covered pixel, sorted.
    location : Location
        Face and weights for each covered pixel.
    """
    height, width = shape
    xy = np.asarray(flat.vertices, dtype=np.float64)[:, :2]
    faces = np.asarray(flat.faces, dtype=np.int64)
    corners = xy[faces]  # (F, 3, 2)
    # Continuous pixel coordinates: col = (x - x0)/s - 0.5, row = (y0 - y)/s - 0.5
    cols = (corners[..., 0] - origin[0]) / pixel_size - 0.5
    rows = (origin[1] - corners[..., 1]) / pixel_size - 0.5
    c0 = np.clip(np.ceil(cols.min(1)), 0, width).astype(np.int64)
    c1 = np.clip(np.floor(cols.max(1)), -1, width - 1).astype(np.int64)
    r0 = np.clip(np.ceil(rows.min(1)), 0, height).astype(np.int64)
    r1 = np.clip(np.floor(rows.max(1)), -1, height - 1).astype(np.int64)
    n_cols = np.maximum(c1 - c0 + 1, 0)
    n_rows = np.maximum(r1 - r0 + 1, 0)
    n_cand = n_cols * n_rows
    face = np.repeat(np.arange(len(faces)), n_cand)
    offset = np.arange(n_cand.sum()) - np.repeat(np.cumsum(n_cand) - n_cand, n_cand)
    cand_row = r0[face] + offset // np.maximum(n_cols[face], 1)
    cand_col = c0[face] + offset % np.maximum(n_cols[face], 1)
    px = np.stack([cand_col + 0.5, -(cand_row + 0.5)], axis=1) * pixel_size
    px += np.array([origin[0], origin[1]])
    a, b, c = corners[face, 0], corners[face, 1], corners[face, 2]
    v0, v1, v2 = b - a, c - a, px - a
    det = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    w1 = (v2[:, 0] * v1[:, 1] - v2[:, 1] * v1[:, 0]) / det
    w2 = (v0[:, 0] * v2[:, 1] - v0[:, 1] * v2[:, 0]) / det
    bary = np.stack([1.0 - w1 - w2, w1, w2], axis=1)
    score = bary.min(axis=1)
    keep = ok & (score >= -tolerance)
    pixel = (cand_row * width + cand_col)[keep]
    face, bary, score = face[keep], bary[keep], score[keep]
    # One winner per pixel: sort by pixel, then by descending depth.
    order = np.lexsort((-score, pixel))
    pixel, face, bary = pixel[order], face[order], bary[order]
    first = np.ones(len(pixel), dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    return pixel[first], Location(
        face[first], clip_barycentric(bary[first]), np.zeros(int(first.sum()), bool)
    )


def subdivide_icosphere(coarse_faces: np.ndarray, fine_vertices: np.ndarray) -> np.ndarray:
    """Faces of the next icosahedral density, from the coarser faces.

    FreeSurfer's ico order k+1 keeps the vertices of order k as its first
    vertices and adds one vertex at the normalised midpoint of every edge;
    each triangle splits into four.

    Parameters
    ----------
    coarse_faces : array, int, shape (n_faces, 3)
    fine_vertices : array, float, shape (n_fine_vertices, 3)
        Vertices of the finer sphere (the coarse ones first).

    Returns
    -------
    ndarray, int64, shape (4 * n_faces, 3)
    """
    from scipy.spatial import cKDTree

    unit = normalize_rows(fine_vertices)
    faces = np.asarray(coarse_faces, dtype=np.int64)
    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    tree = cKDTree(unit)

    def midpoint(i, j):
        dist, index = tree.query(normalize_rows(unit[i] + unit[j]))
        edge = np.linalg.norm(unit[i] - unit[j], axis=1)
        if np.any(dist > 0.01 * edge):
            raise ValueError("sphere vertices are not an icosahedral subdivision")
        return index

    ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
    return np.concatenate(
        [np.stack(t, axis=1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))]
    )
