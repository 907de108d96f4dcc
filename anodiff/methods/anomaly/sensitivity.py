"""The label-free sensitivity check: how well the map finds generic anomalies inserted into healthy data.

At calibration, after the healthy statistics and the threshold are fixed, a few
held-out healthy volumes get copies with synthetic anomalies inserted
(:mod:`anodiff.data.anomalies`: every size from 0.05 to 150 ml, brighter, darker,
mixed, one modality, texture, and an iso-intense mass that pushes tissue aside).
The copies are reconstructed (a 2D model only on the slices an anomaly reaches) and
scored exactly as detection scores them; AUROC and AUPRC of the map, by kind and by
size, compare the voxels each anomaly visibly changed with the voxels of the same
volumes that no insertion touched.
The healthy floor shows false positives; this check shows misses. Both need no label,
so settings can be chosen on them, never on test labels.

A handful of anomalies per kind is a small sample: beside each AUROC the check gives
a 95 % bootstrap interval over its anomalies (the healthy voxels held fixed), so a
reader can tell 0.8 from 4 anomalies from 0.8 from 40.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from anodiff.config import RunConfig
from anodiff.data.anomalies import KINDS, insert, plan
from anodiff.data.datasets import grid_spacing
from anodiff.evaluation.metrics import SIZE_BINS_ML, auprc, auroc, size_bin
from anodiff.inference.cases import PreprocessedCase
from anodiff.inference.standardise import ResidualStats
from anodiff.methods.anomaly.scoring import anomaly_grid, reconstruct_grid
from anodiff.modelfolder import TrainedModel

CASES = 4  # calibration volumes that lend copies
COPIES = 8  # copies with anomalies inserted, spread over the lent volumes (however few there are)
PER_COPY = 6  # anomalies per copy, apart from each other
HEALTHY_SAMPLE = 300_000  # healthy voxels kept for the metrics
RESAMPLES = 1000  # bootstrap resamples of the anomalies for each figure's interval


def sensitivity_check(model: TrainedModel, volumes: list[tuple[PreprocessedCase, dict, np.ndarray]],
                      stats: ResidualStats | None, *, seed: int = 0) -> dict:
    """AUROC and AUPRC of the map on anomalies inserted into ``volumes``: (preprocessed case, its healthy
    :func:`~anodiff.methods.scoring.reconstruct_volume` grid, where anomalies may go (H, W, D) bool, e.g. away
    from a label). Figures by kind, by size bin and over all, with the counts."""
    healthy, found = [], []  # healthy scores; (kind, ml, scores) per anomaly
    volumes = volumes[:CASES]
    for copy in range(COPIES if volumes else 0):
        preprocessed, grid, allowed = volumes[copy % len(volumes)]
        rng = np.random.default_rng([seed, copy])
        brain = preprocessed.brain_grid[0].numpy() > 0
        draws = plan(PER_COPY, rng, offset=copy * PER_COPY)
        image, inserted = insert(preprocessed.image.numpy(), brain, grid_spacing(preprocessed.item["image"]), draws,
                                 rng, allowed=allowed)
        if not inserted:
            continue
        score = scored_copy(model, preprocessed, grid, torch.from_numpy(image), inserted, stats, seed)
        scored = score > 0  # the eroded brain detection scores
        near = ndimage.binary_dilation(np.any([i.touched for i in inserted], axis=0), iterations=2)
        healthy.append(score[scored & allowed & ~near])
        found += [(i.kind, i.ml, score[i.mask & scored]) for i in inserted if (i.mask & scored).any()]
    return summarise(healthy, found, seed)


def scored_copy(model: TrainedModel, preprocessed: PreprocessedCase, grid: dict[str, torch.Tensor], image: torch.Tensor,
                inserted, stats: ResidualStats | None, seed: int) -> np.ndarray:
    """The anomaly map (H, W, D) on the network grid of ``image``, a copy of ``preprocessed``'s with anomalies in it;
    a 2D model reconstructs only the slices they reach and keeps ``grid``'s elsewhere."""
    config: RunConfig = model.config
    brain_grid = preprocessed.brain_grid
    generator = torch.Generator().manual_seed(seed)
    if config.model.spatial_dims == 3:
        changed = reconstruct_grid(model.network, image, brain_grid, config, space=model.space, generator=generator)
    else:
        reach = np.any([i.touched for i in inserted], axis=0).any(axis=(0, 1))
        reach = ndimage.binary_dilation(reach, iterations=2)  # the soft rim reaches a little further
        only = brain_grid * torch.from_numpy(reach)[None, None, None, :]
        fresh = reconstruct_grid(model.network, image, only, config, space=model.space, generator=generator)
        changed = {name: torch.where(torch.from_numpy(reach), fresh[name], values) for name, values in grid.items()}
    return anomaly_grid(changed, brain_grid, config, stats)[0].numpy()


def summarise(healthy: list[np.ndarray], found: list[tuple[str, float, np.ndarray]], seed: int) -> dict:
    """The check's figures from healthy scores and each anomaly's (kind, ml, scores)."""
    negatives = np.concatenate(healthy) if healthy else np.zeros(0, np.float32)
    if negatives.size > HEALTHY_SAMPLE:
        negatives = np.random.default_rng(seed).choice(negatives, HEALTHY_SAMPLE, replace=False)

    def figures(selected: list[tuple[str, float, np.ndarray]]) -> dict:
        if not selected or not negatives.size:
            return {"count": len(selected), "auroc": None, "auprc": None}
        positives = np.concatenate([scores for _, _, scores in selected])
        scores = np.concatenate([negatives, positives])
        truth = np.concatenate([np.zeros(negatives.size, bool), np.ones(positives.size, bool)])
        return {"count": len(selected), "auroc": auroc(scores, truth),
                "auroc_interval": auroc_interval(negatives, [found for _, _, found in selected], seed),
                "auprc": auprc(scores, truth), "median_ml": float(np.median([ml for _, ml, _ in selected]))}

    return {"kinds": {kind: figures([f for f in found if f[0] == kind]) for kind in KINDS},
            "sizes": {name: figures([f for f in found if size_bin(f[1]) == name]) for _, _, name in SIZE_BINS_ML},
            "all": figures(found), "healthy_voxels": int(negatives.size)}


def auroc_interval(negatives: np.ndarray, anomalies: list[np.ndarray], seed: int) -> list[float]:
    """95 % bootstrap interval of the voxel AUROC of ``anomalies`` (each its voxels' scores) against
    ``negatives``, resampling the anomalies (:data:`RESAMPLES` times) with the healthy voxels held fixed.

    The voxel AUROC is the mean over positive voxels of the fraction of negatives each outscores (ties half), so
    each anomaly is summarised once by that fraction's sum and its voxel count, and a resample is a weighted mean.
    """
    ordered = np.sort(negatives)
    placements = [((np.searchsorted(ordered, s, "left") + np.searchsorted(ordered, s, "right")) / 2 / ordered.size)
                  for s in anomalies]
    sums = np.array([p.sum() for p in placements])
    counts = np.array([p.size for p in placements])
    picks = np.random.default_rng(seed).integers(0, len(anomalies), (RESAMPLES, len(anomalies)))
    resampled = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return [float(v) for v in np.quantile(resampled, [0.025, 0.975])]
