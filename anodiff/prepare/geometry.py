"""Volumes <-> SimpleITK images, resampling and ITK transform files.

A :class:`~anodiff.io.Volume` is ``(X, Y, Z)`` voxels with a voxel -> RAS+ affine;
SimpleITK holds ``(Z, Y, X)`` arrays with LPS spacing, origin and direction.
Converting keeps the geometry exactly, so a prepared output resampled back
lands on the raw scan's own grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from anodiff.errors import DataError
from anodiff.io import Volume, sitk_geometry_to_affine

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_sitk(volume: Volume | np.ndarray, affine: np.ndarray | None = None) -> sitk.Image:
    """A float32 SimpleITK image of ``volume`` (or of an ``(X, Y, Z)`` array with ``affine``)."""
    if isinstance(volume, Volume):
        data, affine = volume.data, volume.affine
    else:
        data = volume
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).transpose(2, 1, 0)))
    lps = _RAS_TO_LPS @ np.asarray(affine, float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


def to_array(image: sitk.Image, dtype=np.float32) -> np.ndarray:
    """The ``(X, Y, Z)`` array of a SimpleITK image."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0)).astype(dtype, copy=False)


def affine_of(image: sitk.Image) -> np.ndarray:
    """The voxel -> RAS+ affine of a SimpleITK image."""
    return sitk_geometry_to_affine(image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def resample(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None, *,
             label: bool = False) -> sitk.Image:
    """``image`` on ``grid``'s voxels; ``transform`` maps grid points to ``image`` points (ITK's convention).

    Linear interpolation (a label map: nearest neighbour), 0 outside the image.
    """
    method = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    return sitk.Resample(image, grid, transform or sitk.Transform(), method, 0.0, image.GetPixelID())


def regrid(grid: sitk.Image, spacing_mm) -> sitk.Image:
    """An empty image covering ``grid``'s field of view at ``spacing_mm`` (one value, or one per axis)."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, float), (3,))
    extent = np.asarray(grid.GetSize()) * np.asarray(grid.GetSpacing())
    size = [max(1, int(round(e / s))) for e, s in zip(extent, spacing)]
    out = sitk.Image(size, sitk.sitkFloat32)
    out.SetSpacing([float(s) for s in spacing])
    out.SetDirection(grid.GetDirection())
    # Keep the field of view's corner: voxel centres shift by half the change of spacing.
    shift = (spacing - np.asarray(grid.GetSpacing())) / 2
    corner = np.asarray(grid.GetOrigin()) + np.asarray(grid.GetDirection()).reshape(3, 3) @ shift
    out.SetOrigin([float(v) for v in corner])
    return out


def write_transform(transform: sitk.Transform, path: Path) -> None:
    """``transform`` as an ITK text file (``.tfm``), never a pickle."""
    sitk.WriteTransform(transform, str(path))


def read_transform(path: Path) -> sitk.Transform:
    """An ITK text transform file, or DataError naming it."""
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as err:
        raise DataError(f"{path}: not a readable ITK transform file") from err
