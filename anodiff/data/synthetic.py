"""A synthetic multi-contrast brain cohort with simulated lesions and their ground truth.

Built from the MNI152 (ICBM 2009a) T1 template, grey- and white-matter
probability maps and brain mask that nilearn ships, so nothing is downloaded.
Each subject is the template warped and re-imaged:

* anatomy: a random rigid tilt (up to 4 degrees), scaling (+-6 %) and a smooth
  random deformation (about 2.5 mm on a 6x6x6 control grid);
* imaging: per-subject voxel spacing (in-plane 1-1.25x, slices 1-1.6x the base
  spacing), axis order RAS or LPS, per-modality tissue contrast jitter, a smooth
  multiplicative bias field and Rician noise; skull-stripped, 0 outside the brain
  (as BraTS ships its data);
* four contrasts, t1 / t1ce / t2 / flair, rendered from CSF/GM/WM partial volumes
  with tissue intensities in the usual order for each contrast.

Lesion kinds (``LESION_KINDS``), chosen so that a FLAIR intensity threshold can
find some and not others:

* ``glioma``: necrotic core (label 1), enhancing ring (label 4) and surrounding
  oedema in white matter (label 2), BraTS 2021 labels. Bright on FLAIR/T2, ring-
  enhancing on t1ce, with mild mass effect. A FLAIR threshold finds it.
* ``wm_lesions``: 4-12 small white-matter lesions (radius 2-5 mm), FLAIR a little
  brighter than cortex, a little darker than white matter on T1. Label 1.
  A FLAIR threshold also fires on cortex.
* ``t1_hypo``: one or two lesions dark on T1/t1ce (CSF-like), mildly bright on
  T2 and near-normal on FLAIR (chronic "black holes"). Label 1.
* ``mass``: a large peripheral space-occupying lesion that is near isointense to
  grey matter on FLAIR, enhances homogeneously on t1ce and pushes the
  surrounding anatomy away (strong mass effect). Label 1.

Output is the BraTS 2021 layout (``<id>/<id>_t1.nii.gz`` ... ``<id>_seg.nii.gz``,
int16 images, uint8 labels) plus ``cohort.json`` describing every case (kind,
lesion volume, spacing). A case is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from anodiff.data.lesions import LESION_MEANS, lesion_compartments, mass_effect, plan_lesions, rotation, smooth_field
from anodiff.errors import DataError
from anodiff.io import Volume, write_volume

log = logging.getLogger(__name__)

MODALITIES = ("t1", "t1ce", "t2", "flair")
LESION_KINDS = ("glioma", "wm_lesions", "t1_hypo", "mass")

# Relative tissue intensities (csf, gm, wm) per contrast; orders as in clinical
# MRI: T1 csf < gm < wm, T2 csf > gm > wm, FLAIR csf (suppressed) < wm < gm.
TISSUE_MEANS = {
    "t1": (0.25, 0.55, 0.80),
    "t1ce": (0.25, 0.57, 0.78),
    "t2": (1.00, 0.60, 0.42),
    "flair": (0.12, 0.62, 0.48),
}
STORED_SCALE = 1000.0  # images are written as int16: relative intensity x 1000
_FOV_MARGIN_MM = 12.0


@dataclass(frozen=True)
class CaseInfo:
    """What ``cohort.json`` records of one synthetic case."""

    id: str
    kind: str  # "healthy" or one of LESION_KINDS
    num_lesions: int
    lesion_voxels: int
    lesion_ml: float
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str


@dataclass(frozen=True)
class Subject:
    """One rendered subject: contrasts and label on one grid, ``affine`` voxel -> RAS mm."""

    images: dict[str, np.ndarray]  # modality -> (X, Y, Z) float32, relative intensity
    label: np.ndarray  # (X, Y, Z) uint8, BraTS 2021 labels
    affine: np.ndarray
    num_lesions: int


# ---------------------------------------------------------------- atlas


@dataclass(frozen=True)
class Atlas:
    csf: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    affine: np.ndarray  # template voxel -> MNI mm
    box_mm: tuple[np.ndarray, np.ndarray]  # brain bounding box (min, max) in mm


@lru_cache(maxsize=1)
def template_atlas() -> Atlas:
    from nilearn import datasets  # heavy import, only for synthesis

    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), np.float32)
    brain_img = datasets.load_mni152_brain_mask(resolution=1)
    brain = np.asarray(brain_img.get_fdata(), np.float32)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    affine = brain_img.affine
    idx = np.argwhere(brain > 0.5)
    corners = np.c_[[idx.min(0), idx.max(0)], [1, 1]] @ affine.T
    return Atlas(csf, gm, wm, brain, affine, (corners[0, :3], corners[1, :3]))


# ---------------------------------------------------------------- subject


def render_subject(seed: int, index: int, kind: str | None, *, spacing_mm: float = 1.0,
                   with_lesion: bool = True) -> Subject:
    """Render case ``index`` of the cohort with ``seed``; ``kind`` None is healthy.

    ``with_lesion=False`` renders the same subject (anatomy, contrast, noise)
    without its lesion, which is how the tests check that a label covers exactly
    the voxels a lesion changed.
    """
    if kind is not None and kind not in LESION_KINDS:
        raise DataError(f"unknown lesion kind '{kind}'; choose from {', '.join(LESION_KINDS)}")
    streams = np.random.SeedSequence([seed, index]).spawn(4)
    anatomy_rng, imaging_rng, lesion_rng, noise_rng = (np.random.default_rng(s) for s in streams)
    atlas = template_atlas()

    affine, shape = _subject_grid(atlas, imaging_rng, spacing_mm)
    world = world_coordinates(affine, shape)  # (3, X, Y, Z) mm, subject space
    to_template = random_warp(anatomy_rng, shape, world, atlas)
    tissues = sample_tissues(atlas, to_template(world))

    tissues, compartments, label, num_lesions = draw_lesions(kind, lesion_rng, world, tissues, affine, to_template,
                                                             with_lesion=with_lesion)
    contrast = draw_contrast(imaging_rng)
    images = {}
    for modality in MODALITIES:
        bias = np.exp(smooth_field(imaging_rng, shape, 4, 0.08))
        images[modality] = (brain_image(modality, tissues, compartments, contrast) * bias).astype(np.float32)
    noise_sigma = noise_rng.uniform(0.01, 0.03)
    for modality in MODALITIES:
        real = images[modality] + noise_rng.normal(0, noise_sigma, shape).astype(np.float32)
        imag = noise_rng.normal(0, noise_sigma, shape).astype(np.float32)
        images[modality] = np.where(tissues["brain"], np.sqrt(real**2 + imag**2), 0).astype(np.float32)
    return Subject(images=images, label=label, affine=affine, num_lesions=num_lesions)


def draw_lesions(kind: str | None, rng: np.random.Generator, world: np.ndarray, tissues: dict, affine: np.ndarray,
                 to_template, *, with_lesion: bool = True) -> tuple[dict, list, np.ndarray, int]:
    """(tissues, compartments, label, number of lesions) of a subject with a ``kind`` lesion (None: healthy).

    A lesion with mass effect pushes the anatomy: ``tissues`` are resampled, displaced.
    """
    label = np.zeros(world.shape[1:], np.uint8)
    if kind is None:
        return tissues, [], label, 0
    atlas = template_atlas()
    plan = plan_lesions(kind, rng, world, tissues, affine)
    if not with_lesion:
        return tissues, [], label, len(plan.centres)
    if plan.push_mm > 0:
        displaced = mass_effect(world, plan.centres[0], plan.radii[0].max(), plan.push_mm)
        tissues = sample_tissues(atlas, to_template(displaced))
    compartments, label = lesion_compartments(kind, plan, world, tissues, rng)
    return tissues, compartments, label, len(plan.centres)


def brain_image(modality: str, tissues: dict, compartments: list, contrast: dict) -> np.ndarray:
    """One contrast of the brain: tissue partial volumes times their intensities, lesion compartments blended in."""
    m = MODALITIES.index(modality)
    image = sum(tissues[t] * contrast[modality][i] for i, t in enumerate(("csf", "gm", "wm")))
    for name, weight in compartments:
        image = (1 - weight) * image + weight * LESION_MEANS[name][m] * contrast["lesion_gain"][m]
    return image


def _subject_grid(atlas: Atlas, rng: np.random.Generator, base_mm: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Voxel spacing, axis flips and field of view of one subject's images."""
    in_plane = base_mm * rng.uniform(1.0, 1.25)
    spacing = np.array([in_plane, in_plane, base_mm * rng.uniform(1.0, 1.6)])
    lo, hi = atlas.box_mm[0] - _FOV_MARGIN_MM, atlas.box_mm[1] + _FOV_MARGIN_MM
    shape = tuple(int(math.ceil(e)) for e in (hi - lo) / spacing)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = lo
    if rng.random() < 0.5:  # LPS-ordered voxels, as DICOM-derived scans often are
        affine[0, 0], affine[1, 1] = -spacing[0], -spacing[1]
        affine[0, 3], affine[1, 3] = lo[0] + (shape[0] - 1) * spacing[0], lo[1] + (shape[1] - 1) * spacing[1]
    return affine, shape  # type: ignore[return-value]


def world_coordinates(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3].astype(np.float32) @ grid + affine[:3, 3:4].astype(np.float32)
    return world.reshape(3, *shape)


def random_warp(rng: np.random.Generator, shape, world: np.ndarray, atlas: Atlas):
    """A subject -> template map: rigid tilt and scaling about the brain centre, plus a smooth warp."""
    centre = ((atlas.box_mm[0] + atlas.box_mm[1]) / 2).astype(np.float32)
    angles = np.deg2rad(rng.uniform(-4, 4, 3))
    tilt = rotation(*angles) / rng.uniform(0.94, 1.06, 3)[:, None]
    displacement = np.stack([smooth_field(rng, shape, 6, 2.5) for _ in range(3)])

    def to_template(points: np.ndarray) -> np.ndarray:
        flat = points.reshape(3, -1) - centre[:, None]
        moved = (tilt.astype(np.float32) @ flat + centre[:, None]).reshape(points.shape)
        return moved + displacement

    return to_template


def sample_tissues(atlas: Atlas, template_mm: np.ndarray) -> dict[str, np.ndarray]:
    """Trilinear samples of the tissue maps at template-space points (3, X, Y, Z)."""
    inverse = np.linalg.inv(atlas.affine).astype(np.float32)
    flat = template_mm.reshape(3, -1)
    voxels = inverse[:3, :3] @ flat + inverse[:3, 3:4]

    def sample(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, voxels, order=1, mode="constant").reshape(template_mm.shape[1:])

    brain = sample(atlas.brain) > 0.5
    parts = {name: np.where(brain, sample(getattr(atlas, name)), 0) for name in ("csf", "gm", "wm")}
    total = np.maximum(parts["csf"] + parts["gm"] + parts["wm"], 1e-3)
    tissues = {name: (p / total).astype(np.float32) for name, p in parts.items()}
    tissues["brain"] = brain
    return tissues


def draw_contrast(rng: np.random.Generator) -> dict:
    """Per-subject tissue and lesion intensity jitter (about +-6 %)."""
    out = {m: tuple(v * rng.uniform(0.94, 1.06) for v in TISSUE_MEANS[m]) for m in MODALITIES}
    out["lesion_gain"] = tuple(rng.uniform(0.94, 1.06) for _ in MODALITIES)
    return out


# ---------------------------------------------------------------- cohort


def plan_kinds(num_cases: int, seed: int, *, healthy_fraction: float, kinds=LESION_KINDS) -> list[str | None]:
    """Which case is healthy (None) and which lesion kind each other case gets (cycling kinds)."""
    num_healthy = num_cases if not kinds else int(round(num_cases * healthy_fraction))
    healthy = set(np.random.default_rng(seed).permutation(num_cases)[:num_healthy].tolist())
    plan, next_kind = [], 0
    for index in range(num_cases):
        if index in healthy:
            plan.append(None)
        else:
            plan.append(kinds[next_kind % len(kinds)])
            next_kind += 1
    return plan


def save_image(image: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """A relative-intensity image stored as int16 (x ``STORED_SCALE``)."""
    _save(np.clip(np.round(image * STORED_SCALE), 0, np.iinfo(np.int16).max).astype(np.int16), affine, path)


def case_info(case_id: str, kind: str | None, num_lesions: int, label: np.ndarray, affine: np.ndarray) -> CaseInfo:
    """The ``cohort.json`` entry of a case whose label lies on the grid of ``affine``."""
    spacing = tuple(round(float(s), 3) for s in np.linalg.norm(affine[:3, :3], axis=0))
    voxels = int(np.count_nonzero(label))
    return CaseInfo(
        id=case_id,
        kind=kind or "healthy",
        num_lesions=num_lesions,
        lesion_voxels=voxels,
        lesion_ml=round(voxels * float(np.prod(spacing)) / 1000, 3),
        shape=tuple(int(s) for s in label.shape),
        spacing_mm=spacing,  # type: ignore[arg-type]
        orientation="".join(nib.orientations.aff2axcodes(affine)),
    )


def save_mask(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """A label or mask stored as uint8."""
    _save(np.asarray(data, np.uint8), affine, path)


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    write_volume(data, path, like=Volume(data, affine), dtype=data.dtype, overwrite=True)
