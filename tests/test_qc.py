import numpy as np
import pytest

from flatprep.exceptions import FlatmapError
from flatprep.qc import save_flatmap_png


def _read_rgb(path) -> np.ndarray:
    import matplotlib.image

    return np.round(matplotlib.image.imread(path)[..., :3] * 255).astype(int)


def test_save_flatmap_png_draws_both_hemispheres_with_a_labelled_colour_bar(coarse_grid, tmp_path):
    from flatprep.render import colormap_lut, read_png_text

    values = np.where(coarse_grid.pixel_hemi == 0, -1.0, 1.0)
    path = save_flatmap_png(coarse_grid, values, tmp_path / "map.png", title="hemispheres", vmin=-1, vmax=1,
                            colorbar_label="z")
    image = _read_rgb(path) / 255
    maps = image[:, : int(image.shape[1] * 0.85)]  # leave out the colour bar on the right
    blue = maps[..., 2] > maps[..., 0] + 0.2
    red = maps[..., 0] > maps[..., 2] + 0.2
    columns = np.arange(maps.shape[1])
    # Left hemisphere is blue (-1) and drawn left of the red right hemisphere.
    assert blue.sum() > 1000 and red.sum() > 1000
    assert np.median(columns[np.nonzero(blue)[1]]) < np.median(columns[np.nonzero(red)[1]])
    # The colour bar runs from the map's first colour (bottom) to its last (top).
    lut = colormap_lut("RdBu_r")
    rgb = np.round(image * 255).astype(int)
    top_colour = (rgb == lut[-1]).all(axis=-1)
    bottom_colour = (rgb == lut[0]).all(axis=-1)
    assert top_colour[:, -80:].any() and bottom_colour[:, -80:].any()
    assert np.nonzero(top_colour[:, -80:])[0].max() < np.nonzero(bottom_colour[:, -80:])[0].min()
    assert "from -1 to 1 z" in read_png_text(path)["Description"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_save_flatmap_png_refuses_a_wrong_length(coarse_grid, tmp_path):
    with pytest.raises(FlatmapError, match=r"map.png: expected one map of"):
        save_flatmap_png(coarse_grid, np.zeros(3), tmp_path / "map.png")


def test_flatmap_underlay_is_the_sulcal_depth_where_there_is_no_value(coarse_grid):
    from flatprep.landmarks import grid_landmarks
    from flatprep.mapfigure import _context

    marks = grid_landmarks(coarse_grid)
    context = _context(coarse_grid, 1, 12)
    rows, columns = np.nonzero(coarse_grid.mask)
    grey = context.underlay[rows, columns, 0].astype(float)  # one value per valid pixel, in pixel order
    assert np.corrcoef(grey, marks.sulc)[0, 1] < -0.99  # deeper (larger sulc) is darker
    assert (context.underlay[~coarse_grid.mask] == 255).all()  # white off the cortex


def test_flatmap_outlines_are_the_borders_between_networks(coarse_grid):
    from flatprep.landmarks import grid_landmarks
    from flatprep.mapfigure import _context, draw_flatmap

    network = grid_landmarks(coarse_grid).network
    image = draw_flatmap(coarse_grid, np.full(coarse_grid.n_pixels, 0.5), cmap="gray", vmin=0, vmax=1, scale=1,
                         colorbar=False, size=12)
    height, width = coarse_grid.shape
    area = image[18 + 2 : 18 + 2 + height, :width]  # under the hemisphere-name row (12 + 6 px) and its gap
    labels = coarse_grid.to_image(network.astype(int), fill=-1)
    border = np.zeros(coarse_grid.shape, bool)
    border[:, 1:] |= (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] >= 0) & (labels[:, :-1] >= 0)
    border[1:] |= (labels[1:] != labels[:-1]) & (labels[1:] >= 0) & (labels[:-1] >= 0)
    text = np.zeros(coarse_grid.shape, bool)
    text.reshape(-1)[_context(coarse_grid, 1, 12).text[0]] = True  # pixels under the network names
    darkened = (area.max(axis=-1) < 90) & coarse_grid.mask  # the map's grey is 128, a border 35 % of it
    assert border.sum() > 100 and (darkened & border).sum() > 0.5 * border.sum()
    assert (darkened | text)[border].all()  # every border pixel is darkened where no name covers it
    assert not (darkened & ~border & ~text).any()  # and nothing else


def test_anterior_and_posterior_follow_the_visual_network(coarse_grid):
    from flatprep.landmarks import grid_landmarks
    from flatprep.mapfigure import _hemisphere_labels

    names, directions = _hemisphere_labels(coarse_grid, grid_landmarks(coarse_grid).network, 1, 12)
    assert [n.text for n in names] == ["left hemisphere", "right hemisphere"]
    # The pycortex layout puts the occipital poles in the middle: posterior ends face each other.
    assert [d.text for d in directions] == ["\u2190 anterior", "posterior \u2192", "\u2190 posterior", "anterior \u2192"]
    assert directions[0].xy[0] < directions[1].xy[0] < directions[2].xy[0] < directions[3].xy[0]


def test_carpet_orders_pixels_by_hemisphere_then_network_and_is_tall(coarse_grid, tmp_path):
    from flatprep.landmarks import grid_landmarks
    from flatprep.qc import carpet_pixels, save_carpet_png
    from flatprep.render import read_png_text

    hemi = np.asarray(coarse_grid.pixel_hemi)
    network = grid_landmarks(coarse_grid).network
    frames = np.where(hemi == 0, -2.0, 2.0)[None, :].repeat(7, axis=0)  # left black, right white
    path = save_carpet_png(frames, tmp_path / "carpet.png", tr=2.0, pixel_hemi=hemi, network=network)
    rows = carpet_pixels(hemi, network=network, n_rows=400)
    assert (np.diff(hemi[rows]) >= 0).all()
    for h in (0, 1):
        assert (np.diff(network[rows][hemi[rows] == h]) >= 0).all()  # by network within each hemisphere
    image = _read_rgb(path)
    assert image.shape[0] >= 400 and image.shape[1] >= 800
    split = int((hemi[rows] == 0).sum())
    middle = image.shape[1] // 2
    assert (image[:split, middle] == 0).all() and (image[split + 1 : 400, middle] == 255).all()
    assert tuple(image[split, middle]) == (255, 127, 14)
    # Drawn from the selected columns only, the carpet is the same picture.
    again = save_carpet_png(frames[:, rows], tmp_path / "again.png", tr=2.0, pixel_hemi=hemi[rows],
                            network=network[rows])
    assert again.read_bytes() == path.read_bytes()
    assert "7 frames, TR 2 s" in read_png_text(path)["Description"]


def test_framewise_displacement_from_the_parameters_is_powers(tmp_path):
    from flatprep.clean import MOTION_COLUMNS
    from flatprep.qc import framewise_displacement, motion_summary

    confounds = {name: np.zeros(5) for name in MOTION_COLUMNS}
    confounds["trans_x"] = np.array([0, 0.1, 0.1, 0.4, 0.4])
    confounds["rot_z"] = np.array([0, 0, 0.01, 0.01, 0.01])  # radians: 0.01 * 50 mm = 0.5 mm
    np.testing.assert_allclose(framewise_displacement(confounds), [np.nan, 0.1, 0.5, 0.3, 0.0])
    assert motion_summary(confounds) == {"mean_fd": 0.225, "max_fd": 0.5, "n_high_motion": 0}
    confounds["framewise_displacement"] = np.array([np.nan, 1, 1, 1, 0])  # a recorded column wins
    assert motion_summary(confounds) == {"mean_fd": 0.75, "max_fd": 1.0, "n_high_motion": 3}


def test_motion_figure_has_fd_with_threshold_and_separate_mm_and_degree_panels(tmp_path):
    from flatprep.clean import MOTION_COLUMNS
    from flatprep.qc import save_motion_png
    from flatprep.render import TAB10, read_png_text

    confounds = {name: np.linspace(0, 0.01, 40) * (i + 1) for i, name in enumerate(MOTION_COLUMNS)}
    confounds["framewise_displacement"] = np.r_[np.nan, np.full(39, 0.2)]
    path = save_motion_png(confounds, tmp_path / "motion.png", tr=2.0, n_dropped=4)
    image = _read_rgb(path)
    for colour in TAB10[:3]:
        assert (image == colour).all(axis=-1).any()  # every axis drawn in its colour
    assert (image == (214, 39, 40)).all(axis=-1).any()  # the dashed threshold
    assert (image == (251, 220, 220)).all(axis=-1).any()  # the dropped volumes shaded
    description = read_png_text(path)["Description"]
    assert "mean 0.200, max 0.200; 0 of 40 volumes above 0.5 mm" in description
    assert "translation (mm) x blue, y orange, z green" in description
    assert "rotation (degrees) x blue" in description and "first 4 volumes dropped" in description


def test_motion_figure_without_motion_columns_names_the_file(tmp_path):
    from flatprep.qc import save_motion_png

    with pytest.raises(FlatmapError, match=r"motion.png: no motion columns"):
        save_motion_png({"csf": np.zeros(10)}, tmp_path / "motion.png", tr=1.0)


@pytest.mark.parametrize("with_template", [True, False])
def test_reconstruction_figure_shows_hidden_pixels_as_background(coarse_grid, tmp_path, with_template):
    from flatprep.qc import save_reconstruction_figure
    from flatprep.render import BACKGROUND, colormap_lut

    grid = coarse_grid if with_template else coarse_grid.pixels  # training may hold only the mask
    frame = np.where(coarse_grid.mask, 3.0, 0.0)  # (H, W): every valid pixel at the top of the scale
    hidden = np.zeros(coarse_grid.shape, bool)
    hidden[:, : coarse_grid.shape[1] // 2] = True  # the left half is hidden from the encoder
    prediction = np.full(coarse_grid.shape, -3.0)
    path = save_reconstruction_figure(grid, frame, hidden, prediction, tmp_path / "recon.png")
    image = _read_rgb(path)
    lut = colormap_lut("RdBu_r")
    top, bottom = (image == lut[-1]).all(axis=-1), (image == lut[0]).all(axis=-1)
    # Input: all top colour; visible: the right half only; reconstruction: the hidden half predicted (bottom).
    assert top.sum() > 2 * bottom.sum() > 0
    if not with_template:
        assert (image == BACKGROUND).all(axis=-1).sum() >= (coarse_grid.mask & hidden).sum()


def test_run_figures_draw_coverage_only_below_100_percent(participant_out, tmp_path):
    import shutil

    import h5py

    from flatprep.h5 import read_run_attrs
    from flatprep.pipelines.outputs import figure_path, run_figures

    source = next((participant_out / "sub-01" / "func").glob("*task-rest*_bold.h5"))
    entities = dict(read_run_attrs(source)[0]["entities"])
    figures, summary = run_figures(tmp_path, entities, source)
    coverage = figure_path(tmp_path, entities, "coverage", "mask")
    assert summary["coverage"] == 1.0 and not coverage.exists()
    assert [caption.split(".")[0] for caption, _ in figures] == [
        "Mean before cleaning (tissue contrast)", "Temporal SNR (mean / std of the cleaned signal)",
        "Three z-scored frames", "Carpet plot (z-scored pixels against time)"]
    damaged = tmp_path / source.name
    shutil.copy(source, damaged)
    with h5py.File(damaged, "r+") as handle:
        handle["std"][:500] = 0  # 500 pixels without signal
    figures, summary = run_figures(tmp_path, entities, damaged)
    assert coverage.exists() and summary["coverage"] < 1
    assert any(path.endswith("desc-coverage_mask.png") for _, path in figures)
    figures, _ = run_figures(tmp_path, entities, source)  # complete again: the stale map goes
    assert not coverage.exists()


def test_pixels_without_a_value_are_ringed_so_grey_maps_cannot_hide_them(coarse_grid):
    from flatprep.mapfigure import NO_VALUE_EDGE, draw_flatmap

    values = np.ones(coarse_grid.n_pixels)
    whole = draw_flatmap(coarse_grid, values, cmap="gray", vmin=0, vmax=2, scale=1, size=12)
    values[np.asarray(coarse_grid.pixel_hemi) == 0] = np.nan  # the left hemisphere has no value
    part = draw_flatmap(coarse_grid, values, cmap="gray", vmin=0, vmax=2, scale=1, size=12)
    assert not (whole == NO_VALUE_EDGE).all(axis=-1).any()
    ring_columns = np.nonzero((part == NO_VALUE_EDGE).all(axis=-1))[1]
    left_columns = np.nonzero(coarse_grid.mask[:, : coarse_grid.shape[1] // 2].any(axis=0))[0]
    assert ring_columns.size > 100 and ring_columns.max() <= left_columns.max() + 1  # around the left one only
