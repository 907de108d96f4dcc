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
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

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


def roc_points(scores: np.ndarray, truth: np.ndarray, num: int = 2000) -> dict[str, list[float]]:
    """The ROC curve thinned to about ``num`` points spread evenly along it (FPR + TPR), so its trapezoid
    area stays within 1 / (2 num) of the AUROC."""
    fpr, tpr, _ = roc_curve(truth.astype(bool), scores)
    keep = _spread(fpr + tpr, num)
    return {"fpr": fpr[keep].round(6).tolist(), "tpr": tpr[keep].round(6).tolist()}


def pr_points(scores: np.ndarray, truth: np.ndarray, num: int = 1000) -> dict[str, list[float]]:
    """The precision-recall curve in at most ``num`` recall steps, by increasing recall.

    Each step's precision is the mean precision over the recall it spans, so the step area
    (sum of recall increments x precision) is exactly the average precision (AUPRC).
    """
    precision, recall, _ = precision_recall_curve(truth.astype(bool), scores)
    precision, recall = precision[::-1], recall[::-1]  # recall ascending, from 0
    gains = np.diff(recall)  # the recall each point adds; average precision = sum(gains * precision[1:])
    keep = _spread(recall, num)
    keep = keep[keep > 0]
    edges = np.r_[0, keep]
    mass = np.add.reduceat(gains * precision[1:], edges[:-1])
    width = np.add.reduceat(gains, edges[:-1])
    mean_precision = np.where(width > 0, mass / np.maximum(width, 1e-12), precision[keep])
    return {"recall": np.r_[0.0, recall[keep]].round(8).tolist(),
            "precision": np.r_[mean_precision[0], mean_precision].round(8).tolist()}


def _spread(position: np.ndarray, num: int) -> np.ndarray:
    """Indices of about ``num`` points of a curve whose ``position`` rises from start to end, evenly spread
    in ``position``; the first and last always kept."""
    marks = np.linspace(position[0], position[-1], num)
    picked = np.searchsorted(position, marks, side="left").clip(0, len(position) - 1)
    return np.unique(np.r_[0, picked, len(position) - 1])


def operating_point(mask: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Where a mask sits on the curves: FPR, TPR (= recall) and precision of ``mask`` against ``truth``."""
    mask, truth = mask.astype(bool), truth.astype(bool)
    tp, fp = int((mask & truth).sum()), int((mask & ~truth).sum())
    return {"fpr": fp / max(int((~truth).sum()), 1), "tpr": tp / max(int(truth.sum()), 1),
            "precision": tp / (tp + fp) if tp + fp else 1.0}


def score_histograms(scores: np.ndarray, truth: np.ndarray, bins: int = 60) -> dict[str, list[float]]:
    """Densities of the score in healthy and in lesion voxels, on shared bins up to the 99.9th percentile."""
    top = float(np.quantile(scores, 0.999))
    edges = np.linspace(float(scores.min()), top if top > scores.min() else float(scores.min()) + 1, bins + 1)
    clipped = np.clip(scores, edges[0], edges[-1])
    truth = truth.astype(bool)
    density = lambda values: np.histogram(values, edges, density=True)[0] if values.size else np.zeros(bins)  # noqa: E731
    return {"edges": edges.round(6).tolist(), "healthy": density(clipped[~truth]).round(6).tolist(),
            "lesion": density(clipped[truth]).round(6).tolist()}


def size_bin(lesion_ml: float) -> str:
    return next(name for lo, hi, name in SIZE_BINS_ML if lo <= lesion_ml < hi)


def nanmean(values: list[float]) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def nanstd(values: list[float]) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.std(values)) if values else float("nan")
