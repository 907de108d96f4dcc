"""Metrics and the three named thresholds of the evaluation protocol of anodiff.

Every figure names its threshold and its averaging:

* thresholds: *calibrated* (label-free: the healthy false-positive rate fixed at
  training), *validation-best* (best Dice on the other test cases, leave one case
  out, applied unchanged to the held-out case), *best possible* (best pooled Dice
  on the test cases themselves, an upper bound, never the result);
* averaging: per-volume mean (with standard deviation) and pooled over all brain
  voxels of the test set;
* where: inside the brain mask only.

Voxel-level AUROC/AUPRC come from scikit-learn, HD95 from MONAI. This module
computes numbers from score maps and labels; it does not run any network.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from sklearn.metrics import average_precision_score, roc_auc_score

from anodiff.errors import DataError

SIZE_BINS_ML = ((0.0, 1.0, "small (<1 ml)"), (1.0, 10.0, "medium (1-10 ml)"), (10.0, np.inf, "large (>10 ml)"))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays; 1.0 when both are empty (a correctly clean healthy case)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


def auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Voxel AUROC; NaN when only one class is present."""
    truth = truth.astype(bool)
    return float(roc_auc_score(truth, scores)) if 0 < truth.sum() < truth.size else float("nan")


def auprc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Voxel average precision; NaN without positives."""
    truth = truth.astype(bool)
    return float(average_precision_score(truth, scores)) if 0 < truth.sum() < truth.size else float("nan")


def hd95(mask: np.ndarray, truth: np.ndarray, spacing_mm) -> float:
    """95th-percentile symmetric surface distance in mm (MONAI); NaN when either mask is empty."""
    if not mask.any() or not truth.any():
        return float("nan")
    pred = torch.from_numpy(np.ascontiguousarray(mask))[None, None]
    true = torch.from_numpy(np.ascontiguousarray(truth))[None, None]
    with warnings.catch_warnings():  # MONAI warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        distance = compute_hausdorff_distance(pred, true, include_background=True, percentile=95,
                                              spacing=[float(s) for s in spacing_mm])
    return float(distance.flatten()[0])


def calibrate_threshold(healthy_scores: list[np.ndarray], fpr: float) -> float:
    """The score quantile that flags ``fpr`` of healthy brain voxels (the label-free threshold)."""
    values = np.concatenate([s.ravel() for s in healthy_scores])
    if values.size == 0:
        raise DataError("no healthy brain voxels to calibrate the threshold on")
    return float(np.quantile(values, 1 - fpr))


def dice_curve(scores: np.ndarray, truth: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Pooled Dice of ``scores > t`` for every t in ``thresholds`` (ascending), in one sort."""
    order = np.sort(scores)
    positives = np.sort(scores[truth.astype(bool)])
    above = order.size - np.searchsorted(order, thresholds, side="right")  # predicted positives
    tp = positives.size - np.searchsorted(positives, thresholds, side="right")
    denom = above + positives.size
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)


def candidate_thresholds(scores: np.ndarray, num: int = 400) -> np.ndarray:
    """Thresholds spread over the upper score quantiles, where masks are sparse."""
    quantiles = 1 - np.geomspace(0.5, 1e-5, num)
    return np.unique(np.quantile(scores, quantiles))


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(threshold, pooled Dice) maximising Dice of ``scores > threshold``."""
    thresholds = candidate_thresholds(scores)
    curve = dice_curve(scores, truth, thresholds)
    best = int(np.argmax(curve))
    return float(thresholds[best]), float(curve[best])


def leave_one_out_thresholds(scores: list[np.ndarray], truths: list[np.ndarray]) -> list[float]:
    """For each case, the Dice-best threshold chosen on all other cases (validation-best)."""
    out = []
    for i in range(len(scores)):
        others = [j for j in range(len(scores)) if j != i]
        if not others or not any(truths[j].any() for j in others):
            out.append(float("nan"))
            continue
        s = np.concatenate([scores[j] for j in others])
        t = np.concatenate([truths[j] for j in others])
        out.append(best_threshold(s, t)[0])
    return out


def size_bin(lesion_ml: float) -> str:
    return next(name for lo, hi, name in SIZE_BINS_ML if lo <= lesion_ml < hi)


def nanmean(values: list[float]) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def nanstd(values: list[float]) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.std(values)) if values else float("nan")
