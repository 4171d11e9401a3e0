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


def test_carpet_shows_left_then_right_pixels_split_by_an_orange_row(coarse_grid, tmp_path):
    import matplotlib.image

    from flatprep.qc import carpet_pixels, save_carpet_png
    from flatprep.render import read_png_text

    hemi = np.asarray(coarse_grid.pixel_hemi)
    frames = np.where(hemi == 0, -2.0, 2.0)[None, :].repeat(7, axis=0)  # left black, right white
    path = save_carpet_png(frames, tmp_path / "carpet.png", tr=1.0, pixel_hemi=hemi, n_rows=50)
    image = np.round(matplotlib.image.imread(path)[..., :3] * 255).astype(int)
    assert image.shape == (51, 7, 3)  # one column per frame, 50 pixels and the split row
    rows = carpet_pixels(hemi, n_rows=50)
    split = int((hemi[rows] == 0).sum())
    assert (image[:split] == 0).all() and (image[split + 1:] == 255).all()
    assert tuple(image[split, 0]) == (255, 127, 14)
    # Drawn from the selected columns only, the carpet is the same picture.
    again = save_carpet_png(frames[:, rows], tmp_path / "again.png", tr=1.0, pixel_hemi=hemi[rows], n_rows=50)
    assert again.read_bytes() == path.read_bytes()
    assert "7 frames, TR 1 s" in read_png_text(path)["Description"]


def test_motion_figure_draws_each_trace_and_shades_dropped_volumes(tmp_path):
    import matplotlib.image

    from flatprep.clean import MOTION_COLUMNS
    from flatprep.qc import save_motion_png
    from flatprep.render import TAB10, read_png_text

    confounds = {name: np.linspace(0, 1, 40) * (i + 1) for i, name in enumerate(MOTION_COLUMNS)}
    confounds["framewise_displacement"] = np.r_[np.nan, np.ones(39)]
    path = save_motion_png(confounds, tmp_path / "motion.png", tr=2.0, n_dropped=4)
    image = np.round(matplotlib.image.imread(path)[..., :3] * 255).astype(int)
    for colour in TAB10[: len(MOTION_COLUMNS)]:
        assert (image == colour).all(axis=-1).any()  # every motion trace is drawn in its colour
    assert (image[:, :40] == (251, 220, 220)).all(axis=-1).any()  # the first 4 of 40 volumes shaded
    description = read_png_text(path)["Description"]
    assert "trans_x blue" in description and "first 4 volumes dropped" in description
