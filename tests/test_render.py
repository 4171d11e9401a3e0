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
