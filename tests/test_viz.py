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


def test_nan_outside_the_crop_is_faded_image_not_a_cold_map():
    img = np.full((40, 40, 3), 200, np.uint8)
    img[:, :, 0] = 50
    m = np.full((40, 40), 0.0, np.float32)
    m[:, :8] = np.nan
    out = viz.overlay(img, m, "jet", 0.4)
    np.testing.assert_array_equal(out[:, :8], viz.outside(img)[:, :8])
    cold = viz.overlay(img, np.zeros((40, 40), np.float32), "jet", 0.4)
    np.testing.assert_array_equal(out[:, 8:], cold[:, 8:])
    assert np.abs(out[:, :8].astype(int) - cold[:, :8]).max() > 40  # visibly not the map's 0 colour
    grey = viz.outside(img)[0, 0]
    assert np.ptp(grey.astype(int)) < np.ptp(img[0, 0].astype(int))  # desaturated


def test_resize_map_keeps_nan_and_border_values():
    m = np.full((100, 100), 0.8, np.float32)
    m[:, :20] = np.nan
    small = viz.resize_map(m, (25, 25))
    assert np.isnan(small[:, :4]).all() and np.isfinite(small[:, 6:]).all()
    np.testing.assert_allclose(small[np.isfinite(small)], 0.8, atol=1e-6)  # no pull towards 0 at the edge


def test_mosaic_order_sorts_tiles_and_titles_must_match():
    img = np.zeros((32, 32, 3), np.uint8)
    maps = np.stack([np.full((32, 32), v, np.float32) for v in (0.0, 0.5, 1.0)])
    kw = dict(tile=32, with_colorbar=False, alpha=1.0)
    plain = viz.mosaic(img, maps, ["a", "b", "c"], **kw)
    ordered = viz.mosaic(img, maps, ["a", "b", "c"], order=[2, 1, 0], **kw)
    tile = (slice(20, 30), slice(4 + 36 + 2, 4 + 36 + 30))  # below the label band of tile 1
    np.testing.assert_array_equal(ordered[tile], plain[(tile[0], slice(4 + 3 * 36 + 2, 4 + 3 * 36 + 30))])
    with pytest.raises(ValueError, match="titles"):
        viz.mosaic(img, maps, ["a"], **kw)


def test_contact_sheet_blocks_and_cell_tiles():
    img = np.full((50, 70, 3), 120, np.uint8)
    m = np.random.default_rng(0).random((50, 70)).astype(np.float32)
    row = [viz.fit_tile(img, 64)] + viz.cell_tiles(img, m, [(10, 10, 22, 22)], tile=64)
    assert all(t.shape == (64, 64, 3) for t in row)
    sheet = viz.contact_sheet([row] * 5, [f"r{i}" for i in range(5)], ["original", "map", "boxes"], wrap=3,
                              colormap=None)
    pad = 4
    block_w = 3 * 64 + 4 * pad
    assert sheet.shape[1] == 2 * block_w  # 5 rows wrapped into blocks of 3
    assert sheet.dtype == np.uint8
