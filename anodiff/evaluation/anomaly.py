"""The unsupervised evaluation: every figure of a method over the test cases, beside the baseline's.

Three named thresholds (calibrated, validation-best, best possible), pooled and
per-volume averaging, breakdowns by lesion kind and size (see :mod:`.metrics`).
Arrays are the brain voxels of each case; nothing here runs a network.
"""

from __future__ import annotations

import numpy as np

from anodiff.data.anomalies import SIZE_RANGE_ML
from anodiff.evaluation.metrics import (
    auprc,
    auroc,
    best_threshold,
    candidate_thresholds,
    dice,
    dice_curve,
    leave_one_out_thresholds,
    nanmean,
    nanstd,
    operating_point,
    pr_points,
    roc_points,
    score_histograms,
)
from anodiff.evaluation.report import Report, Table, fmt, mean_std


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
        "curves": curves(pooled_s, pooled_t, (candidates, curve), np.concatenate(masks),
                         (np.concatenate(val_masks), np.concatenate(val_truths)) if val_masks else None),
        "per_case": {"dice_calibrated": per_case_cal, "dice_validation_best": per_case_val,
                     "auroc": per_case_auroc, "auprc": per_case_auprc, "dice_best_possible": per_case_best,
                     "threshold_validation_best": loo},
    }


def curves(scores: np.ndarray, truth: np.ndarray, dice_by_threshold: tuple[np.ndarray, np.ndarray],
           calibrated: np.ndarray, validation_best: tuple[np.ndarray, np.ndarray] | None) -> dict:
    """What the report's figures draw, kept in report.json so they can be redrawn without the maps: the ROC and
    PR curves, Dice against the threshold, the score's histograms, and the masks' operating points."""
    thresholds, dices = dice_by_threshold
    keep = np.unique(np.linspace(0, len(thresholds) - 1, min(len(thresholds), 200)).astype(int))
    points = {"calibrated": operating_point(calibrated, truth)}
    if validation_best is not None:
        points["validation_best"] = operating_point(*validation_best)
    return {"roc": roc_points(scores, truth), "pr": pr_points(scores, truth),
            "dice_by_threshold": {"threshold": thresholds[keep].round(6).tolist(),
                                  "dice": dices[keep].round(6).tolist()},
            "histogram": score_histograms(scores, truth), "operating_points": points}


def breakdown(rows: list[dict], methods: list[str]) -> dict:
    """Per-volume mean Dice (calibrated) and AUROC by lesion kind and by lesion size."""
    out: dict[str, dict] = {}
    for key in ("kind", "size"):
        groups: dict[str, list[dict]] = {}
        for row in rows:
            if row["lesion_ml"] > 0:
                groups.setdefault(row[key], []).append(row)
        out[key] = {
            group: {"cases": len(members),
                    **{f"{m}: {metric}": float(np.nanmean([r[f"{m}: {metric}"] for r in members]))
                       for m in methods for metric in ("dice_calibrated", "auroc")}}
            for group, members in sorted(groups.items())
        }
    return out


def anomaly_report(figures: dict, methods: dict[str, dict], rows: list[dict]) -> Report:
    """The report of an unsupervised evaluation: ``figures`` (model, data, counts, cost, settings) gain
    each method's summary (less its per-case lists, which join ``rows``) and the breakdowns."""
    for name, summary in methods.items():
        for key, values in summary["per_case"].items():
            for row, value in zip(rows, values):
                row[f"{name}: {key}"] = value
    figures = {**figures, "methods": {k: {m: v for m, v in s.items() if m != "per_case"} for k, s in methods.items()},
               "breakdown": breakdown(rows, list(methods)), "cases": rows}
    return report_of_figures(figures)


def report_of_figures(figures: dict) -> Report:
    """The report of an unsupervised evaluation from its ``report.json`` content alone."""
    title = f"anodiff evaluation: {figures['num_cases']} cases ({figures['num_lesion_cases']} with lesions)"
    notes = [f"Model `{figures['model']}`, data `{figures['data']}`; {figures['network_evals_per_slice']} network "
             f"evaluations per slice, {figures['seconds_per_volume']:.1f} s per volume.",
             "Dice: *calibrated* = label-free threshold at the healthy FPR fixed at training; *val-best* = "
             "threshold chosen on the other cases (leave one out); *best possible* = upper bound on these cases. "
             "Pooled = over all brain voxels of the test set; per-volume = mean over lesion cases."]
    tables = [_methods_table(figures), *_breakdown_tables(figures)]
    if figures.get("healthy_floor"):
        tables.append(floor_table(figures["healthy_floor"]))
    if figures.get("sensitivity"):
        tables.append(sensitivity_table(figures["sensitivity"]))
    return Report(title=title, notes=notes, tables=tables, figures=figures, rows=figures["cases"])


def floor_table(floor: dict) -> Table:
    """The model's healthy floor (measured at calibration) by zone: what a lesion must stand above."""
    rows = [(zone.replace("_", " "), str(z["voxels"]), fmt(z["score_mean"], 4), fmt(z["score_p99"], 4),
             fmt(z["ssim_mean"])) for zone, z in floor["zones"].items()]
    return Table("Healthy floor (held-out healthy slices at calibration, input grid)",
                 ("zone", "voxels", "score mean", "score p99", "SSIM"), rows,
                 note=f"Zones from the {floor['zones_from']} intensities: brain edge (3 mm), rim of the ventricles, "
                      "white matter, cortex. The calibrated threshold is the overall score's 1 - FPR quantile.")


def sensitivity_table(check: dict) -> Table:
    """The model's sensitivity check (measured at calibration): generic anomalies inserted into held-out healthy
    data, how well the map finds them, by kind and by size."""
    groups = [*check["kinds"].items(), *check["sizes"].items(), ("all", check["all"])]
    rows = [(name.replace("_", " "), str(f["count"]), fmt(f["auroc"]), interval(f.get("auroc_interval")),
             fmt(f["auprc"])) for name, f in groups]
    return Table("Sensitivity check (synthetic anomalies in held-out healthy data, at calibration)",
                 ("anomalies", "count", "AUROC", "AUROC 95% interval", "AUPRC"), rows,
                 note=f"Kinds and sizes from {SIZE_RANGE_ML[0]:g} to {SIZE_RANGE_ML[1]:g} ml inserted into held-out "
                      f"healthy volumes and scored as detection scores them; each anomaly's voxels are those its "
                      f"insertion visibly changed, against {check['healthy_voxels']} untouched voxels of the same "
                      "volumes; no label involved. "
                      "The interval is a bootstrap over the anomalies: a few anomalies make a wide one. "
                      "The healthy floor shows false positives, this check shows misses.")


def interval(bounds: list[float] | None) -> str:
    """``[low, high]`` as 'low-high' (a check measured before intervals were: '-')."""
    return f"{fmt(bounds[0])}-{fmt(bounds[1])}" if bounds else "-"


def _methods_table(figures: dict) -> Table:
    columns = ("method", "AUROC pooled", "AUPRC pooled", "AUROC per-volume", "Dice calibrated pooled",
               "Dice calibrated per-volume", "Dice val-best pooled", "Dice best possible (bound)")
    rows = [(name, fmt(m["auroc_pooled"]), fmt(m["auprc_pooled"]), fmt(m["auroc_per_volume_mean"]),
             fmt(m["dice_calibrated_pooled"]),
             mean_std(m["dice_calibrated_per_volume_mean"], m["dice_calibrated_per_volume_std"]),
             fmt(m["dice_validation_best_pooled"]), fmt(m["dice_best_possible_pooled"]))
            for name, m in figures["methods"].items()]
    return Table(f"Brain voxels: {figures['network_evals_per_slice']} network evals/slice, "
                 f"{figures['seconds_per_volume']:.1f} s/volume", columns, rows)


def _breakdown_tables(figures: dict) -> list[Table]:
    methods = list(figures["methods"])
    tables = []
    for key, groups in figures["breakdown"].items():
        columns = (key, "cases", *[f"{m} {what}" for m in methods for what in ("Dice", "AUROC")])
        rows = [(group, str(values["cases"]),
                 *[fmt(values[f"{m}: {metric}"]) for m in methods for metric in ("dice_calibrated", "auroc")])
                for group, values in groups.items()]
        tables.append(Table(f"By lesion {key} (per-volume means, calibrated threshold)", columns, rows))
    return tables
