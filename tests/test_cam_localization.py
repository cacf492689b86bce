"""Acceptance: a small model trained for a few seconds on planted lesions points at them on held-out images."""

import numpy as np
import paddle
import pytest
from paddle import nn

import chexcam
from chexcam.boxes import peak_point, region_boxes
from chexcam.metrics.localization import iobb, point_in_boxes

SIGMA = 3.0


def make_lesions(n, rng, size=64):
    """Noise images; every one has a dark distractor blob, the positives (odd indices) also a bright lesion.

    Returns images, labels and each image's lesion box (centre +- 2 sigma) in pixel-edge coordinates.
    """
    x = rng.normal(0.0, 0.5, (n, 3, size, size)).astype("float32")
    y = (np.arange(n) % 2).astype("float32")
    yy, xx = np.mgrid[:size, :size] + 0.5
    boxes = []
    for i in range(n):
        cx, cy, dx, dy = rng.uniform(8, size - 8, 4)
        x[i] -= 1.5 * np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * SIGMA ** 2))
        if y[i]:
            x[i] += 1.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * SIGMA ** 2))
        boxes.append((cx - 2 * SIGMA, cy - 2 * SIGMA, cx + 2 * SIGMA, cy + 2 * SIGMA))
    return x, y, np.array(boxes)


class LesionNet(nn.Layer):
    """Two convolutions (stride 2), GAP and a Linear head: the chexcam model contract in miniature."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2D(3, 8, 5, stride=2, padding=2), nn.ReLU(),
                                      nn.Conv2D(8, 16, 3, padding=1), nn.ReLU())
        self.cam_layer, self.num_classes, self.labels = "features.3", 1, ("Lesion",)
        self.global_pool = nn.AdaptiveAvgPool2D(1)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(paddle.flatten(self.global_pool(self.features(x)), 1))


@pytest.fixture(scope="module")
def trained():
    paddle.seed(0)
    rng = np.random.default_rng(0)
    model = LesionNet()
    opt = paddle.optimizer.Adam(learning_rate=1e-2, parameters=model.parameters())
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(100):
        x, y, _ = make_lesions(32, rng)
        loss = loss_fn(model(paddle.to_tensor(x)).squeeze(1), paddle.to_tensor(y))
        loss.backward()
        opt.step()
        opt.clear_grad()
    model.eval()
    return model


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcampp"])
def test_pointing_game_on_held_out_planted_lesions(trained, method):
    x, y, boxes = make_lesions(120, np.random.default_rng(1))  # a different seed: held out
    pos = y == 1
    probs, maps = chexcam.explain(trained, x, method=method)
    acc = np.mean((probs[:, 0] > 0.5) == pos)
    hits = [point_in_boxes(peak_point(m[0]), [b]) for m, b in zip(maps[pos], boxes[pos])]
    rate = float(np.mean(hits))
    print(f"{method}: accuracy {acc:.3f}, pointing game {rate:.3f} on {pos.sum()} held-out lesions")
    assert acc >= 0.9
    assert rate >= 0.9
    # the strongest region box overlaps the lesion too
    first = [region_boxes(m[0], 0.5, 1)[0] for m in maps[pos]]
    assert np.mean([len(b) and iobb(b[0], g) > 0.25 for b, g in zip(first, boxes[pos])]) >= 0.8


@pytest.mark.slow
def test_a_wrong_geometry_would_fail(trained):
    """The test can fail: the transposed maps (a classic x/y mix-up) point elsewhere."""
    x, y, boxes = make_lesions(60, np.random.default_rng(2))
    pos = y == 1
    _, maps = chexcam.explain(trained, x[pos])
    hits = [point_in_boxes(peak_point(m[0].T), [b]) for m, b in zip(maps, boxes[pos])]
    assert np.mean(hits) < 0.5
