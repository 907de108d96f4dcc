"""Calibration of a detection model on healthy data: its thresholds, z-score statistics and healthy floor.

The healthy voxels are the brain on axial slices without a label voxel (the same
definition as training) of the calibration cases, or of each case's held-out slab
(``train.holdout: slabs``, :mod:`anodiff.data.slabs`), seen as detection sees them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from anodiff.config import RunConfig
from anodiff.data.cases import Case
from anodiff.data.datasets import away_from_label, grid_spacing
from anodiff.data.slabs import Slab, along, slab_region, world_z_axis
from anodiff.evaluation.baseline import baseline_modalities, baseline_score
from anodiff.evaluation.floor import floor_figures, floor_samples, ssim_map, tissue_zones, zone_modality
from anodiff.evaluation.metrics import calibrate_threshold
from anodiff.figures import BLUE, RED, focus_slice, ras_view, save_overlay
from anodiff.inference.cases import PreprocessedCase, preprocess
from anodiff.inference.prediction import Prediction
from anodiff.inference.standardise import ResidualStats, edge_strength
from anodiff.io import read_volume
from anodiff.methods.anomaly.scoring import finish, reconstruct_volume, scored_residuals
from anodiff.methods.anomaly.sensitivity import CASES as SENSITIVITY_CASES
from anodiff.methods.anomaly.sensitivity import sensitivity_check
from anodiff.modelfolder import TrainedModel
from anodiff.progress import Progress

STATS_CASES = 8  # calibration cases the healthy residual statistics are fitted on (their grids are kept in memory)


def calibrate(model: TrainedModel, healthy_cases: list[Case], *, slabs: dict[str, Slab] | None = None, seed: int = 0,
              progress: Progress | None = None, figure: Path | None = None) -> dict:
    """Thresholds at the configured healthy false-positive rate, for anodiff and the intensity baseline; the
    healthy residual statistics a ``zscore`` map needs (fitted first, on up to :data:`STATS_CASES` cases); and
    the healthy floor (:mod:`anodiff.evaluation.floor`; a PNG of the first case to ``figure``).

    Voxels used: brain voxels of the axial slices without any label voxel, or with
    ``train.healthy_tissue: margin`` the brain farther than ``train.label_margin_mm``
    from the label (the same healthy definition as training), on the input grid, as
    detection sees them; only those of the case's held-out slab where ``slabs`` gives one.
    The sensitivity check inserts its anomalies into the same healthy tissue.
    """
    slabs = slabs or {}
    config = model.config
    kept = {}
    stats = None
    if config.anomaly.score == "zscore":
        samples = []
        for index, case in enumerate(healthy_cases[:STATS_CASES]):
            kept[index] = reconstructed(model, case, seed)
            samples.append(healthy_samples(*kept[index], config, seed, slab=slabs.get(case.id)))
            if progress is not None:
                progress(index + 1, len(healthy_cases), f"calibrating {case.id}")
        stats = ResidualStats.fit(*(np.concatenate(parts, axis=1) for parts in zip(*samples)))
    model_scores, floors, lent = [], [], []
    baseline_scores: dict[str, list[np.ndarray]] = {}
    modality = zone_modality(model.modalities)
    fitted_on = len(kept)
    for index, case in enumerate(healthy_cases):
        preprocessed, grid = kept.pop(index) if index in kept else reconstructed(model, case, seed)
        if len(lent) < SENSITIVITY_CASES:
            lent.append((preprocessed, grid, healthy_grid(preprocessed, config, slabs.get(case.id))))
        result = finish(preprocessed, grid, config, stats, threshold=np.inf, detail=True)
        healthy = calibration_voxels(case, result, slabs.get(case.id), config.train.margin_mm)
        model_scores.append(result.maps["score"][healthy])
        for name in baseline_modalities(list(case.images), model.modalities):
            image = baseline_image(case, name, model.modalities, result)
            baseline_scores.setdefault(name, []).append(baseline_score(image, result.brain)[healthy])
        zones = tissue_zones(result.maps["normalised"][model.modalities.index(modality)], result.brain,
                             result.reference.spacing_mm, modality)
        floors.append(floor_samples(result.maps["residual"], ssim_map(result.maps["normalised"],
                                                                      result.maps["reconstruction"]), zones, healthy))
        if figure is not None and index == 0:
            save_floor_figure(figure, result, zones, healthy)
        if progress is not None and index >= fitted_on:  # the first ones were counted as they were fitted on
            progress(index + 1, len(healthy_cases), f"calibrating {case.id}")
    fpr = config.anomaly.fpr
    return {
        "threshold": calibrate_threshold(model_scores, fpr),
        "baseline_thresholds": {name: calibrate_threshold(values, fpr) for name, values in baseline_scores.items()},
        "calibration": {"fpr": fpr, "cases": [c.id for c in healthy_cases],
                        "voxels": int(sum(s.size for s in model_scores))},
        "residual_stats": stats.to_dict() if stats is not None else None,
        "healthy_floor": {"zones_from": modality, "zones": floor_figures(floors)},
        "sensitivity": sensitivity_check(model, lent, stats, seed=seed),
    }


def reconstructed(model: TrainedModel, case: Case, seed: int) -> tuple[PreprocessedCase, dict[str, torch.Tensor]]:
    """A calibration case preprocessed (with its label on the network grid) and reconstructed."""
    preprocessed = preprocess(case, model.modalities, model.config.data, model.config.model.spatial_dims,
                              with_label=True)
    grid = reconstruct_volume(model.network, preprocessed, model.config, space=model.space,
                              generator=torch.Generator().manual_seed(seed))
    return preprocessed, grid


def healthy_samples(preprocessed: PreprocessedCase, grid: dict[str, torch.Tensor], config: RunConfig, seed: int,
                    limit: int = 200_000, slab: Slab | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residual, reconstruction and edge strength (C, N) of up to ``limit`` healthy brain voxels of one case on
    the network grid: brain slices with no label voxel on them or next to them (a 3D model: a lesion-free volume),
    within ``slab`` when one is given."""
    spatial_dims = config.model.spatial_dims
    where = np.flatnonzero(healthy_grid(preprocessed, config, slab))
    if where.size > limit:
        where = np.sort(np.random.default_rng(seed).choice(where, limit, replace=False))
    residual, reconstruction = scored_residuals(grid, config)
    edges = edge_strength(reconstruction, spatial_dims)
    flat = lambda values: values.flatten(1).numpy()[:, where]  # noqa: E731
    return flat(residual), flat(reconstruction), flat(edges)


def healthy_grid(preprocessed: PreprocessedCase, config: RunConfig, slab: Slab | None = None) -> np.ndarray:
    """Bool (H, W, D) on the network grid: the brain on axial slices with no label voxel on them or next to them
    (a 3D model: a lesion-free volume, else nothing), or the brain away from the label by ``train.label_margin_mm``
    (``train.healthy_tissue: margin``); within ``slab`` when one is given."""
    inside = preprocessed.brain_grid[0].numpy() > 0
    if slab is not None:
        inside = inside & slab_region(inside, np.eye(4), slab)  # the network grid is RAS
    label = preprocessed.label_grid
    if config.train.margin_mm is not None:
        away = away_from_label(preprocessed.brain_grid, label, grid_spacing(preprocessed.item["image"]),
                               config.train.margin_mm)
        return inside & away[0].numpy()
    if label is not None and (label > 0).any():
        if config.model.spatial_dims == 3:
            return np.zeros_like(inside)
        lesion_on = ndimage.binary_dilation((label[0] > 0).flatten(0, 1).any(0).numpy(), iterations=1)
        inside &= ~lesion_on[None, None, :]
    return inside


def calibration_voxels(case: Case, result: Prediction, slab: Slab | None, margin_mm: float | None = None
                       ) -> np.ndarray:
    """Bool (X, Y, Z) on the input grid: the brain on the case's label-free axial slices, or, given
    ``margin_mm``, the brain farther than that from its label; within ``slab``."""
    if margin_mm is not None and case.label is not None:
        label = read_volume(case.label, allow_constant=True)
        healthy = away_from_label(torch.from_numpy(result.brain[None]), torch.from_numpy(label.data[None]),
                                  label.spacing_mm, margin_mm)[0].numpy()
    else:
        healthy = result.brain & healthy_slices(case, result.brain.shape)
    return healthy if slab is None else healthy & slab_region(result.brain, result.reference.affine, slab)


def healthy_slices(case: Case, shape) -> np.ndarray:
    """Bool (X, Y, Z): True on the axial (RAS z) slices with no label voxel; all True without a label."""
    if case.label is None:
        return np.ones(shape, bool)
    label = read_volume(case.label, allow_constant=True)
    axis, _ = world_z_axis(label.affine)
    lesion_on = (label.data > 0).any(axis=tuple(a for a in range(3) if a != axis))
    return np.broadcast_to(along(~lesion_on, axis), shape)


def baseline_image(case: Case, name: str, modalities: tuple[str, ...], result: Prediction) -> np.ndarray:
    """The image (X, Y, Z) of the baseline of modality ``name``; reuses what detection already read when it is
    the same file."""
    return result.reference.data if name == modalities[0] else read_volume(case.images[name]).data


def save_floor_figure(path: Path, result: Prediction, zones: dict[str, np.ndarray], healthy: np.ndarray) -> None:
    """PNG of the healthy axial slice with most brain: normalised input, reconstruction, score, the zones (grey
    levels: edge, white matter, cortex, ventricle rim from dark to bright), and the rim (red) and edge (blue)."""
    ras = ras_view(result.reference.affine)
    z = focus_slice(ras(healthy & result.brain))
    base = ras(result.maps["normalised"][0])[..., z]
    recon = ras(result.maps["reconstruction"][0] * result.brain)[..., z]
    score = ras(result.maps["score"])
    top = float(np.percentile(score[score > 0], 99.9)) if (score > 0).any() else 1.0
    levels = np.zeros_like(base)
    for value, name in ((0.25, "brain_edge"), (0.5, "white_matter"), (0.75, "cortex"), (1.0, "ventricle_rim")):
        levels[ras(zones[name])[..., z]] = value
    save_overlay(path, base, [recon, np.clip(score[..., z] / max(top, 1e-6), 0, 1), levels],
                 [(ras(zones["ventricle_rim"])[..., z], RED), (ras(zones["brain_edge"])[..., z], BLUE)])
