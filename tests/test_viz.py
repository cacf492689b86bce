import numpy as np
import pytest

from chexcam import viz


def test_mosaic_is_a_3x5_grid_for_14_findings():
    img = np.zeros((100, 100, 3), np.uint8)
    maps = np.random.default_rng(0).random((14, 50, 50)).astype(np.float32)
    sheet = viz.mosaic(img, maps, [f"c{i}: 1.0%" for i in range(14)], tile=64, with_colorbar=False)
    pad = 4
    assert sheet.shape == (3 * 64 + 4 * pad, 5 * 64 + 6 * pad, 3)


def test_map_to_uint8_handles_nan_and_range():
    m = np.array([[np.nan, -1.0, 0.5, 2.0]], np.float32)
    assert viz.map_to_uint8(m).tolist() == [[0, 0, 128, 255]]


def test_unknown_colormap():
    with pytest.raises(ValueError, match="colormap"):
        viz.colorize(np.zeros((2, 2)), "rainbowz")
