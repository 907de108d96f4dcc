"""Every PNG anodiff writes: sample grids during training, and the per-case overlays of an evaluation.

Figures are drawn from arrays the caller computed (this module runs no network
and reads no file): images in [0, 1], masks as booleans. Volumes are shown in
RAS voxel order (:func:`ras_view`), axial slices rotated so anterior is up.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from skimage import segmentation

Colour = tuple[float, float, float]
GREEN, RED, BLUE = (0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.4, 1.0)  # truth, anodiff, reference


def ras_view(affine: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A function turning (X, Y, Z) volumes of this affine's grid into RAS voxel order, for display."""
    ornt = nib.orientations.io_orientation(affine)
    return lambda volume: nib.orientations.apply_orientation(volume, ornt)


def focus_slice(*candidates: np.ndarray) -> int:
    """The axial index z with most voxels of the first non-empty (X, Y, Z) candidate (RAS order)."""
    chosen = next((c for c in candidates if c.any()), candidates[-1])
    return int(np.argmax(chosen.sum((0, 1))))


def display_slice(image: np.ndarray, z: int) -> np.ndarray:
    """Axial slice z of a RAS volume scaled to [0, 1] by its 99.5th percentile inside the brain."""
    scale = np.percentile(image[image > 0], 99.5) if (image > 0).any() else 1.0
    return np.clip(image[..., z] / scale, 0, 1)


def save_overlay(path: Path, base: np.ndarray, panels: list[np.ndarray], outlines: list[tuple[np.ndarray, Colour]],
                 *, zoom_on: np.ndarray | None = None) -> None:
    """One row of tiles (H, W): the image ``base``, each panel in [0, 1], and the image with ``outlines``
    drawn in order (later ones on top); a second row magnifies the region ``zoom_on`` (bool, H, W) when given."""
    drawn = np.stack([base] * 3, -1)
    for mask, colour in outlines:
        drawn[segmentation.find_boundaries(mask)] = colour
    tiles = [np.stack([t] * 3, -1) for t in (base, *panels)] + [drawn]
    rows = [np.concatenate([np.rot90(t) for t in tiles], axis=1)]
    if zoom_on is not None and zoom_on.any():
        rows.append(_magnified(tiles, zoom_on, *rows[0].shape[:2]))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.concatenate(rows, axis=0) * 255).astype(np.uint8)).save(path)


def _magnified(tiles: list[np.ndarray], near: np.ndarray, height: int, width: int) -> np.ndarray:
    """The tiles cropped around ``near`` (with a margin), magnified (nearest neighbour) to the row's size."""
    (x0, y0), (x1, y1) = np.argwhere(near).min(0), np.argwhere(near).max(0) + 1
    margin = max(x1 - x0, y1 - y0) // 2 + 2
    box = (slice(max(0, x0 - margin), x1 + margin), slice(max(0, y0 - margin), y1 + margin))
    crops = np.concatenate([np.rot90(t[box]) for t in tiles], axis=1)
    scale = min(height / crops.shape[0], width / crops.shape[1])
    rows_at = np.minimum((np.arange(int(crops.shape[0] * scale)) / scale).astype(int), crops.shape[0] - 1)
    cols_at = np.minimum((np.arange(int(crops.shape[1] * scale)) / scale).astype(int), crops.shape[1] - 1)
    zoomed = crops[rows_at][:, cols_at]
    return np.pad(zoomed, ((0, height - zoomed.shape[0]), (0, width - zoomed.shape[1]), (0, 0)))


def save_grid(rows: list[torch.Tensor], path: Path) -> None:
    """Rows of (B, H, W) or (B, H, W, D) images in [0, 1] (3D: the middle axial slice) as one PNG."""
    rows = [r[..., r.shape[-1] // 2] if r.ndim == 4 else r for r in rows]
    grid = torch.cat([torch.cat(list(r.float().cpu()), dim=1) for r in rows], dim=0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.rot90(grid) * 255).astype(np.uint8)).save(path)
