"""The PCA baseline of the masked loss, on the 2.4 mm grid with the model's own masks."""

import numpy as np
import pytest
import torch

from flatprep.learn.model import build_model
from flatprep.learn.baselines import PCABaseline


def _smooth_maps(grid, n_maps: int) -> np.ndarray:
    """Smooth functions of flat position on the grid's valid pixels: (n_maps, n_valid)."""
    rows, cols = np.nonzero(grid.mask)
    y, x = rows / grid.mask.shape[0], cols / grid.mask.shape[1]
    maps = [np.cos(np.pi * (a * x + b * y)) for a, b in [(1, 0), (0, 1), (2, 1), (1, 2), (3, 0), (0, 3)]]
    return np.stack(maps[:n_maps])


def _clips(grid, values: np.ndarray) -> torch.Tensor:
    """(B, T, n_valid) -> (B, 1, T, H, W) with zeros off the grid."""
    out = np.zeros((*values.shape[:2], *grid.mask.shape), np.float32)
    out[:, :, grid.mask] = values
    return torch.from_numpy(out)[:, None]


@pytest.fixture(scope="module")
def setup(coarse_grid):
    model = build_model("micro", img_size=coarse_grid.mask.shape, tubelet=4)
    maps = _smooth_maps(coarse_grid, 4)  # (4, P)
    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 4)) @ maps  # (200, P): frames in a 4-dim span
    return model, maps, train


def test_fit_gives_orthonormal_maps_spanning_the_training_frames(setup, coarse_grid):
    _, maps, train = setup
    baseline = PCABaseline.fit(train, coarse_grid.mask, n_components=4)
    basis = baseline.basis.double().numpy()
    np.testing.assert_allclose(basis @ basis.T, np.eye(4), atol=1e-6)
    residual = maps - (maps @ basis.T) @ basis  # every generating map lies in the span
    assert np.abs(residual).max() < 1e-4 * np.abs(maps).max()


def test_frames_in_the_span_are_rebuilt_at_hidden_pixels_from_visible_ones(setup, coarse_grid):
    model, maps, train = setup
    baseline = PCABaseline(PCABaseline.fit(train, coarse_grid.mask, n_components=4).basis, coarse_grid.mask,
                           ridge=0.0)
    rng = np.random.default_rng(1)
    clips = _clips(coarse_grid, rng.standard_normal((3, 16, 4)) @ maps)
    valid = torch.from_numpy(coarse_grid.mask)
    _, mask = model.sample_mask(model.patch_valid(valid).expand(3, -1), generator=torch.Generator().manual_seed(0))
    rebuilt = baseline.predict(clips, mask, tubelet=4, patch_size=16)
    assert rebuilt.shape == clips.shape
    torch.testing.assert_close(rebuilt, clips, atol=2e-4, rtol=0)
    assert float(model.forward_loss(clips, model.patchify(rebuilt), mask, valid)) < 1e-7


def test_hidden_pixels_never_enter_the_fit(setup, coarse_grid):
    model, maps, train = setup
    baseline = PCABaseline.fit(train, coarse_grid.mask, n_components=4)
    rng = np.random.default_rng(2)
    clips = _clips(coarse_grid, rng.standard_normal((2, 16, 4)) @ maps + 0.3 * rng.standard_normal((2, 16, maps.shape[1])))
    valid = torch.from_numpy(coarse_grid.mask)
    _, mask = model.sample_mask(model.patch_valid(valid).expand(2, -1), generator=torch.Generator().manual_seed(3))
    hidden = model.unpatchify(mask[..., None].expand(-1, -1, model.patch_dim).float()).bool()  # (B, 1, T, H, W)
    changed = clips.masked_fill(hidden, 100.0)
    torch.testing.assert_close(baseline.predict(changed, mask, tubelet=4, patch_size=16),
                               baseline.predict(clips, mask, tubelet=4, patch_size=16))


def test_bad_shapes_are_refused(setup, coarse_grid):
    _, maps, train = setup
    with pytest.raises(ValueError, match="n_components"):
        PCABaseline.fit(train, coarse_grid.mask, n_components=0)
    with pytest.raises(ValueError, match="basis must be"):
        PCABaseline(torch.zeros(2, 10), coarse_grid.mask)
