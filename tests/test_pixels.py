"""Tests of flatprep.pixels: packed valid-pixel values <-> flat-map images, on the real 2.4 mm grid."""

import pickle

import numpy as np
import pytest
import torch

from flatprep.exceptions import FlatmapError
from flatprep.pixels import PixelIndex


def test_pixel_index_round_trips_numpy_and_torch(coarse_grid):
    mask = coarse_grid.mask
    pixels = PixelIndex(mask)
    assert pixels.n_pixels == coarse_grid.n_pixels and pixels.shape == coarse_grid.shape
    values = np.random.default_rng(0).standard_normal((3, pixels.n_pixels)).astype(np.float32)
    image = pixels.to_image(values, fill=np.nan)
    assert image.shape == (3, *mask.shape) and np.isnan(image[:, ~mask]).all()
    np.testing.assert_array_equal(image[:, mask], values)  # row-major order of the valid pixels
    tensor = pixels.to_image(torch.from_numpy(values))
    assert tensor.dtype == torch.float32 and torch.all(tensor[:, ~torch.from_numpy(mask)] == 0)
    np.testing.assert_array_equal(pixels.to_values(tensor).numpy(), values)
    np.testing.assert_array_equal(pixels.to_values(image), values)


def test_pixel_index_pickles_without_its_device_tensors(coarse_grid):
    pixels = PixelIndex(coarse_grid.mask)
    pixels.to_image(torch.zeros(1, pixels.n_pixels))  # builds a cached torch index
    copy = pickle.loads(pickle.dumps(pixels))
    assert copy._torch == {} and np.array_equal(copy.gather, pixels.gather)
    values = torch.arange(pixels.n_pixels, dtype=torch.float32)
    assert torch.equal(copy.to_image(values), pixels.to_image(values))


def test_pixel_index_names_the_grid_when_shapes_do_not_fit(coarse_grid):
    pixels = PixelIndex(coarse_grid.mask)
    with pytest.raises(FlatmapError, match=f"last axis of {pixels.n_pixels:,} valid pixels for this 112x288 grid"):
        pixels.to_image(np.zeros((2, pixels.n_pixels - 1)))
    with pytest.raises(FlatmapError, match=r"expected images of shape \(\.\.\., 112, 288\)"):
        pixels.to_values(np.zeros((2, 112, 280)))
    with pytest.raises(FlatmapError, match="needs a \\(height, width\\) mask"):
        PixelIndex(coarse_grid.mask[None])
