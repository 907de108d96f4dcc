"""Metrics on hand-made masks, checked against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anodiff.evaluation.anomaly import summarize_method
from anodiff.evaluation.metrics import (
    auroc,
    best_threshold,
    calibrate_threshold,
    dice,
    dice_curve,
    leave_one_out_thresholds,
)
from anodiff.inference.masks import remove_small_components


def test_dice_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 voxels
    b[1:3, 1:3] = True  # 4 voxels, 1 shared
    assert dice(a, b) == pytest.approx(2 * 1 / 8)
    assert dice(a, a) == 1.0 and dice(np.zeros(3), np.zeros(3)) == 1.0 and dice(a, np.zeros_like(a)) == 0.0


def test_dice_curve_matches_direct_computation():
    rng = np.random.default_rng(0)
    truth = rng.random(2000) < 0.1
    scores = rng.random(2000) + truth * 0.5
    thresholds = np.array([0.2, 0.6, 0.9, 1.2])
    expected = [dice(scores > t, truth) for t in thresholds]
    np.testing.assert_allclose(dice_curve(scores, truth, thresholds), expected)
    t, d = best_threshold(scores, truth)
    assert d == pytest.approx(dice(scores > t, truth)) and d >= max(expected) - 1e-9


def test_auroc_matches_sklearn_and_is_nan_for_one_class():
    rng = np.random.default_rng(1)
    truth = rng.random(500) < 0.2
    scores = rng.random(500) + truth
    assert auroc(scores, truth) == pytest.approx(roc_auc_score(truth, scores))
    assert np.isnan(auroc(scores, np.zeros(500, bool)))


def test_leave_one_out_never_sees_its_own_case():
    truths = [np.r_[np.ones(10, bool), np.zeros(90, bool)] for _ in range(3)]
    scores = [np.r_[np.full(10, 0.9), np.full(90, 0.1)], np.r_[np.full(10, 0.9), np.full(90, 0.1)],
              np.r_[np.full(10, 0.05), np.full(90, 0.02)]]  # case 2 needs a lower threshold
    loo = leave_one_out_thresholds(scores, truths)
    assert dice(scores[2] > loo[2], truths[2]) == 0.0  # chosen on cases 0 and 1 only
    summary = summarize_method(scores, truths, calibrated=0.5)
    assert summary["dice_best_possible_pooled"] >= summary["dice_validation_best_pooled"]
    assert summary["dice_calibrated_pooled"] == pytest.approx(2 * 20 / 50)


def test_calibrated_threshold_gives_the_healthy_fpr():
    healthy = [np.random.default_rng(s).random(10000) for s in range(3)]
    threshold = calibrate_threshold(healthy, 0.01)
    assert np.mean(np.concatenate(healthy) > threshold) == pytest.approx(0.01, abs=1e-3)


def test_small_components_are_removed():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[1, 1, 1] = 1
    mask[5:8, 5:8, 5:8] = 1
    kept = remove_small_components(mask, 5)
    assert kept[1, 1, 1] == 0 and kept[5:8, 5:8, 5:8].all() and kept.dtype == np.uint8
