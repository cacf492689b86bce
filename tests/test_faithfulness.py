"""Deletion/insertion AUC, Average Drop and Increase in Confidence on predictors with known answers."""

import numpy as np
import paddle
import pytest

import chexcam
from chexcam.metrics.faithfulness import (
    auc,
    average_drop,
    deletion_auc,
    explanation_map_inputs,
    increase_in_confidence,
    insertion_auc,
    predictor,
)

H = W = 10
REGION = np.zeros((H, W), bool)
REGION[2:4, 3:8] = True  # 10 of 100 pixels carry the evidence


def region_predict(x):
    """Class 1's 'probability' is the fraction of the region still at 1; class 0 is constant 0.5."""
    frac = (x[:, 0][:, REGION] == 1.0).mean(axis=1)
    return np.stack([np.full(len(x), 0.5), frac], axis=1)


def test_auc_is_the_trapezoid_rule():
    assert auc(np.array([1.0, 0.0])) == pytest.approx(0.5)
    assert auc(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert auc(np.array([0.0, 1.0, 1.0, 1.0, 1.0])) == pytest.approx(0.875)


def test_deletion_of_a_perfect_map_falls_at_once_and_a_reversed_one_late():
    x = np.ones((3, H, W), np.float32)
    perfect = REGION.astype(float) + np.linspace(0, 0.01, H * W).reshape(H, W)  # ties broken
    score, curve = deletion_auc(region_predict, x, perfect, target=1, steps=10)
    # 10 steps of 10 px: the whole region goes in the first step
    np.testing.assert_allclose(curve, [1.0] + [0.0] * 10)
    assert score == pytest.approx(0.05)
    worst, _ = deletion_auc(region_predict, x, -perfect, target=1, steps=10)
    assert worst == pytest.approx(0.95)  # region removed in the last step
    ins, curve = insertion_auc(region_predict, x, perfect, target=1, steps=10, baseline=np.zeros_like(x))
    np.testing.assert_allclose(curve, [0.0] + [1.0] * 10)
    assert ins == pytest.approx(0.95)
    # the target column is used: class 0 never moves
    assert deletion_auc(region_predict, x, perfect, target=0, steps=10)[0] == pytest.approx(0.5)


def test_average_drop_and_increase_in_confidence():
    y = np.array([0.8, 0.5, 0.4, 0.9])
    o = np.array([0.4, 0.6, 0.4, 0.0])
    # drops: 0.5, 0 (increase), 0, 1 -> mean 37.5 %
    assert average_drop(y, o) == pytest.approx(37.5)
    assert increase_in_confidence(y, o) == pytest.approx(25.0)
    x = np.ones((2, 3, 2, 2), np.float32)
    maps = np.array([[[1, 0], [0.5, np.nan]], [[0, 0], [0, 1]]], np.float32)
    np.testing.assert_allclose(explanation_map_inputs(x, maps)[0, 1], [[1, 0], [0.5, 0]])


def test_predictor_and_maps_of_a_model():
    paddle.seed(0)
    model = chexcam.create_model("densenet_tiny", num_classes=2, output_stride=8)
    model.eval()
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype("float32")
    predict = predictor(model, batch_size=2)
    probs, maps = chexcam.explain(model, x)
    np.testing.assert_allclose(predict(x), probs, rtol=1e-5)
    d, curve = deletion_auc(predict, x[0], maps[0, 1], target=1, steps=8, batch_size=4)
    i, _ = insertion_auc(predict, x[0], maps[0, 1], target=1, steps=8)
    assert len(curve) == 9 and 0 <= d <= 1 and 0 <= i <= 1
    assert curve[0] == pytest.approx(probs[0, 1], rel=1e-5)
    masked = predict(explanation_map_inputs(x, maps[:, 1]))[:, 1]
    assert 0 <= average_drop(probs[:, 1], masked) <= 100
