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
from anodiff.data.cohort import read_cohort_info
from anodiff.evaluation.anomaly import anomaly_report, summarize_method
from anodiff.evaluation.baseline import baseline_modalities, baseline_score
from anodiff.evaluation.metrics import size_bin
from anodiff.evaluation.report import Report
from anodiff.evaluation.viewer import save_viewer_volumes, viewer_volumes
from anodiff.figures import BLUE, GREEN, RED, case_views, ras_spacing, ras_view, save_case_figures
from anodiff.formats import baseline_thresholds
from anodiff.inference.cases import labelled_cases
from anodiff.inference.prediction import Prediction
from anodiff.io import read_volume
from anodiff.methods.anomaly.calibration import baseline_image
from anodiff.methods.base import Method, peak_gpu_memory_mb
from anodiff.modelfolder import TrainedModel
from anodiff.progress import Progress


def evaluate_anomaly(method: Method, model: TrainedModel, data: Path, *, seed: int = 0, overlays: Path | None = None,
                     progress: Progress | None = None) -> Report:
    """Detect every labelled case of ``data``; anodiff and the baseline scored on the same brain voxels."""
    cases, root = labelled_cases(data, model.modalities)
    info = read_cohort_info(root)
    thresholds = baseline_thresholds(model.meta, baseline_modalities(list(cases[0].images), model.modalities))
    baselines = list(thresholds)
    channel = model.modalities.index(baselines[0]) if baselines[0] in model.modalities else 0
    units = "z-score" if model.config.anomaly.score == "zscore" else "|x - x_hat|, normalised intensity"
    rows, seconds, evals = [], [], 0
    scores: dict[str, list[np.ndarray]] = {"anodiff": [], "masks": [], "truths": [],
                                           **{name: [] for name in baselines}}
    for index, case in enumerate(cases):
        clock = time.perf_counter()
        result = method.predict(model, case, threshold=model.meta["threshold"], detail=True,
                                generator=torch.Generator().manual_seed(seed))
        seconds.append(time.perf_counter() - clock)
        evals = result.num_network_evals
        label = read_volume(case.label, allow_constant=True).data > 0
        brain = result.brain
        references = {name: baseline_score(baseline_image(case, name, model.modalities, result), brain)
                      for name in baselines}
        for name, values in (("anodiff", result.maps["score"]), *references.items(),
                             ("masks", result.mask > 0), ("truths", label)):
            scores[name].append(values[brain])
        lesion_ml = float(label.sum() * np.prod(result.reference.spacing_mm) / 1000)
        kind = info[case.id].kind if case.id in info else ("healthy" if not label.any() else "lesion")
        rows.append({"case": case.id, "kind": kind, "lesion_ml": round(lesion_ml, 2),
                     "size": size_bin(lesion_ml) if label.any() else "none", "seconds": round(seconds[-1], 2)})
        if overlays is not None:
            first = baselines[0]
            save_detection_figures(overlays, case.id, result, label,
                                   (f"{first} threshold", references[first] > thresholds[first]), channel, units,
                                   threshold=model.meta["threshold"])
        if progress is not None:
            progress(index + 1, len(cases), case.id)
    methods = {
        "anodiff": summarize_method(scores["anodiff"], scores["truths"], calibrated=model.meta["threshold"],
                                    masks_calibrated=scores["masks"]),
        **{f"{name} threshold": summarize_method(scores[name], scores["truths"], calibrated=thresholds[name])
           for name in baselines},
    }
    figures = {"model": str(model.folder), "kind": model.config.model.kind, "data": str(data), "num_cases": len(cases),
               "num_lesion_cases": sum(1 for t in scores["truths"] if t.any()), "network_evals_per_slice": evals,
               "seconds_per_volume": float(np.mean(seconds)), "peak_gpu_memory_mb": peak_gpu_memory_mb(),
               "anomaly": config_to_dict(model.config.anomaly), "sampler": config_to_dict(model.config.sampler),
               "healthy_floor": model.meta.get("healthy_floor"), "sensitivity": model.meta.get("sensitivity"),
               "versions": model.meta.get("versions"),
               "settings": {k: v for k, v in config_to_dict(model.config).items() if k not in ("anomaly", "sampler")}}
    return anomaly_report(figures, methods, rows)


def save_detection_figures(folder: Path, case_id: str, result: Prediction, truth: np.ndarray,
                           baseline: tuple[str, np.ndarray], channel: int, units: str,
                           threshold: float | None = None) -> None:
    """``<case>.png``: three views through the largest lesion of the normalised image, its reconstruction and
    the anomaly map (colour bar in ``units``), with the outlines of the truth (green), anodiff's mask (red) and
    the baseline's (blue); ``<case>_montage.png``: the axial slices with most lesion; ``<case>.npz``: the 2D
    views they show (``anodiff report`` redraws from it). ``channel`` is the
    modality shown; ``baseline`` its name and calibrated mask; ``threshold`` where the 3D viewer's map starts."""
    ras = ras_view(result.reference.affine)
    brain = ras(result.brain)
    image = ras(result.maps["normalised"][channel])
    outlines = [("truth", ras(truth.astype(np.uint8)) > 0, GREEN), ("anodiff", ras(result.mask) > 0, RED),
                (baseline[0], ras(baseline[1].astype(np.uint8)) > 0, BLUE)]
    panels = [("reconstruction", ras(result.maps["reconstruction"][channel]) * brain, "gray", "", 1.0),
              ("anomaly map", ras(result.maps["score"]), "inferno", units, None)]
    spacing = ras_spacing(result.reference.affine, result.reference.spacing_mm)
    save_case_figures(folder, case_id, case_views(case_id, image, panels, outlines, brain, spacing))
    save_viewer_volumes(folder, case_id, viewer_volumes(image, panels, outlines, brain, spacing, threshold))
