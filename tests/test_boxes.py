"""Boxes from maps (peaks, regions) and their way back to the original image through resize and crop."""

import numpy as np
import pytest

from chexcam.boxes import boxes_from_map, peak_boxes, peak_point, region_boxes
from chexcam.data.transforms import EvalTransform
from chexcam.errors import ChexcamError


def test_regions_largest_first_with_nan_outside():
    m = np.zeros((20, 30), np.float32)
    m[5:8, 10:15] = 1.0  # 15 px, the maximum
    m[12:18, 2:6] = 0.8  # 24 px, larger
    m[0:2, 25:27] = 0.6  # 4 px
    m[:, 29] = np.nan
    boxes, scores = region_boxes(m, threshold=0.5, max_boxes=2)
    np.testing.assert_array_equal(boxes, [[2, 12, 6, 18], [10, 5, 15, 8]])
    np.testing.assert_allclose(scores, [0.8, 1.0])
    assert len(region_boxes(m, 0.5, 5)[0]) == 3
    assert len(region_boxes(m, 0.9, 5)[0]) == 1  # only the maximum survives 90%


def test_peaks_fixed_size_boxes_clipped_and_spaced():
    m = np.zeros((64, 64), np.float32)
    for (r, c), v in {(10, 10): 1.0, (40, 50): 0.9, (12, 13): 0.95, (60, 2): 0.3}.items():
        m[r, c] = v
    boxes, scores = peak_boxes(m, num_peaks=3, min_distance=5, threshold_rel=0.5, box_size=(12, 12))
    # (12, 13) is within 5 px of the stronger (10, 10): suppressed; (60, 2) is below half the max
    np.testing.assert_allclose(scores, [1.0, 0.9])
    np.testing.assert_allclose(boxes, [[4.5, 4.5, 16.5, 16.5], [44.5, 34.5, 56.5, 46.5]])
    edge = np.zeros((64, 64), np.float32)
    edge[0, 63] = 1
    np.testing.assert_allclose(peak_boxes(edge, 1, 1, 0.5, (12, 12))[0], [[57.5, 0, 64, 6.5]])


def test_constant_all_nan_and_bad_maps_give_no_boxes_or_clear_errors():
    for m in (np.full((8, 8), 3.0), np.full((8, 8), np.nan), np.zeros((8, 8))):
        for mode in ("regions", "peaks"):
            b, s = boxes_from_map(m, mode)
            assert b.shape == (0, 4) and s.shape == (0,)
    with pytest.raises(ChexcamError, match="2-D"):
        region_boxes(np.zeros((2, 8, 8)))
    with pytest.raises(ChexcamError, match="box mode"):
        boxes_from_map(np.zeros((8, 8)), "blobs")
    m = np.zeros((8, 8))
    m[3, 5] = 1
    m[0, 0] = np.nan
    assert peak_point(m) == (5.5, 3.5)


def test_boxes_map_back_through_resize_and_crop():
    """A lesion planted in original pixels is boxed in the network input and lands back on itself."""
    h, w = 300, 400
    img = np.zeros((h, w, 3), np.uint8)
    truth = (150, 100, 250, 180)  # x1, y1, x2, y2 in the original image
    img[truth[1]:truth[3], truth[0]:truth[2]] = 255
    tf = EvalTransform(256, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x, geo = tf(img)
    assert (geo.sx, geo.sy, geo.x0, geo.y0) == (341 / 400, 256 / 300, 58.0, 16.0)  # 256x341, then the crop
    saliency = (x.mean(axis=0) + 1.0) / 2.0  # the crop's brightness as a perfect map
    boxes, _ = region_boxes(saliency, 0.5, 1)
    back = geo.box_to_original(boxes[0])
    np.testing.assert_allclose(back, truth, atol=1.5)
    # the other route: the map goes back to the original first, then it is boxed there
    full = geo.map_to_original(saliency)
    assert full.shape == (h, w) and np.isnan(full[:, :5]).all() and np.isnan(full[:, -5:]).all()
    boxes, _ = region_boxes(full, 0.5, 1)
    np.testing.assert_allclose(boxes[0], truth, atol=1.5)
    x2, y2 = peak_point(full)
    assert truth[0] <= x2 <= truth[2] and truth[1] <= y2 <= truth[3]
