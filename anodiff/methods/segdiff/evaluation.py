"""How a segdiff model is evaluated: SegDiff (1 and N samples) beside its UNet reference, on every labelled case.

Per region: Dice, HD95, AUROC and AUPRC; Dice of the fusion of the first k
samples for every k <= N (does fusing more help?); and the mean uncertainty on the
lesion's border, inside it and in the brain outside it, for the true lesion and
for the segmentation. Each case gets an overlay PNG.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from anodiff.config import config_to_dict, region_labels
from anodiff.diffusion.sampler import num_network_evals
from anodiff.evaluation.metrics import dice, nanmean
from anodiff.evaluation.report import Report
from anodiff.evaluation.segmentation import (
    method_figures,
    region_figures,
    region_masks,
    segmentation_report,
    zone_means,
    zone_summary,
)
from anodiff.evaluation.viewer import save_viewer_volumes, viewer_volumes
from anodiff.figures import BLUE, GREEN, RED, case_views, ras_spacing, ras_view, save_case_figures
from anodiff.inference.cases import labelled_cases, preprocess
from anodiff.inference.fusion import fuse
from anodiff.inference.prediction import Prediction
from anodiff.io import read_volume
from anodiff.methods.base import Method, peak_gpu_memory_mb
from anodiff.methods.segdiff.prediction import reference_volume, segment
from anodiff.modelfolder import TrainedModel
from anodiff.progress import Progress


def evaluate_segdiff(method: Method, model: TrainedModel, data: Path, *, samples: int | None = None, seed: int = 0,
                     overlays: Path | None = None, progress: Progress | None = None) -> Report:
    """Dice, HD95, AUROC and AUPRC per region for SegDiff (1 and N samples) and the UNet reference."""
    cfg = model.config.segmentation
    samples = samples or cfg.samples
    cases, _ = labelled_cases(data, model.modalities)
    regions = tuple(region_labels(r) for r in cfg.regions)
    names = {"segdiff": f"SegDiff ({samples} samples)", "one": "SegDiff (1 sample)", "unet": "UNet reference"}
    rows, curves, zones, predicted_zones = [], [], [], []
    pooled: dict[str, dict[str, dict[str, list]]] = {}
    seconds: dict[str, list[float]] = {"segdiff": [], "unet": []}
    for index, case in enumerate(cases):
        clock = time.perf_counter()
        preprocessed = preprocess(case, model.modalities, model.config.data, spatial_dims=2)  # once, for both methods
        preprocess_s = time.perf_counter() - clock
        clock = time.perf_counter()
        result = method.predict(model, case, threshold=cfg.threshold, samples=samples, preprocessed=preprocessed,
                                generator=torch.Generator().manual_seed(seed))
        seconds["segdiff"].append(preprocess_s + time.perf_counter() - clock)
        unet = None
        if model.reference is not None:
            clock = time.perf_counter()
            unet = segment(lambda image, brain: reference_volume(model.reference, image, brain), model.config,
                           case, model.modalities, threshold=cfg.threshold, num_network_evals=1,
                           preprocessed=preprocessed)
            seconds["unet"].append(preprocess_s + time.perf_counter() - clock)
        truth = region_masks(read_volume(case.label, allow_constant=True).data, regions)
        first = result.maps["samples"][0]
        outputs = {"segdiff": (result.maps["probability"], result.maps["regions"]),
                   "one": (first.astype(np.float32), first > cfg.threshold)}
        if unet is not None:
            outputs["unet"] = (unet.maps["probability"], unet.maps["regions"])
        rows.append(case_row(case.id, result, truth, outputs, names, cfg.regions, pooled))
        curves.append(dice_by_samples(result, truth, cfg.fusion, cfg.threshold))
        spread = result.maps["uncertainty"]
        zones.append({name: zone_means(spread[r], truth[r], result.brain) for r, name in enumerate(cfg.regions)})
        predicted_zones.append({name: zone_means(spread[r], result.maps["regions"][r], result.brain)
                                for r, name in enumerate(cfg.regions)})
        if overlays is not None:
            save_segmentation_figures(overlays, case.id, result, truth[0], unet, model.config.segmentation.uncertainty,
                                      threshold=model.config.segmentation.threshold)
        if progress is not None:
            progress(index + 1, len(cases), case.id)
    figures = report_figures(model, data, rows, curves, zones, predicted_zones, pooled, seconds, names, samples)
    return segmentation_report(figures, rows)


def case_row(case_id: str, result: Prediction, truth: np.ndarray, outputs: dict, names: dict, regions: tuple[str, ...],
             pooled: dict) -> dict:
    """One case's figures per method and region; its brain voxels join ``pooled[method][region]``."""
    row = {"case": case_id, "lesion_ml": round(float(truth[0].sum() * np.prod(result.reference.spacing_mm))
                                                / 1000, 2)}
    for key, (probability, masks) in outputs.items():
        for r, name in enumerate(regions):
            figures = region_figures(probability[r], masks[r], truth[r], result.brain, result.reference.spacing_mm)
            row |= {f"{names[key]}: {metric} {name}": value for metric, value in figures.items()}
            store = pooled.setdefault(key, {}).setdefault(name, {"scores": [], "truth": [], "masks": []})
            store["scores"].append(probability[r][result.brain])
            store["truth"].append(truth[r][result.brain])
            store["masks"].append(masks[r][result.brain])
    return row


def dice_by_samples(result: Prediction, truth: np.ndarray, fusion: str, threshold: float) -> list[float]:
    """Dice of the first region's fusion of the first k samples, k = 1..N (does fusing more help?)."""
    inside = result.brain
    samples = result.maps["samples"][:, 0][:, inside].astype(np.float32)  # (N, brain voxels)
    return [dice(fuse(samples[:k], fusion) > threshold, truth[0][inside]) for k in range(1, len(samples) + 1)]


def report_figures(model: TrainedModel, data: Path, rows: list[dict], curves: list, zones: list,
                   predicted_zones: list, pooled: dict, seconds: dict, names: dict, samples: int) -> dict:
    cfg = model.config.segmentation
    lesion_rows = [r for r in rows if r["lesion_ml"] > 0]
    methods = {}
    for key, name in names.items():
        if key not in pooled:
            continue  # trained without the reference
        # The single sample is read off the N-sample run, so it has no time of its own (about 1/N of it).
        methods[name] = {"seconds_per_volume": None if key == "one" else float(np.mean(seconds[key])),
                         "parameters": (model.meta.get("reference", {}) if key == "unet" else model.meta).get(
                             "parameters"),
                         **method_figures(name, cfg.regions, lesion_rows, pooled[key])}
    lesion_curves = np.array([c for c, r in zip(curves, rows) if r["lesion_ml"] > 0], dtype=float)
    return {
        "model": str(model.folder), "data": str(data), "kind": "segdiff", "num_cases": len(rows),
        "num_lesion_cases": len(lesion_rows), "samples": samples,
        "network_evals_per_slice_and_sample": num_network_evals(model.config.scheduler, model.config.sampler,
                                                                model.config.scheduler.num_train_timesteps - 1),
        "sampler": config_to_dict(model.config.sampler), "fusion": cfg.fusion,
        "uncertainty": cfg.uncertainty, "threshold": cfg.threshold, "regions": list(cfg.regions),
        "peak_gpu_memory_mb": peak_gpu_memory_mb(), "methods": methods, "versions": model.meta.get("versions"),
        "settings": config_to_dict(model.config),
        "dice_by_samples": {"k": list(range(1, samples + 1)),
                            "dice_per_volume_mean": [nanmean(list(c)) for c in lesion_curves.T]},
        "uncertainty_by_zone": zone_summary(zones, cfg.regions),
        "uncertainty_by_predicted_zone": zone_summary(predicted_zones, cfg.regions),
    }


def save_segmentation_figures(folder: Path, case_id: str, result: Prediction, truth: np.ndarray,
                              unet: Prediction | None, uncertainty: str, threshold: float | None = None) -> None:
    """``<case>.png``: three views through the largest lesion of the image, the fused probability and the
    uncertainty (colour bars), with the outlines of the truth (green), SegDiff (red) and the UNet reference
    (blue); ``<case>_montage.png``: the axial slices with most lesion; ``<case>.npz``: the views they show.
    First region only."""
    ras = ras_view(result.reference.affine)
    brain = ras(result.brain)
    image = ras(result.reference.data).astype(np.float32)
    image = np.clip(image / max(float(np.percentile(image[brain], 99.5)) if brain.any() else 1.0, 1e-6), 0, 1)
    outlines = [("truth", ras(truth.astype(np.uint8)) > 0, GREEN), ("SegDiff", ras(result.maps["regions"][0]) > 0, RED)]
    if unet is not None:
        outlines.append(("UNet reference", ras(unet.maps["regions"][0]) > 0, BLUE))
    panels = [("fused probability", ras(result.maps["probability"][0]), "magma", "probability", 1.0),
              ("uncertainty", ras(result.maps["uncertainty"][0]), "viridis", uncertainty, None)]
    spacing = ras_spacing(result.reference.affine, result.reference.spacing_mm)
    save_case_figures(folder, case_id, case_views(case_id, image, panels, outlines, brain, spacing))
    save_viewer_volumes(folder, case_id, viewer_volumes(image, panels, outlines, brain, spacing, threshold))
