"""Fusing N sampled masks into one, and measuring how much they disagree.

The fusion of the N samples is the segmentation and their spread is a per-voxel
uncertainty map. Fusion by mean probability (thresholded), by majority vote, or by
STAPLE (Warfield et al. 2004, SimpleITK's ``STAPLEImageFilter``), which weights
each sample by its estimated reliability. Arrays are ``(N, *S)``: N samples of
any spatial shape, values in [0, 1].
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import special

Fusion = Literal["mean", "majority", "staple"]


def fuse(samples: np.ndarray, method: Fusion = "mean") -> np.ndarray:
    """Fused foreground probability (*S) in [0, 1] of N samples (N, *S); threshold it at 0.5 for a mask."""
    samples = _check(samples)
    if method == "mean":
        return samples.mean(axis=0).astype(np.float32)
    if method == "majority":
        return ((samples >= 0.5).mean(axis=0) > 0.5).astype(np.float32)
    if method == "staple":
        return staple(samples >= 0.5)
    raise ValueError(f"unknown fusion {method!r}; choose mean, majority or staple")


def staple(masks: np.ndarray) -> np.ndarray:
    """STAPLE's foreground probability (*S) from N binary masks (N, *S), by SimpleITK."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim < 3:
        raise ValueError(f"expected masks shaped (N, *S) with 2 or 3 spatial axes, got {masks.shape}")
    if not masks.any():
        return np.zeros(masks.shape[1:], np.float32)
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks]
    probability = sitk.STAPLE(images, 1.0)
    return np.clip(sitk.GetArrayFromImage(probability), 0, 1).astype(np.float32)


def uncertainty(samples: np.ndarray, kind: Literal["std", "entropy"] = "std") -> np.ndarray:
    """Per-voxel disagreement (*S) of N samples (N, *S).

    ``std``: standard deviation across samples (0 when all agree, 0.5 at most for
    binary masks). ``entropy``: binary entropy of the mean probability, in bits (0 to 1).
    """
    samples = _check(samples)
    if kind == "std":
        return samples.std(axis=0).astype(np.float32)
    if kind == "entropy":
        p = samples.mean(axis=0).astype(np.float64)
        return ((special.entr(p) + special.entr(1 - p)) / np.log(2)).astype(np.float32)  # 0 log 0 = 0
    raise ValueError(f"unknown uncertainty {kind!r}; choose std or entropy")


def _check(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim < 2 or samples.shape[0] < 1:
        raise ValueError(f"expected samples shaped (N, *S), got {samples.shape}")
    if samples.min() < 0 or samples.max() > 1:
        raise ValueError("samples must be probabilities or masks in [0, 1]")
    return samples
