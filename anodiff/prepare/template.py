"""The template raw scans are aligned to: the MNI152 (ICBM 2009a) T1 and brain mask nilearn ships.

Both are brain-only (no skull, scalp or neck), so they need no download and carry
no head to match; :mod:`anodiff.prepare.register` handles the scan's head.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from anodiff.prepare.geometry import to_sitk

NAME = "mni152_2009a"


@dataclass(frozen=True)
class Template:
    """The template's T1 (intensities 0-1) and brain mask (0/1), on one 1 mm grid."""

    name: str
    image: sitk.Image
    brain: sitk.Image


@lru_cache(maxsize=1)
def mni152() -> Template:
    """The MNI152 2009a T1 template and its brain (cached; read from nilearn's package data)."""
    from nilearn import datasets  # heavy import, only when preparing

    t1 = datasets.load_mni152_template(resolution=1)
    tissue = [datasets.load_mni152_gm_template(resolution=1), datasets.load_mni152_wm_template(resolution=1)]
    data = np.asarray(t1.get_fdata(), np.float32)
    data /= max(float(data.max()), 1e-6)
    # The brain as anodiff means it: grey + white matter with the ventricles they enclose, not the
    # CSF around the cortex that nilearn's (larger) brain mask includes.
    parenchyma = sum(np.asarray(img.get_fdata(), np.float32) for img in tissue) > 0.5
    brain = _filled(parenchyma).astype(np.float32)
    return Template(NAME, to_sitk(data, t1.affine), to_sitk(brain, t1.affine))


def _filled(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3D, then in every slice along each axis (ventricles that reach the surface)."""
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        mask |= np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)], axis=axis)
    return mask
