"""Generic synthetic anomalies, inserted into healthy volumes for the label-free sensitivity check.

The healthy floor shows false positives; it cannot show misses. So at calibration
anodiff inserts anomalies of every size (0.05-150 ml) and of generic kinds into
held-out healthy data and measures how well the map finds them. The kinds are not
keyed to any lesion of the synthetic cohort or of a data set (in the spirit of
foreign-patch interpolation, Tan et al. 2020, and DISYRE, Marimont & Tarroni 2023):

* ``brighter`` / ``darker``: a smooth blob, every modality up (or down);
* ``mixed``: each modality up or down at random (e.g. dark on T1, bright on T2);
* ``one_modality``: a single modality up or down, the others unchanged;
* ``texture``: the tissue's texture changed (noise added, or blurred), its mean kept;
* ``mass``: a nearly iso-intense (within 8 %), featureless region that pushes the
  tissue around it aside: a deformation with little intensity change.

An anomaly's label is what its insertion visibly changed (NSA, Schlüter et al. 2022,
labels by the change too): the voxels where some modality moved by ``VISIBLE`` or
more, or did so on average over its 3-voxel neighbourhood (texture). A blurred
region of flat tissue, or an iso-intense fill of tissue already at that intensity,
changed nothing a method could see, so it is no miss; the tissue a mass pushed
aside did change, so it is part of that anomaly. Everything an insertion changed at
all (``touched``) is kept out of the healthy voxels the check compares with.

Volumes are network-grid tensors (C, H, W, D) in [0, 1] (see
:mod:`anodiff.data.transforms`); sizes are in millilitres on that grid. This module
draws and inserts; it runs no network (that is :mod:`anodiff.methods.anomaly.sensitivity`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

KINDS = ("brighter", "darker", "mixed", "one_modality", "texture", "mass")
# Size strata the draws cycle through, so every size bin of the report is filled (ml, log-uniform within each).
# The last is tumour-sized: a reconstruction that copies a whole tumour copies a 100 ml blob, not a 30 ml one.
SIZE_STRATA_ML = ((0.05, 1.0), (1.0, 10.0), (10.0, 50.0), (50.0, 150.0))
SIZE_RANGE_ML = (SIZE_STRATA_ML[0][0], SIZE_STRATA_ML[-1][1])
CONTRAST = (0.1, 0.35)  # |intensity change| of the intensity kinds, normalised units (healthy tissue ~0.2-0.8)
MASS_CONTRAST = 0.08  # at most, relative to the tissue it replaces
EDGE = 0.3  # the blob's soft edge, as a fraction of its radius
MASS_REACH = 2.0  # a mass moves tissue out to twice its radius
VISIBLE = 0.05  # the smallest change labelled (normalised units): half the weakest contrast drawn


@dataclass(frozen=True)
class Inserted:
    """One inserted anomaly: its kind, visible volume (ml), the voxels it visibly changed (``mask``) and those it
    changed at all (``touched``), (H, W, D) bool on the network grid."""

    kind: str
    ml: float
    mask: np.ndarray
    touched: np.ndarray


def plan(count: int, rng: np.random.Generator, offset: int = 0) -> list[tuple[str, float]]:
    """``count`` (kind, ml) draws: every kind in every size stratum in turn (starting at ``offset``), sizes
    log-uniform within the stratum."""
    draws = []
    for i in range(offset, offset + count):
        kind = KINDS[i % len(KINDS)]
        lo, hi = SIZE_STRATA_ML[(i + i // len(KINDS)) % len(SIZE_STRATA_ML)]
        draws.append((kind, float(np.exp(rng.uniform(np.log(lo), np.log(hi))))))
    return draws


def insert(image: np.ndarray, brain: np.ndarray, spacing_mm, draws: list[tuple[str, float]],
           rng: np.random.Generator, *, allowed: np.ndarray | None = None) -> tuple[np.ndarray, list[Inserted]]:
    """``image`` (C, H, W, D) with the ``draws`` inserted at random places inside ``brain`` (H, W, D) bool, within
    ``allowed`` (H, W, D) bool (e.g. away from a lesion) and apart from each other; a copy, and what was inserted.
    A draw that finds no place (too large for the brain left) is skipped."""
    out = image.astype(np.float32, copy=True)
    spacing = np.asarray(spacing_mm, dtype=float)
    region = brain if allowed is None else brain & allowed
    taken = ~region & brain
    inserted = []
    for kind, ml in draws:
        radii = ellipsoid_radii_mm(ml, rng)
        reach = MASS_REACH if kind == "mass" else 1 + EDGE
        centre = place(region, taken, radii * reach / (1 + EDGE), spacing, rng)
        if centre is None:
            continue
        distance = ellipsoid_distance(brain.shape, centre, radii, spacing, rng)
        core = (distance <= 1) & brain
        if not core.any():  # smaller than a voxel of this grid
            continue
        before = out.copy()
        out = np.clip(INSERTERS[kind](out, profile(distance), core, distance, centre, radii, spacing, rng), 0, 1)
        out *= brain[None] > 0
        touched, mask = changed(before, out, brain)
        mask &= region
        taken |= ndimage.binary_dilation(touched | (distance <= reach), iterations=2)
        if mask.any():  # a change too faint to see is no anomaly to find
            inserted.append(Inserted(kind, float(mask.sum() * np.prod(spacing) / 1000), mask, touched))
    return out, inserted


def changed(before: np.ndarray, after: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What an insertion changed, (H, W, D) bool each: at all (any modality by 1e-4, and the voxels beside), and
    visibly (some modality by ``VISIBLE``, at the voxel or on average over its 3-voxel neighbourhood)."""
    difference = np.abs(after - before)
    touched = ndimage.binary_dilation(difference.max(axis=0) > 1e-4) & brain
    local = ndimage.uniform_filter(difference, size=(1, 3, 3, 3), mode="constant")
    visible = np.maximum(difference, local).max(axis=0) >= VISIBLE
    return touched, visible & brain


def profile(distance: np.ndarray) -> np.ndarray:
    """The blob's weight: 1 inside the ellipsoid (``distance`` <= 1), falling smoothly to 0 at 1 + ``EDGE``."""
    s = np.clip((1 + EDGE - distance) / EDGE, 0, 1)
    return (s * s * (3 - 2 * s)).astype(np.float32)


def ellipsoid_radii_mm(ml: float, rng: np.random.Generator) -> np.ndarray:
    """Semi-axes (mm) of an ellipsoid of ``ml`` millilitres, axis ratios within 0.7-1.4."""
    ratios = rng.uniform(0.7, 1.4, 3)
    ratios /= np.prod(ratios) ** (1 / 3)
    radius = (3 * ml * 1000 / (4 * np.pi)) ** (1 / 3)
    return radius * ratios


def place(brain: np.ndarray, taken: np.ndarray, radii_mm: np.ndarray, spacing: np.ndarray,
          rng: np.random.Generator, tries: int = 200) -> np.ndarray | None:
    """A voxel centre (3,) deep enough in the brain for the ellipsoid and away from ``taken``, or None."""
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    free = ndimage.distance_transform_edt(~taken, sampling=spacing) if taken.any() else np.full(brain.shape, np.inf)
    reach = float(radii_mm.max()) * (1 + EDGE)
    # Small anomalies sit inside the brain; the largest may touch its edge, as large lesions do.
    ok = (depth >= min(reach, 0.5 * float(depth.max()))) & (free >= reach)
    candidates = np.argwhere(ok)
    if len(candidates) == 0:
        return None
    return candidates[rng.integers(len(candidates))].astype(float)


def ellipsoid_distance(shape, centre: np.ndarray, radii_mm: np.ndarray, spacing: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """Normalised ellipsoid radius (H, W, D): 1 on the surface of a randomly rotated ellipsoid about ``centre``."""
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    reach = int(np.ceil(radii_mm.max() * (1 + EDGE) / spacing.min())) + 1
    lo = np.maximum(centre.astype(int) - reach, 0)
    hi = np.minimum(centre.astype(int) + reach + 1, shape)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    offset_mm = (grid - centre) * spacing
    local = offset_mm @ rotation / radii_mm
    distance = np.full(shape, np.inf, np.float32)
    distance[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = np.linalg.norm(local, axis=-1)
    return distance


def _contrast(rng: np.random.Generator) -> float:
    return float(rng.uniform(*CONTRAST))


def _shift(image, weight, signs, rng):
    """Each modality c shifted by ``signs[c]`` times a random contrast, weighted by the blob's profile."""
    for c, sign in enumerate(signs):
        if sign:
            image[c] += sign * _contrast(rng) * weight
    return image


def _brighter(image, weight, mask, distance, centre, radii, spacing, rng):
    return _shift(image, weight, [1] * len(image), rng)


def _darker(image, weight, mask, distance, centre, radii, spacing, rng):
    return _shift(image, weight, [-1] * len(image), rng)


def _mixed(image, weight, mask, distance, centre, radii, spacing, rng):
    signs = rng.choice([-1, 1], size=len(image))
    if len(image) > 1 and abs(signs.sum()) == len(image):  # at least one up and one down
        signs[rng.integers(len(image))] *= -1
    return _shift(image, weight, list(signs), rng)


def _one_modality(image, weight, mask, distance, centre, radii, spacing, rng):
    signs = [0] * len(image)
    signs[rng.integers(len(image))] = rng.choice([-1, 1])
    return _shift(image, weight, signs, rng)


def _texture(image, weight, mask, distance, centre, radii, spacing, rng):
    """Noise added (std 0.05-0.15), or the tissue blurred (a 2-voxel Gaussian), inside the blob."""
    for c in range(len(image)):
        if rng.random() < 0.5:
            changed = image[c] + rng.normal(0, rng.uniform(0.05, 0.15), image[c].shape).astype(np.float32)
        else:
            changed = ndimage.gaussian_filter(image[c], 2.0)
        image[c] = image[c] + weight * (changed - image[c])
    return image


def _mass(image, weight, mask, distance, centre, radii, spacing, rng):
    """The tissue within 1-2 radii pushed outward (up to a third of the radius), and the inside replaced by a
    featureless fill within ``MASS_CONTRAST`` of the tissue it replaces."""
    centre = centre[:, None, None, None]
    # Backward map: a voxel within 1-2 radii takes its tissue from nearer the centre, so the tissue moves outward
    # (the most, a third of the radius, at the surface; none at MASS_REACH radii).
    pull = 1 - 0.35 * np.clip((MASS_REACH - distance) / (MASS_REACH - 1), 0, 1)
    source = centre + (np.indices(distance.shape, dtype=np.float32) - centre) * pull
    for c in range(len(image)):
        moved = ndimage.map_coordinates(image[c], source, order=1, mode="nearest")
        fill = image[c][mask].mean() if mask.any() else 0.0
        fill *= 1 + rng.uniform(-MASS_CONTRAST, MASS_CONTRAST)
        image[c] = np.where(distance < 1 + EDGE, weight * fill + (1 - weight) * moved, moved)
    return image


INSERTERS = {"brighter": _brighter, "darker": _darker, "mixed": _mixed, "one_modality": _one_modality,
             "texture": _texture, "mass": _mass}
