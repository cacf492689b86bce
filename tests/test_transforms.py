import numpy as np
import pytest

from chexcam.data.transforms import EvalTransform


def test_eval_transform_shape_and_normalization():
    tf = EvalTransform(256, 224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    img = np.full((1024, 1024, 3), 255, np.uint8)
    x, geo = tf(img)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x, 2.0)
    assert (geo.orig_h, geo.orig_w, geo.out_h, geo.out_w) == (1024, 1024, 224, 224)
    assert geo.sx == geo.sy == 0.25 and geo.x0 == geo.y0 == 16


@pytest.mark.parametrize("shape", [(1024, 1024), (600, 800), (900, 500)])
def test_box_and_map_go_back_to_original_pixels(shape):
    h, w = shape
    tf = EvalTransform(256, 224, (0, 0, 0), (1, 1, 1))
    img = np.zeros((h, w, 3), np.uint8)
    _, geo = tf(img)
    # the whole network input maps to the centre crop region of the original
    x1, y1, x2, y2 = geo.box_to_original((0, 0, 224, 224))
    assert x1 == pytest.approx(geo.x0 / geo.sx) and x2 == pytest.approx((geo.x0 + 224) / geo.sx)
    assert y1 == pytest.approx(geo.y0 / geo.sy) and y2 == pytest.approx((geo.y0 + 224) / geo.sy)
    # a map equal to the input's x coordinate maps to the original's x coordinate
    u = np.tile(np.arange(224, dtype=np.float32) + 0.5, (224, 1))
    full = geo.map_to_original(u)
    assert full.shape == (h, w)
    cols = (np.arange(w) + 0.5) * geo.sx - geo.x0
    inside = (cols > 1) & (cols < 223)
    row = full[h // 2]
    np.testing.assert_allclose(row[inside], cols[inside], atol=1e-3)
    assert np.isnan(row[cols < -1]).all()
