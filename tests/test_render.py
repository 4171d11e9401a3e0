import numpy as np
import pytest

from flatprep.render import colorize, draw_trace, png_bytes, read_png_text, write_png


def test_png_round_trips_through_an_independent_decoder_with_its_text(tmp_path):
    import matplotlib.image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)
    path = write_png(tmp_path / "rgb.png", rgb, text={"Title": "a map", "Description": "scale 0 to 1"})
    write_png(tmp_path / "grey.png", grey)
    np.testing.assert_array_equal(np.round(matplotlib.image.imread(path) * 255).astype(np.uint8), rgb)
    np.testing.assert_array_equal(np.round(matplotlib.image.imread(tmp_path / "grey.png") * 255), grey)
    assert read_png_text(path) == {"Title": "a map", "Description": "scale 0 to 1"}
    assert read_png_text(tmp_path / "grey.png") == {}
    assert png_bytes(rgb) == png_bytes(rgb.copy())  # same pixels, same bytes
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("cmap", ["RdBu_r", "viridis", "gray"])
def test_colorize_matches_matplotlib_and_paints_nan_as_background(cmap):
    import matplotlib

    values = np.r_[np.linspace(-3.5, 3.5, 1001), np.nan]
    rgb = colorize(values, cmap, -3.0, 3.0)
    norm = matplotlib.colors.Normalize(-3.0, 3.0)
    expected = np.round(matplotlib.colormaps[cmap](norm(values[:-1]))[:, :3] * 255)
    np.testing.assert_array_equal(rgb[:-1], expected)
    assert tuple(rgb[-1]) == (217, 217, 217)


def test_draw_trace_puts_a_rising_line_from_bottom_left_to_top_right():
    panel = np.zeros((11, 21, 3), np.uint8)
    draw_trace(panel, np.arange(5.0), 0.0, 4.0, (255, 0, 0))
    red = panel[..., 0] == 255
    assert red[10, 0] and red[0, 20] and red.any(axis=0).all()  # every column drawn, ends at the corners
    assert not red[0, 0] and not red[10, 20]


@pytest.mark.parametrize("low, high, expected", [(0, 103.2, ["0", "25", "50", "75", "100"]),
                                                 (-3, 3, ["-2", "0", "2"]),
                                                 (0, 0.0123, ["0.0000", "0.0025", "0.0050", "0.0075", "0.0100"]),
                                                 (-0.31, 0.2, ["-0.2", "0.0", "0.2"])])
def test_nice_ticks_are_round_values_inside_the_range(low, high, expected):
    from flatprep.render import nice_ticks

    ticks, labels = nice_ticks(low, high)
    assert labels == expected
    assert low <= ticks.min() and ticks.max() <= high


def test_colorbar_axis_puts_vmax_on_top_and_writes_tick_labels_beside_their_ticks():
    from flatprep.render import AXIS, colorbar_axis, colormap_lut

    bar = colorbar_axis(200, "viridis", 0.0, 100.0, label="tSNR")
    lut = colormap_lut("viridis")
    index = [int(np.argmin(np.abs(lut.astype(int) - rgb.astype(int)).sum(axis=1))) for rgb in bar[1:-1, 8]]
    assert index[0] >= 254 and index[-1] <= 1 and (np.diff(index) <= 0).all()  # last colour on top
    tick_rows = np.nonzero((bar[:, 17] == AXIS).all(axis=-1))[0]  # tick marks just right of the bar
    np.testing.assert_array_equal(tick_rows, np.round(np.arange(0, 101, 20) / 100 * 199))  # 100, 80, ... 0
    ink = bar[:, 22:].min(axis=-1) < 100  # text right of the ticks
    for row in tick_rows:
        assert ink[max(row - 6, 0) : row + 7].any()  # a label beside every tick


def test_draw_texts_gives_the_same_pixels_every_time():
    from flatprep.render import Label, draw_texts

    labels = [Label((5, 5), "Vis", 12, halo=True), Label((60, 20), "posterior \u2192", 12, anchor="rm")]
    first = draw_texts(np.full((40, 120, 3), 200, np.uint8), labels)
    second = draw_texts(np.full((40, 120, 3), 200, np.uint8), labels)
    assert (first != 200).any() and (first == second).all()


def test_plot_panel_draws_the_trace_inside_its_frame_and_a_dashed_threshold():
    from flatprep.render import plot_panel

    panel = plot_panel([(np.linspace(0, 1, 50), (0, 0, 255))], duration=49.0, low=0.0, high=1.0, width=400,
                       height=140, ylabel="mm", hlines=[(0.5, (255, 0, 0))])
    blue = np.nonzero((panel == (0, 0, 255)).all(axis=-1))
    red_rows, red_columns = np.nonzero((panel == (255, 0, 0)).all(axis=-1))
    assert len(set(red_rows)) == 1 and 0.3 < len(red_columns) / (red_columns.max() - red_columns.min() + 1) < 0.7
    # The rising trace ends at the top right and starts at the bottom left of the plot area.
    assert blue[0][np.argmax(blue[1])] < blue[0][np.argmin(blue[1])]
    assert blue[0].min() < red_rows[0] < blue[0].max()
