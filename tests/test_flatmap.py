import time

import numpy as np
import pytest

from flatprep import flatmap
from flatprep.atlases import load_labels
from flatprep.exceptions import FlatmapError
from flatprep.flatmap import make_grid
from flatprep.spaces import HEMIS, SPACES

ALL_SPACES = list(SPACES)


def test_default_grid_matches_the_reference_geometry(grid):
    assert grid.shape == (224, 560)
    assert grid.pixel_size == 1.2
    # The reference fm-MAE grid has 77,763 valid pixels (62 %); ours is the same layout family.
    assert 0.58 < grid.mask.mean() < 0.66
    assert grid.mask.sum() == grid.n_pixels == len(grid.pixel_face)


def test_coarse_grid_keeps_dimensions_divisible_by_the_patch(coarse_grid):
    assert coarse_grid.shape == (112, 288)
    for patch in (8, 16):
        g = make_grid(pixel_size=3.0, patch_size=patch)
        assert g.shape[0] % patch == 0 and g.shape[1] % patch == 0


def test_left_pixels_lie_left_of_right_pixels(grid):
    x = grid.pixel_centers()[:, 0]
    assert x[grid.pixel_hemi == 0].max() < 0 < x[grid.pixel_hemi == 1].min()


@pytest.mark.parametrize("space", ALL_SPACES)
def test_operator_rows_are_convex_weights_and_every_pixel_is_served(grid, space):
    op = grid.operator(space)
    matrix = op.matrix
    assert matrix.shape == (grid.n_pixels, 2 * SPACES[space].n_vertices)
    assert matrix.data.min() >= 0
    np.testing.assert_allclose(np.asarray(matrix.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert np.all(np.diff(matrix.indptr) > 0)  # same mask for every space: no empty row


@pytest.mark.parametrize("space", ALL_SPACES)
def test_left_hemisphere_data_never_lands_on_the_right_half(grid, space):
    op = grid.operator(space)
    n = SPACES[space].n_vertices
    left_only = np.zeros(2 * n)
    left_only[:n] = 1.0
    projected = op.project(left_only)
    assert np.all(projected[grid.pixel_hemi == 1] == 0)
    np.testing.assert_allclose(projected[grid.pixel_hemi == 0], 1.0)


@pytest.mark.parametrize("space", ALL_SPACES)
def test_constant_map_gives_a_constant_image(grid, space):
    data = np.full((3, 2 * SPACES[space].n_vertices), 7.5, dtype=np.float32)
    pixels = grid.operator(space).project(data)
    assert pixels.shape == (3, grid.n_pixels) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, 7.5, rtol=1e-6)


def test_smooth_function_gives_the_same_image_from_every_space(grid, smooth_data):
    images = {space: grid.operator(space).project(smooth_data(space)) for space in ALL_SPACES}
    for a in ALL_SPACES:
        for b in ALL_SPACES:
            if a < b:
                r = np.corrcoef(images[a], images[b])[0, 1]
                assert r >= 0.99, f"{a} vs {b}: r = {r:.4f}"


def test_function_linear_in_flat_coordinates_is_reproduced_exactly(grid):
    template = grid.template
    data = np.concatenate([3.0 * template.flats[h].vertices[:, 0] - 2.0 * template.flats[h].vertices[:, 1] + 5.0 for h in HEMIS])
    data = np.nan_to_num(data)  # cut vertices are in no face and never weighted
    pixels = grid.operator(template.space).project(data)
    x, y = grid.pixel_centers().T
    np.testing.assert_allclose(pixels, 3.0 * x - 2.0 * y + 5.0, atol=1e-9)


def test_nearest_method_picks_one_vertex_per_pixel(grid):
    op = grid.operator("fsLR", method="nearest")
    assert np.all(np.diff(op.matrix.indptr) == 1)
    np.testing.assert_allclose(op.matrix.data, 1.0)


def test_yeo_networks_agree_between_fslr_and_fsaverage(grid):
    from_fslr = grid.operator("fsLR", method="nearest").project(load_labels("yeo7", "fsLR").labels.astype(float))
    from_fs6 = grid.operator("fsaverage6", method="nearest").project(load_labels("yeo7", "fsaverage6").labels.astype(float))
    assert (from_fslr == from_fs6).mean() > 0.95


@pytest.mark.parametrize("space", ["fsaverage5", "fsLR"])
def test_backproject_returns_the_vertex_values(grid, smooth_data, space):
    op = grid.operator(space)
    back = op.backproject(op.project(smooth_data(space)))
    on_map = np.isfinite(back)
    assert on_map.mean() > 0.85
    assert np.corrcoef(back[on_map], smooth_data(space)[on_map])[0, 1] > 0.995


def test_image_round_trip(grid, rng):
    pixels = rng.normal(size=(2, grid.n_pixels)).astype(np.float32)
    images = grid.to_image(pixels)
    assert images.shape == (2, 224, 560) and images.dtype == np.float32
    assert np.all(images[:, ~grid.mask] == 0)
    np.testing.assert_array_equal(grid.from_image(images), pixels)
    assert np.isnan(grid.to_image(pixels[0], fill=np.nan)[~grid.mask]).all()


def test_wrong_shapes_give_errors_with_both_shapes(grid):
    op = grid.operator("fsaverage5")
    with pytest.raises(FlatmapError, match=r"shape \(n_timepoints, 20,484\).*got \(10, 10242\)"):
        op.project(np.zeros((10, 10242)))
    with pytest.raises(FlatmapError, match=r"79,\d{3} valid pixels.*got shape \(5,\)"):
        grid.to_image(np.zeros(5))
    with pytest.raises(FlatmapError, match=r"\(\.\.\., 224, 560\), got \(3, 4\)"):
        grid.from_image(np.zeros((3, 4)))


def test_bad_grid_settings_are_refused():
    with pytest.raises(FlatmapError, match="pixel_size must be > 0"):
        make_grid(pixel_size=0)
    with pytest.raises(FlatmapError, match="whole multiples of patch_size=16"):
        make_grid(bbox=(-300.0, 300.0, -100.0, 100.0))
    with pytest.raises(FlatmapError, match="method must be one of"):
        make_grid(pixel_size=4.8).operator("fsLR", method="cubic")


def test_operator_cache_miss_then_hit(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATPREP_CACHE_DIR", str(tmp_path))
    grid = make_grid(pixel_size=4.8)
    start = time.perf_counter()
    built = grid.operator("fsaverage6")
    cold = time.perf_counter() - start
    files = list((tmp_path / "operators").glob("*.npz"))
    assert len(files) == 1

    def fail(*args, **kwargs):
        raise AssertionError("operator rebuilt despite a cache entry")

    monkeypatch.setattr(flatmap, "_forward_triplets", fail)
    start = time.perf_counter()
    loaded = grid.operator("fsaverage6")
    warm = time.perf_counter() - start
    assert (built.matrix != loaded.matrix).nnz == 0 and loaded.key == built.key
    assert warm < cold


def test_corrupt_cache_entry_is_rebuilt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FLATPREP_CACHE_DIR", str(tmp_path))
    grid = make_grid(pixel_size=4.8)
    reference = grid.operator("fsaverage5").matrix
    (entry,) = (tmp_path / "operators").glob("*.npz")
    entry.write_bytes(b"not a zip file")
    rebuilt = grid.operator("fsaverage5").matrix
    assert (rebuilt != reference).nnz == 0
    assert "unreadable cache entry" in caplog.text


def test_operator_key_changes_with_the_grid():
    a = make_grid(pixel_size=4.8).operator("fsaverage5")
    b = make_grid(pixel_size=4.8, patch_size=8).operator("fsaverage5")
    assert a.key != b.key


def test_project_float16_equals_projecting_then_casting_and_names_an_overflow(coarse_grid, rng):
    from flatprep.exceptions import RunFileError
    from flatprep.h5 import to_float16

    op = coarse_grid.operator("fsaverage5")
    data = rng.normal(size=(150, op.n_vertices)).astype(np.float16)  # blocks of 16: the last one partial
    stored = op.project_float16(data, source="run.func.gii")
    assert stored.dtype == np.float16 and stored.flags.c_contiguous
    np.testing.assert_array_equal(stored.view(np.uint16), to_float16(op.project(data)).view(np.uint16))
    # numpy's own cast: the stored bits did not change with the faster one
    np.testing.assert_array_equal(stored.view(np.uint16), op.project(data).astype(np.float16).view(np.uint16))
    data = data.astype(np.float32)
    data[140] = 1e6
    with pytest.raises(RunFileError, match="run.func.gii: values up to .* do not fit float16"):
        op.project_float16(data, source="run.func.gii")
