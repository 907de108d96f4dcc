"""Registration with SimpleITK: modalities onto the reference, the reference onto the template.

Both use Mattes mutual information (intensities differ between contrasts and
between a scan and the template), a coarse-to-fine pyramid and a fixed random
sample of points, so a case registers the same way every time.

A raw scan has skull, scalp and neck; the template is brain only. Two things
keep the head from pulling the template off the brain:

* **masks in the metric**: only template points inside its brain are compared,
  so the rest of the head is never looked at. Not a margin around the brain:
  mutual information pairs the template's empty 0 as readily with bright scalp as
  with dark CSF, and an affine fit then stretches the template's brain over the
  skull (on the IXI sample, an 8 mm margin failed on 2 of 5 volunteers, none failed without one);
* **a staged initialisation**: the head is found (Otsu), its top along the
  scanner's superior axis gives the height of the brain (the neck and a field of
  view cut low move a centre of mass, not the top of the head), and a few
  starting heights are tried at the coarsest level before the rigid and affine
  stages run from the best one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import SimpleITK as sitk

from anodiff.prepare.geometry import regrid, resample
from anodiff.prepare.template import Template

# Template brain top -> head top: scalp, skull and CSF above the brain.
SCALP_MM = 12.0
START_HEIGHTS_MM = (-30.0, -15.0, 0.0, 15.0, 30.0)
COARSE_MM = 2.0  # moving images are registered at this spacing (or their own, when coarser)


@contextmanager
def deterministic() -> Iterator[None]:
    """Run SimpleITK on one thread: its metric sums per-thread parts in an order that varies from run
    to run, which moved the IXI sample's registrations by up to 6 mm between two identical runs."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def coregister(fixed: sitk.Image, moving: sitk.Image, *, seed: int = 0) -> sitk.Euler3DTransform:
    """Rigid transform mapping ``fixed`` points to ``moving`` points (two modalities of one session).

    Starts from the scanner's own world coordinates (the identity), which one
    session shares up to the subject's movement between sequences.
    """
    fixed, moving = coarse(fixed), coarse(moving)
    transform = sitk.Euler3DTransform()
    transform.SetCenter(_centre(fixed))
    reg = _method(seed, shrink=(2, 1), smooth_mm=(2.0, 0.0), iterations=100)
    reg.SetInitialTransform(transform, inPlace=True)
    reg.Execute(fixed, moving)
    return transform


def coarse(image: sitk.Image, spacing_mm: float = COARSE_MM) -> sitk.Image:
    """``image`` (float32) smoothed and resampled to at least ``spacing_mm`` voxels, for registration: the
    pyramid then works on a small image, and the fit is as good (its transforms are sub-voxel anyway)."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    spacing = np.asarray(image.GetSpacing())
    if spacing.min() >= spacing_mm * 0.9:
        return image
    target = np.maximum(spacing, spacing_mm)
    smooth = sitk.SmoothingRecursiveGaussian(image, [float(np.sqrt(max(t**2 - s**2, 0)) / 2.355)
                                                     for s, t in zip(spacing, target)])
    return resample(smooth, regrid(image, target))


def to_template(image: sitk.Image, head: sitk.Image, template: Template, *, seed: int = 0,
                stripped: bool = False) -> sitk.AffineTransform:
    """Affine transform mapping template points to ``image`` points (ITK's fixed -> moving).

    ``head``: the scan's head mask (0/1, on ``image``'s grid), its brain when ``stripped``.
    """
    fixed = template.image
    mask = sitk.Cast(template.brain > 0.5, sitk.sitkUInt8)
    moving = coarse(image)
    rigid = _best_start(fixed, mask, moving, _start(head, template, 0.0 if stripped else SCALP_MM), seed)
    reg = _method(seed, shrink=(4, 2), smooth_mm=(2.0, 1.0), iterations=100, mask=mask)
    reg.SetInitialTransform(rigid, inPlace=True)
    reg.Execute(fixed, moving)

    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    reg = _method(seed, shrink=(4, 2), smooth_mm=(2.0, 1.0), iterations=100, mask=mask)
    reg.SetInitialTransform(affine, inPlace=True)
    reg.Execute(fixed, moving)
    return affine


def _best_start(fixed, mask, moving, start: np.ndarray, seed: int) -> sitk.Euler3DTransform:
    """The starting height (of ``START_HEIGHTS_MM``) whose coarse rigid fit matches best.

    Each fit runs at the coarsest level; they are compared at a finer one, where the
    brain's inner structure (ventricles, grey and white matter) tells the brain from
    a blob of scalp of the same size, which a blurred template cannot.
    """
    judged = coarse(fixed)
    judge = _method(seed, shrink=(1,), smooth_mm=(0.0,), iterations=1, mask=resample(mask, judged, label=True))
    centre = _centre(fixed, mask)
    best, best_value = None, np.inf
    for height in START_HEIGHTS_MM:
        transform = sitk.Euler3DTransform()
        transform.SetCenter(centre)
        transform.SetTranslation(tuple(start + [0.0, 0.0, height]))
        reg = _method(seed, shrink=(6,), smooth_mm=(3.0,), iterations=40, mask=mask)
        reg.SetInitialTransform(transform, inPlace=True)
        reg.Execute(fixed, moving)
        judge.SetInitialTransform(transform)
        value = judge.MetricEvaluate(judged, moving)
        if value < best_value:
            best, best_value = transform, value
    return best


def _start(head: sitk.Image, template: Template, scalp_mm: float) -> np.ndarray:
    """Translation (LPS mm) that puts the template brain's centre at the scan's estimated brain centre."""
    head_points = _points(head)
    brain_points = _points(template.brain)
    centre = brain_points.mean(0)
    top = head_points[:, 2].max() - scalp_mm
    height = top - (brain_points[:, 2].max() - centre[2])
    # The cranium's left-right and front-back centre, from the slab around the brain's height.
    slab = head_points[np.abs(head_points[:, 2] - (height + 20.0)) < 30.0]
    across = slab[:, :2].mean(0) if len(slab) else head_points[:, :2].mean(0)
    return np.array([across[0], across[1], height]) - centre


def _points(mask: sitk.Image, step: int = 2) -> np.ndarray:
    """World (LPS mm) coordinates of a mask's voxels, every ``step``-th along each axis."""
    array = sitk.GetArrayViewFromImage(mask)[::step, ::step, ::step]
    zyx = np.argwhere(array > 0.5) * step
    if len(zyx) == 0:
        return np.zeros((1, 3))
    index = zyx[:, ::-1].astype(float)
    direction = np.asarray(mask.GetDirection()).reshape(3, 3)
    return np.asarray(mask.GetOrigin()) + (index * np.asarray(mask.GetSpacing())) @ direction.T


def _centre(image: sitk.Image, mask: sitk.Image | None = None) -> tuple[float, float, float]:
    """The centre (LPS mm) of a mask's voxels, or of the image's field of view."""
    if mask is not None:
        return tuple(float(v) for v in _points(mask).mean(0))
    size = np.asarray(image.GetSize(), float)
    return image.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2))


def _method(seed: int, *, shrink, smooth_mm, iterations: int, mask: sitk.Image | None = None,
            sampling: float = 0.1) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed + 1)  # seed 0 means "random" to ITK
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    # Steps of at most 2 mm (or the angle that moves a point 2 mm), shrinking as the direction turns:
    # plain gradient descent leapt 30-80 mm into the neck or above the head on some scans.
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.01, numberOfIterations=iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smooth_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg
