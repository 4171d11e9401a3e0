import numpy as np
import pytest

from flatprep.geometry import Mesh, locate_on_sphere, rasterize_triangles, subdivide_icosphere, vertex_face_table
from flatprep.spaces import load_sphere


def test_rasterize_triangles_covers_right_pixels_and_reproduces_linear_function():
    # One right triangle with legs of 10 mm on a 1 mm grid whose top-left is (0, 10).
    flat = Mesh(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), np.array([[0, 1, 2]]))
    pixels, loc = rasterize_triangles(flat, origin=(0.0, 10.0), pixel_size=1.0, shape=(10, 10))
    rows, cols = np.divmod(pixels, 10)
    x, y = cols + 0.5, 10 - (rows + 0.5)
    assert np.all(x + y <= 10 + 1e-9)
    # Every pixel centre inside the triangle is found: x + y <= 10 for 55 centres.
    assert len(pixels) == 55
    values = np.array([1.0, 21.0, 31.0])  # f = 1 + 2x + 3y at the corners
    interpolated = (values[flat.faces[loc.face]] * loc.bary).sum(1)
    np.testing.assert_allclose(interpolated, 1 + 2 * x + 3 * y, atol=1e-12)


def test_rasterize_triangles_picks_one_face_per_pixel_on_shared_edges():
    flat = Mesh(np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]]), np.array([[0, 1, 2], [0, 2, 3]]))
    pixels, loc = rasterize_triangles(flat, origin=(0.0, 4.0), pixel_size=1.0, shape=(4, 4))
    assert np.array_equal(pixels, np.arange(16))
    np.testing.assert_allclose(loc.bary.sum(1), 1.0)


def test_locate_on_sphere_matches_brute_force(rng):
    sphere = load_sphere("fsaverage5", "L")
    points = rng.normal(size=(500, 3))
    loc = locate_on_sphere(points, sphere)
    assert not loc.outside.any()
    assert np.all(loc.bary >= 0) and np.allclose(loc.bary.sum(1), 1)
    # Brute force: the face whose gnomonic weights are all non-negative.
    inverse = np.linalg.inv(sphere.vertices[sphere.faces].transpose(0, 2, 1))
    for point, face in zip(points[:50] / np.linalg.norm(points[:50], axis=1, keepdims=True), loc.face[:50]):
        weights = inverse @ point
        inside = np.flatnonzero((weights >= -1e-9).all(1))
        assert face in inside
    # The weights rebuild the direction of each point.
    rebuilt = np.einsum("nk,nkd->nd", loc.bary, sphere.vertices[sphere.faces[loc.face]])
    rebuilt /= np.linalg.norm(rebuilt, axis=1, keepdims=True)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    np.testing.assert_allclose(rebuilt, unit, atol=1e-9)


def test_subdivide_icosphere_rebuilds_the_shipped_fsaverage_faces():
    fine = load_sphere("fsaverage", "L")
    coarse = load_sphere("fsaverage6", "L")
    rebuilt = subdivide_icosphere(coarse.faces, fine.vertices)
    assert set(map(tuple, np.sort(rebuilt, 1))) == set(map(tuple, np.sort(fine.faces, 1)))


def test_subdivide_icosphere_rejects_non_icosahedral_vertices(rng):
    sphere = load_sphere("fsaverage5", "L")
    with pytest.raises(ValueError, match="icosahedral"):
        subdivide_icosphere(sphere.faces, rng.normal(size=(40962, 3)))


def test_vertex_face_table_lists_each_incident_face_once():
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    table = vertex_face_table(faces, 4)
    assert sorted(table[0][table[0] >= 0]) == [0, 1]
    assert list(table[1][table[1] >= 0]) == [0]
