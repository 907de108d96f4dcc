"""The supervised evaluation: Dice, HD95, AUROC and AUPRC per region, and where the samples disagree.

Per case, :func:`region_figures` for each region and method; over the cases,
:func:`segmentation_report`. The uncertainty is read on the border band of a
lesion, inside it and in the brain outside it (:func:`border_zones`). Nothing
here runs a network.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from anodiff.evaluation.metrics import auprc, auroc, dice, hd95, nanmean, nanstd
from anodiff.evaluation.plots import segmentation_figures
from anodiff.evaluation.report import Report, Table, fmt, mean_std

ZONES = ("border", "inside", "outside")


def region_masks(label: np.ndarray, regions: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """A label volume (*S) -> bool (R, *S), one mask per region (the label values it holds)."""
    return np.stack([np.isin(label, values) for values in regions])


def border_zones(truth: np.ndarray, brain: np.ndarray, width: int = 2) -> dict[str, np.ndarray]:
    """Where an uncertainty map is read: bool masks (*S) of the lesion ``border`` (``width`` voxels
    either side of its surface), its ``inside`` and the brain ``outside`` it, beyond the band."""
    truth = truth.astype(bool)
    grown = ndimage.binary_dilation(truth, iterations=width)
    shrunk = ndimage.binary_erosion(truth, iterations=width)
    return {"border": (grown & ~shrunk) & brain, "inside": shrunk & brain, "outside": brain & ~grown}


def zone_means(spread: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """Mean uncertainty on the border band of the lesion ``truth``, inside it, and in the brain outside it."""
    return {zone: float(spread[where].mean()) if where.any() else float("nan")
            for zone, where in border_zones(truth, brain).items()}


def region_figures(probability: np.ndarray, mask: np.ndarray, truth: np.ndarray, brain: np.ndarray,
                   spacing_mm) -> dict[str, float]:
    """Dice, HD95 (mm; NaN when either mask is empty), AUROC and AUPRC (inside the brain) of one region."""
    return {"dice": dice(mask, truth), "hd95": hd95(mask, truth, spacing_mm),
            "auroc": auroc(probability[brain], truth[brain]), "auprc": auprc(probability[brain], truth[brain])}


def method_figures(name: str, regions: tuple[str, ...], lesion_rows: list[dict], pooled: dict) -> dict:
    """One method's figures per region: per-volume Dice and HD95 over lesion cases, pooled Dice/AUROC/AUPRC.

    ``pooled[region]`` holds the brain voxels of every case: ``scores``, ``truth``, ``masks``.
    """
    figures = {}
    for region in regions:
        store = {k: np.concatenate(v) for k, v in pooled[region].items()}
        per_case = [r[f"{name}: dice {region}"] for r in lesion_rows]
        hds = [r[f"{name}: hd95 {region}"] for r in lesion_rows]
        figures[region] = {
            "dice_per_volume_mean": nanmean(per_case), "dice_per_volume_std": nanstd(per_case),
            "dice_pooled": dice(store["masks"], store["truth"]),
            "hd95_mm_mean": nanmean(hds), "hd95_undefined_cases": sum(1 for h in hds if not np.isfinite(h)),
            "auroc_pooled": auroc(store["scores"], store["truth"]),
            "auprc_pooled": auprc(store["scores"], store["truth"]),
        }
    return figures


def zone_summary(per_case: list[dict], regions: tuple[str, ...]) -> dict:
    """Per-case zone means (``[{region: {zone: mean}}]``) averaged over the cases."""
    return {region: {zone: nanmean([z[region][zone] for z in per_case]) for zone in ZONES} for region in regions}


def segmentation_report(figures: dict, rows: list[dict]) -> Report:
    """The report of a supervised evaluation from its ``figures`` (methods, curve, zones, settings)."""
    title = f"anodiff segmentation: {figures['num_cases']} cases ({figures['num_lesion_cases']} with lesions)"
    notes = [f"Model `{figures['model']}`, data `{figures['data']}`; {figures['samples']} samples fused by "
             f"{figures['fusion']}, {figures['network_evals_per_slice_and_sample']} DDIM steps each, threshold "
             f"{figures['threshold']}. Dice and HD95: mean over lesion cases (HD95 undefined where a mask is "
             "empty); AUROC/AUPRC: pooled over brain voxels, on the fused probability."]
    return Report(title=title, notes=notes, tables=[_methods_table(figures), _curve_table(figures),
                                                    _zones_table(figures)], figures={**figures, "cases": rows},
                  rows=rows, draw=segmentation_figures)


def _methods_table(figures: dict) -> Table:
    columns = ("method", "region", "Dice per-volume", "Dice pooled", "HD95 mm", "AUROC", "AUPRC", "s/volume")
    rows = []
    for name, by_region in figures["methods"].items():
        seconds = by_region["seconds_per_volume"]
        for region in figures["regions"]:
            m = by_region[region]
            undefined = f" ({m['hd95_undefined_cases']} undefined)" if m["hd95_undefined_cases"] else ""
            rows.append((name, region, mean_std(m["dice_per_volume_mean"], m["dice_per_volume_std"]),
                         fmt(m["dice_pooled"]), f"{m['hd95_mm_mean']:.1f}{undefined}", fmt(m["auroc_pooled"]),
                         fmt(m["auprc_pooled"]), "in the row above" if seconds is None else f"{seconds:.1f}"))
    return Table(f"{figures['samples']} samples x {figures['network_evals_per_slice_and_sample']} DDIM steps",
                 columns, rows)


def _curve_table(figures: dict) -> Table:
    curve = figures["dice_by_samples"]
    return Table("Dice by samples fused", ("k", *map(str, curve["k"])),
                 [("Dice", *[fmt(d) for d in curve["dice_per_volume_mean"]])],
                 note=f"Dice ({figures['regions'][0]}, per-volume mean) of the fusion of the first k samples.")


def _zones_table(figures: dict) -> Table:
    rows = [(region, what, *[fmt(zones[z], 4) for z in ZONES])
            for key, what in (("uncertainty_by_zone", "true lesion"), ("uncertainty_by_predicted_zone",
                                                                        "segmentation"))
            for region, zones in figures[key].items()]
    return Table("Uncertainty by zone", ("region", "zones of", *ZONES), rows,
                 note=f"Mean uncertainty ({figures['uncertainty']}) by zone of the true lesion and of the fused "
                      "segmentation (border: 2 voxels either side of the surface; per-case means, averaged).")
