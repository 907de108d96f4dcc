"""How a ddpm or ldm model is evaluated: detection on every labelled case, beside the intensity baseline.

Both are scored on the same brain voxels; the figures follow the protocol of
:mod:`anodiff.evaluation.anomaly`, and each case gets an overlay PNG.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from anodiff.config import config_to_dict
from anodiff.data.synthetic import read_cohort_info
from anodiff.evaluation.anomaly import anomaly_report, summarize_method
from anodiff.evaluation.baseline import baseline_modality, baseline_score
from anodiff.evaluation.metrics import size_bin
from anodiff.evaluation.report import Report
from anodiff.figures import GREEN, RED, display_slice, focus_slice, ras_view, save_overlay
from anodiff.inference.cases import labelled_cases
from anodiff.inference.prediction import Prediction
from anodiff.io import read_volume
from anodiff.methods.anomaly import baseline_image
from anodiff.methods.base import Method, peak_gpu_memory_mb
from anodiff.modelfolder import TrainedModel
from anodiff.progress import Progress


def evaluate_anomaly(method: Method, model: TrainedModel, data: Path, *, seed: int = 0, overlays: Path | None = None,
                     progress: Progress | None = None) -> Report:
    """Detect every labelled case of ``data``; anodiff and the baseline scored on the same brain voxels."""
    cases, root = labelled_cases(data, model.modalities)
    info = read_cohort_info(root)
    baseline_name = baseline_modality(list(cases[0].images), model.modalities)
    rows, seconds, evals = [], [], 0
    scores: dict[str, list[np.ndarray]] = {"anodiff": [], "baseline": [], "masks": [], "truths": []}
    for index, case in enumerate(cases):
        clock = time.perf_counter()
        result = method.predict(model, case, threshold=model.meta["threshold"], detail=True,
                                generator=torch.Generator().manual_seed(seed))
        seconds.append(time.perf_counter() - clock)
        evals = result.num_network_evals
        label = read_volume(case.label, allow_constant=True).data > 0
        brain = result.brain
        flair = baseline_image(case, model.modalities, result)
        for name, values in (("anodiff", result.maps["score"]), ("baseline", baseline_score(flair, brain)),
                             ("masks", result.mask > 0), ("truths", label)):
            scores[name].append(values[brain])
        lesion_ml = float(label.sum() * np.prod(result.reference.spacing_mm) / 1000)
        kind = info[case.id].kind if case.id in info else ("healthy" if not label.any() else "lesion")
        rows.append({"case": case.id, "kind": kind, "lesion_ml": round(lesion_ml, 2),
                     "size": size_bin(lesion_ml) if label.any() else "none", "seconds": round(seconds[-1], 2)})
        if overlays is not None:
            save_detection_overlay(overlays / f"{case.id.replace('/', '_')}.png", flair, result, label)
        if progress is not None:
            progress(index + 1, len(cases), case.id)
    methods = {
        "anodiff": summarize_method(scores["anodiff"], scores["truths"], calibrated=model.meta["threshold"],
                                    masks_calibrated=scores["masks"]),
        f"{baseline_name} threshold": summarize_method(scores["baseline"], scores["truths"],
                                                           calibrated=model.meta["baseline_threshold"]),
    }
    figures = {"model": str(model.folder), "data": str(data), "num_cases": len(cases),
               "num_lesion_cases": sum(1 for t in scores["truths"] if t.any()), "network_evals_per_slice": evals,
               "seconds_per_volume": float(np.mean(seconds)), "peak_gpu_memory_mb": peak_gpu_memory_mb(),
               "anomaly": config_to_dict(model.config.anomaly), "sampler": config_to_dict(model.config.sampler),
               "healthy_floor": model.meta.get("healthy_floor")}
    return anomaly_report(figures, methods, rows)


def save_detection_overlay(path: Path, image: np.ndarray, result: Prediction, label: np.ndarray) -> None:
    """PNG: image, reconstruction, anomaly map, and outlines (red predicted, green true) on one axial slice."""
    ras = ras_view(result.reference.affine)
    img, score, mask, truth = ras(image), ras(result.maps["score"]), ras(result.mask), ras(label.astype(np.uint8))
    z = focus_slice(truth, score)
    base = display_slice(img, z)
    recon = np.zeros_like(base)
    if "reconstruction" in result.maps:  # shown inside the brain only, as it is scored
        recon = (ras(result.maps["reconstruction"][0]) * ras(result.brain))[..., z]
    top = float(np.percentile(score[score > 0], 99.9)) if (score > 0).any() else 1
    heat = np.clip(score[..., z] / max(top, 1e-6), 0, 1)
    save_overlay(path, base, [recon, heat], [(mask[..., z] > 0, RED), (truth[..., z] > 0, GREEN)])
