import numpy as np
import pytest

from flatprep.exceptions import FlatmapError
from flatprep.qc import save_flatmap_png


def test_save_flatmap_png_draws_both_hemispheres_on_a_grey_background(coarse_grid, tmp_path):
    import matplotlib.image

    values = np.where(coarse_grid.pixel_hemi == 0, -1.0, 1.0)
    path = save_flatmap_png(coarse_grid, values, tmp_path / "map.png", title="hemispheres", vmin=-1, vmax=1)
    image = matplotlib.image.imread(path)[..., :3]
    image = image[:, : int(image.shape[1] * 0.85)]  # leave out the colour bar on the right
    blue = image[..., 2] > image[..., 0] + 0.2
    red = image[..., 0] > image[..., 2] + 0.2
    columns = np.arange(image.shape[1])
    # Left hemisphere is blue (-1) and drawn left of the red right hemisphere.
    assert blue.sum() > 1000 and red.sum() > 1000
    assert np.median(columns[np.nonzero(blue)[1]]) < np.median(columns[np.nonzero(red)[1]])
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_save_flatmap_png_refuses_a_wrong_length(coarse_grid, tmp_path):
    with pytest.raises(FlatmapError, match=r"map.png: expected one map of"):
        save_flatmap_png(coarse_grid, np.zeros(3), tmp_path / "map.png")
