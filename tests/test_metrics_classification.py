"""Classification metrics: exact small cases, undefined AUROC as None, bootstrap intervals."""

import numpy as np
import pytest

from chexcam.metrics import classification as M


def test_auroc_exact_and_undefined():
    y = [0, 0, 1, 1]
    assert M.auroc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert M.auroc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert M.auroc([1, 1], [0.1, 0.2]) is None
    per = M.per_class_auroc(np.array([[0, 0], [1, 0], [0, 0], [1, 0]]), np.array([[0.1, 0.2], [0.9, 0.3],
                                                                                  [0.2, 0.1], [0.8, 0.5]]))
    assert per == [1.0, None]
    assert M.mean_auroc(per) == 1.0 and M.mean_auroc([None, None]) is None


def test_bootstrap_interval_brackets_point_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (200, 2))
    p = y * 0.3 + rng.random((200, 2)) * 0.7
    point = M.per_class_auroc(y, p)
    ci = M.bootstrap_auroc(y, p, n=200, ci=0.95, seed=3)
    for k in range(2):
        assert ci["low"][k] < point[k] < ci["high"][k]
    assert ci["mean_low"] < M.mean_auroc(point) < ci["mean_high"]
    assert ci == M.bootstrap_auroc(y, p, n=200, ci=0.95, seed=3)
    none = M.bootstrap_auroc(np.zeros((10, 1)), rng.random((10, 1)), n=50)
    assert none["low"] == [None] and none["mean_low"] is None


def test_best_f1_threshold_and_binary_report():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.55, 0.7, 0.9])
    thr = M.best_f1_threshold(y, p)
    assert thr == pytest.approx(0.55) and M.f1_at(y, p, thr) == pytest.approx(6 / 7)
    assert M.best_f1_threshold(np.zeros(4), p[:4]) is None
    rep = M.binary_report(y, p, 0.5)
    assert rep["confusion"] == [[2, 1], [0, 3]]
    assert rep["accuracy"] == pytest.approx(5 / 6) and rep["recall"] == 1.0 and rep["precision"] == 0.75
    assert rep["auroc"] == pytest.approx(8 / 9)


def test_bce_loss_matches_formula():
    y = np.array([[1.0], [0.0]])
    z = np.array([[2.0], [-1.0]])
    ref = -np.mean([np.log(1 / (1 + np.exp(-2.0))), np.log(1 - 1 / (1 + np.exp(1.0)))])
    assert M.bce_loss(y, z) == pytest.approx(ref)
