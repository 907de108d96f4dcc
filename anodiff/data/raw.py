"""Raw synthetic scans: the synthetic brains with a head around them, as a scanner writes them.

For tests and demos of ``anodiff prepare`` without data. Each subject of
:mod:`anodiff.data.synthetic` gets, in the template's space (so the head follows
the subject's warp):

* CSF around the brain, skull, scalp fat, and a neck below the brain (muscle
  with a rim of fat), with contrast-specific intensities; background 0;
* a random pose per subject (up to 15 degrees, 15 mm) and a small extra one per
  modality (up to 5 degrees, 5 mm: the subject moved between sequences);
* per modality its own grid: axial or sagittal slices, spacing and a field of
  view that stops at a different height of the neck;
* a strong smooth bias field and Rician noise over the whole field of view.

The lesion label and the true brain mask are written on the t1 scan's grid
(``<id>_seg``, ``<id>_brainmask``), the reference of a raw case.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from anodiff.data.lesions import rotation, smooth_field
from anodiff.data.synthetic import (
    CaseInfo,
    brain_image,
    case_info,
    draw_contrast,
    draw_lesions,
    random_warp,
    sample_tissues,
    save_image,
    save_mask,
    template_atlas,
    world_coordinates,
)

RAW_MODALITIES = ("t1", "t2", "flair")
# Intensities (skull, fat, muscle) per contrast, on the scale of synthetic.TISSUE_MEANS.
HEAD_MEANS = {"t1": (0.04, 1.0, 0.45), "t2": (0.04, 0.8, 0.3), "flair": (0.04, 0.75, 0.38)}
# Outward distance from the brain (mm) where each layer ends: CSF, skull, scalp.
LAYERS_MM = (3.0, 9.0, 15.0)
NECK_MM = 90.0  # how far below the brain the neck reaches in the widest field of view


@dataclass(frozen=True)
class RawSubject:
    """Raw scans, each on its own grid (``(X, Y, Z)`` array, affine), and the truth on the t1 grid."""

    images: dict[str, tuple[np.ndarray, np.ndarray]]
    label: np.ndarray  # (X, Y, Z) uint8 on the t1 grid, BraTS 2021 labels
    brain: np.ndarray  # (X, Y, Z) uint8 on the t1 grid
    num_lesions: int


def render_raw_subject(seed: int, index: int, kind: str | None, *, spacing_mm: float = 1.0) -> RawSubject:
    """Render case ``index`` of a raw cohort with ``seed`` (``kind`` None: healthy)."""
    streams = np.random.SeedSequence([seed, index, 1]).spawn(5)
    anatomy_rng, imaging_rng, lesion_rng, noise_rng, pose_rng = (np.random.default_rng(s) for s in streams)
    atlas = template_atlas()
    affine, shape = _head_grid(spacing_mm)
    world = world_coordinates(affine, shape)
    to_template = random_warp(anatomy_rng, shape, world, atlas)
    points = to_template(world)
    tissues = sample_tissues(atlas, points)
    tissues, compartments, label, num_lesions = draw_lesions(kind, lesion_rng, world, tissues, affine, to_template)
    layers = _head_layers(points)
    contrast = draw_contrast(imaging_rng)
    subject_pose = _pose(pose_rng, 15.0, 15.0)

    images = {}
    for modality in RAW_MODALITIES:
        scene = _scene(modality, tissues, compartments, contrast, layers)
        pose = subject_pose @ _pose(pose_rng, 5.0, 5.0)
        grid_affine, grid_shape = _scan_grid(pose_rng, spacing_mm, sagittal=modality == "t1")
        image = _resample(scene, affine, grid_affine, grid_shape, pose, order=1)
        bias = np.exp(smooth_field(imaging_rng, grid_shape, 4, 0.2))
        images[modality] = (_rician(noise_rng, image * bias), grid_affine)
        if modality == "t1":
            t1_grid = (grid_affine, grid_shape, pose)
    label_t1 = _resample(label.astype(np.float32), affine, *t1_grid, order=0).astype(np.uint8)
    brain_t1 = _resample(tissues["brain"].astype(np.float32), affine, *t1_grid, order=1) > 0.5
    return RawSubject(images, label_t1, brain_t1.astype(np.uint8), num_lesions)


def _scene(modality: str, tissues: dict, compartments: list, contrast: dict, layers: dict) -> np.ndarray:
    """The noise-free contrast of the whole head in subject space."""
    csf = contrast[modality][0]
    skull, fat, muscle = HEAD_MEANS[modality]
    image = np.where(tissues["brain"], brain_image(modality, tissues, compartments, contrast), 0.0)
    for name, value in (("csf", csf), ("skull", skull), ("fat", fat), ("muscle", muscle)):
        image = np.where(layers[name] & ~tissues["brain"], value, image)
    return image.astype(np.float32)


@lru_cache(maxsize=1)
def _distance_mm() -> tuple[np.ndarray, np.ndarray]:
    """Outward distance (mm) from the template brain on the template grid, and that grid's inverse affine."""
    atlas = template_atlas()
    return ndimage.distance_transform_edt(atlas.brain < 0.5).astype(np.float32), np.linalg.inv(atlas.affine)


def _head_layers(points: np.ndarray) -> dict[str, np.ndarray]:
    """Which subject voxels (template-space ``points``, (3, X, Y, Z)) are CSF, skull, fat and neck muscle."""
    distance, inverse = _distance_mm()
    voxels = inverse[:3, :3] @ points.reshape(3, -1) + inverse[:3, 3:4]
    d = ndimage.map_coordinates(distance, voxels, order=1, mode="nearest").reshape(points.shape[1:])
    bottom = template_atlas().box_mm[0][2]
    x, y, z = points
    below = (z < bottom + 30) & (z > bottom - NECK_MM)

    def neck_within(margin_mm: float) -> np.ndarray:  # an elliptic cylinder behind the brainstem, grown by a margin
        return ((x / (42.0 + margin_mm)) ** 2 + ((y + 25.0) / (48.0 + margin_mm)) ** 2 < 1) & below

    neck, rim = neck_within(0.0), neck_within(5.0)
    csf, skull, scalp = LAYERS_MM
    return {"csf": d <= csf, "skull": (d > csf) & (d <= skull),
            "fat": ((d > skull) & (d <= scalp)) | (rim & ~neck & (d > scalp)), "muscle": neck & (d > scalp)}


def _head_grid(spacing_mm: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Subject space: the template brain's box with room for the head around it and the neck below (RAS)."""
    low, high = template_atlas().box_mm
    low = low - np.array([30.0, 30.0, NECK_MM])
    high = high + 30.0
    shape = tuple(int(np.ceil(e)) for e in (high - low) / spacing_mm)
    affine = np.diag([spacing_mm] * 3 + [1.0])
    affine[:3, 3] = low
    return affine, shape  # type: ignore[return-value]


def _scan_grid(rng: np.random.Generator, base_mm: float, *, sagittal: bool) -> tuple[np.ndarray, tuple[int, ...]]:
    """One acquisition's grid: axial (RAS) or sagittal (PSR) voxels, its spacing and a field of view
    reaching a random depth into the neck."""
    low, high = template_atlas().box_mm
    low = low - np.array([25.0, 25.0, rng.uniform(25.0, NECK_MM - 10)])
    high = high + np.array([25.0, 25.0, 45.0])  # the top of the head stays in view whatever the pose
    in_plane, thick = base_mm * rng.uniform(1.0, 1.2), base_mm * rng.uniform(1.0, 1.5)
    if sagittal:  # voxel axes P, S, R
        axes, spacing = np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]], float).T, np.array([in_plane, in_plane, thick])
    else:  # voxel axes R, A, S
        axes, spacing = np.eye(3), np.array([in_plane, in_plane, thick])
    extent = np.abs(axes.T @ (high - low))
    shape = tuple(int(np.ceil(e / s)) for e, s in zip(extent, spacing))
    affine = np.eye(4)
    affine[:3, :3] = axes * spacing
    start = np.where(axes.sum(1) >= 0, low, high)  # the corner the first voxel sits at
    affine[:3, 3] = start
    return affine, shape


def _pose(rng: np.random.Generator, degrees: float, mm: float) -> np.ndarray:
    """A random rigid motion (4, 4), about the template brain's centre."""
    low, high = template_atlas().box_mm
    centre = (low + high) / 2
    motion = np.eye(4)
    motion[:3, :3] = rotation(*np.deg2rad(rng.uniform(-degrees, degrees, 3)))
    motion[:3, 3] = centre - motion[:3, :3] @ centre + rng.uniform(-mm, mm, 3)
    return motion


def _resample(volume: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray, grid_shape, pose: np.ndarray, *,
              order: int) -> np.ndarray:
    """``volume`` (on ``affine``) seen on a scan grid: scan world points -> subject space through ``pose``."""
    to_voxels = np.linalg.inv(affine) @ pose @ grid_affine
    return ndimage.affine_transform(volume, to_voxels[:3, :3], to_voxels[:3, 3], output_shape=tuple(grid_shape),
                                    order=order, mode="constant", cval=0.0).astype(np.float32)


def _rician(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    sigma = rng.uniform(0.01, 0.03)
    real = image + rng.normal(0, sigma, image.shape).astype(np.float32)
    imag = rng.normal(0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real**2 + imag**2).astype(np.float32)


def write_raw_case(folder: Path, case_id: str, subject: RawSubject, kind: str | None) -> CaseInfo:
    """``<id>_<modality>`` (int16, each on its own grid), ``<id>_seg`` and ``<id>_brainmask`` on the t1 grid."""
    folder.mkdir()
    for modality, (image, affine) in subject.images.items():
        save_image(image, affine, folder / f"{case_id}_{modality}.nii.gz")
    t1_affine = subject.images["t1"][1]
    save_mask(subject.label, t1_affine, folder / f"{case_id}_seg.nii.gz")
    save_mask(subject.brain, t1_affine, folder / f"{case_id}_brainmask.nii.gz")
    return case_info(case_id, kind, subject.num_lesions, subject.label, t1_affine)
