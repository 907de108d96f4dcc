"""Head and brain masks, bias correction, and whether a scan is already skull-stripped.

Brain extraction carries the template's brain back onto the scan (through the
registration) and then lets the scan's own intensities decide the last
millimetres: near the carried boundary, a voxel stays brain when its intensity
is that of the brain's tissue (not the dark CSF and bone around it, not bright
fat), and what the scalp might still join on is cut off by an opening.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage import filters

from anodiff.data.transforms import MAX_BRAIN_ML

# Millimetres from the carried boundary within which the scan's intensities decide.
BAND_MM = 6.0
# A skull-stripped scan: a brain-sized non-zero region on an exactly constant background.
STRIPPED_ML = (700.0, MAX_BRAIN_ML)
STRIPPED_BACKGROUND = 0.4


def correct_bias(image: sitk.Image, mask: sitk.Image, *, shrink_mm: float = 8.0,
                 iterations: int = 50) -> sitk.Image:
    """N4 bias-field correction, fitted on a copy shrunk to about ``shrink_mm`` voxels for speed.

    The field is fitted inside ``mask`` (0/1) and applied to the whole full-resolution image.
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    shrink = [max(1, int(round(shrink_mm / s))) for s in image.GetSpacing()]
    small = sitk.Shrink(image, shrink)
    small_mask = sitk.Shrink(sitk.Cast(mask > 0.5, sitk.sitkUInt8), shrink)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([iterations] * 4)
    n4.Execute(small, small_mask)
    # The field is smooth: interpolating the shrunk copy's is as good as evaluating the B-spline at every
    # voxel, which took most of the time on a 1 mm scan.
    log_field = sitk.Resample(n4.GetLogBiasFieldAsImage(small), image, sitk.Transform(), sitk.sitkLinear, 0.0,
                              sitk.sitkFloat32, True)
    return sitk.Cast(image / sitk.Exp(log_field), sitk.sitkFloat32)

def head_mask(image: sitk.Image) -> sitk.Image:
    """The head (0/1): Otsu's threshold on a smoothed copy, its large components, holes filled in 3D.

    Not only the largest component: dark bone can cut the scalp off the brain, and
    the scalp is what tells where the top of the head is.
    """
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), 2.0)
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.OtsuThreshold(smooth, 0, 1)), sortByObjectSize=True)
    sizes = np.bincount(sitk.GetArrayViewFromImage(labels).ravel())[1:]
    large = int(np.sum(sizes >= 0.05 * sizes.max())) if len(sizes) else 1
    return sitk.BinaryFillhole(sitk.Cast((labels > 0) & (labels <= large), sitk.sitkUInt8))


def is_skull_stripped(image: sitk.Image) -> bool:
    """Whether a scan looks skull-stripped: a brain-sized region on an exactly constant background."""
    array = sitk.GetArrayViewFromImage(image)
    background = array == array.min()
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    inside_ml = float((~background).sum()) * voxel_ml
    return bool(background.mean() >= STRIPPED_BACKGROUND and STRIPPED_ML[0] <= inside_ml <= STRIPPED_ML[1])


def stripped_brain(image: sitk.Image) -> sitk.Image:
    """The brain of a skull-stripped scan: its non-background voxels, holes filled."""
    array = sitk.GetArrayViewFromImage(image)
    inside = sitk.GetImageFromArray((array > array.min()).astype(np.uint8))
    inside.CopyInformation(image)
    return sitk.Cast(_fill_slices(_largest(inside)), sitk.sitkUInt8)


def refine_brain(image: sitk.Image, carried: sitk.Image) -> sitk.Image:
    """The brain (0/1) on ``image``'s grid from the template's brain ``carried`` onto it (0-1, linear).

    Deep inside the carried brain everything is kept (ventricles included); within
    ``BAND_MM`` of its boundary a voxel is kept when its intensity lies in the range
    of the brain's own tissue, estimated inside the carried brain.
    """
    spacing = float(min(image.GetSpacing()))
    band = max(1, int(round(BAND_MM / spacing)))
    inside = sitk.Cast(carried > 0.5, sitk.sitkUInt8)
    core = sitk.BinaryErode(inside, [band] * 3)
    reach = sitk.BinaryDilate(inside, [band] * 3)

    values = sitk.GetArrayViewFromImage(image)
    low, high = _tissue_range(values[sitk.GetArrayViewFromImage(reach) > 0])
    tissue = (values > low) & (values < high)
    keep = (sitk.GetArrayViewFromImage(core) > 0) | (tissue & (sitk.GetArrayViewFromImage(reach) > 0))
    brain = sitk.GetImageFromArray(keep.astype(np.uint8))
    brain.CopyInformation(image)

    opening = max(1, int(round(2.0 / spacing)))
    brain = sitk.BinaryMorphologicalOpening(brain, [opening] * 3)
    brain = _fill_slices(_largest(brain))
    return sitk.Cast(sitk.BinaryMorphologicalClosing(brain, [opening] * 3), sitk.sitkUInt8)


def _tissue_range(values: np.ndarray) -> tuple[float, float]:
    """(low, high) intensities of brain tissue among the voxels of the carried brain and its band.

    Three classes by Otsu's method (dark CSF and bone; grey matter; white matter and
    fat): ``low`` is the threshold below grey matter. ``high`` lies above the
    brightest brain tissue (its 99th percentile plus a quarter of its spread), below fat.
    """
    values = values[np.isfinite(values)].astype(np.float64)
    low = float(filters.threshold_multiotsu(values, classes=3)[0])
    tissue = values[values > low]
    p5, p99 = np.percentile(tissue, [5.0, 99.0])
    return low, p99 + 0.25 * (p99 - p5)


def _largest(mask: sitk.Image) -> sitk.Image:
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.Cast(mask, sitk.sitkUInt8)), sortByObjectSize=True)
    return sitk.Cast(labels == 1, sitk.sitkUInt8)


def _fill_slices(mask: sitk.Image) -> sitk.Image:
    """Holes filled in 3D and then in every slice along each axis (ventricles open at one end)."""
    array = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.Cast(mask, sitk.sitkUInt8))).astype(bool)
    for axis in range(3):
        in_plane = np.ones((3, 3, 3), bool)  # neighbours within the slices across ``axis`` only:
        in_plane[(slice(None),) * axis + (0,)] = False  # each slice is filled on its own, in one call
        in_plane[(slice(None),) * axis + (2,)] = False
        array |= ndimage.binary_fill_holes(array, structure=in_plane)
    out = sitk.GetImageFromArray(array.astype(np.uint8))
    out.CopyInformation(mask)
    return out
