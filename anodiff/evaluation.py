"""Metrics and reports, following the evaluation protocol of anodiff.

Every figure names its threshold and its averaging:

* thresholds: *calibrated* (label-free: the healthy false-positive rate fixed at
  training), *validation-best* (best Dice on the other test cases, leave one case
  out, applied unchanged to the held-out case), *best possible* (best pooled Dice
  on the test cases themselves, an upper bound, never the result);
* averaging: per-volume mean (with standard deviation) and pooled over all brain
  voxels of the test set;
* where: inside the brain mask only.

Voxel-level AUROC/AUPRC come from scikit-learn. This module computes numbers from
score maps and labels; it does not run any network.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

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


def summarize_method(scores: list[np.ndarray], truths: list[np.ndarray], *, calibrated: float,
                     masks_calibrated: list[np.ndarray] | None = None) -> dict:
    """All figures of one method over the test cases (arrays: brain voxels of each case).

    ``masks_calibrated`` are the final masks at the calibrated threshold (after
    connected-component removal); without them the plain threshold is used.
    """
    pooled_s, pooled_t = np.concatenate(scores), np.concatenate(truths)
    loo = leave_one_out_thresholds(scores, truths)
    # The bound searches the validation-best thresholds too, so it is never below them.
    candidates = np.unique(np.r_[candidate_thresholds(pooled_s), [t for t in loo if np.isfinite(t)]])
    curve = dice_curve(pooled_s, pooled_t, candidates)
    best_t, best_dice = float(candidates[int(np.argmax(curve))]), float(curve.max())
    masks = masks_calibrated or [s > calibrated for s in scores]
    per_case_cal = [dice(m, t) for m, t in zip(masks, truths)]
    per_case_val = [dice(s > thr, t) if np.isfinite(thr) else float("nan") for s, t, thr in zip(scores, truths, loo)]
    per_case_auroc = [auroc(s, t) for s, t in zip(scores, truths)]
    per_case_auprc = [auprc(s, t) for s, t in zip(scores, truths)]
    per_case_best = [best_threshold(s, t)[1] if t.any() else float("nan") for s, t in zip(scores, truths)]
    val_masks = [s > thr for s, thr in zip(scores, loo) if np.isfinite(thr)]
    val_truths = [t for t, thr in zip(truths, loo) if np.isfinite(thr)]
    lesion_cases = [i for i, t in enumerate(truths) if t.any()]
    return {
        "auroc_pooled": auroc(pooled_s, pooled_t),
        "auprc_pooled": auprc(pooled_s, pooled_t),
        "auroc_per_volume_mean": nanmean([per_case_auroc[i] for i in lesion_cases]),
        "dice_calibrated_pooled": dice(np.concatenate(masks), pooled_t),
        "dice_calibrated_per_volume_mean": nanmean([per_case_cal[i] for i in lesion_cases]),
        "dice_calibrated_per_volume_std": nanstd([per_case_cal[i] for i in lesion_cases]),
        "dice_validation_best_pooled": dice(np.concatenate(val_masks), np.concatenate(val_truths)) if val_masks
        else float("nan"),
        "dice_validation_best_per_volume_mean": nanmean([per_case_val[i] for i in lesion_cases]),
        "dice_best_possible_pooled": best_dice,
        "threshold_calibrated": calibrated,
        "threshold_best_possible": best_t,
        "per_case": {"dice_calibrated": per_case_cal, "dice_validation_best": per_case_val,
                     "auroc": per_case_auroc, "auprc": per_case_auprc, "dice_best_possible": per_case_best,
                     "threshold_validation_best": loo},
    }


def nanmean(values: list[float]) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def nanstd(values: list[float]) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.std(values)) if values else float("nan")
