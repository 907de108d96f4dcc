"""From maps to masks: filtering inside the brain, thresholds, small components."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage import morphology


def restrict_to_brain(score: torch.Tensor, brain: torch.Tensor, *, median_size: int,
                      erosion: int) -> torch.Tensor:
    """Median filter, then zero outside the brain eroded by ``erosion`` voxels: (1, H, W, D) -> (1, H, W, D)."""
    values = score[0].numpy()
    if median_size > 1:
        values = ndimage.median_filter(values, size=median_size)
    inside = brain[0].numpy() > 0
    if erosion > 0:
        inside = ndimage.binary_erosion(inside, iterations=erosion)
    return torch.from_numpy(np.where(inside, values, 0).astype(np.float32))[None]


def min_voxels(min_mm3: float, spacing_mm) -> int:
    """The smallest component kept, in voxels of this spacing."""
    return int(np.ceil(min_mm3 / float(np.prod(spacing_mm))))


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_voxels`` (uint8 in, uint8 out)."""
    if min_voxels <= 1 or not mask.any():
        return mask.astype(np.uint8)
    kept = morphology.remove_small_objects(mask.astype(bool), max_size=min_voxels - 1, connectivity=3)
    return kept.astype(np.uint8)


def label_map(masks: np.ndarray) -> np.ndarray:
    """(R, *S) bool -> uint8 (*S): 0 background, else the 1-based index of the last region present."""
    out = np.zeros(masks.shape[1:], np.uint8)
    for index, region in enumerate(masks, start=1):
        out[region] = index
    return out
