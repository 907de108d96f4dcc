"""Simulated lesions for the synthetic cohort (:mod:`anodiff.data.synthetic`): where they go, their shape,
their mass effect, their compartments and labels; and the smooth random fields both modules draw."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Lesion compartment intensities per contrast (t1, t1ce, t2, flair).
LESION_MEANS = {
    "oedema": (0.45, 0.45, 0.85, 0.92),
    "enhancing": (0.55, 1.15, 0.70, 0.80),
    "necrosis": (0.28, 0.30, 0.95, 0.55),
    "wm_lesion": (0.66, 0.66, 0.72, 0.68),
    "t1_hypo": (0.33, 0.33, 0.62, 0.51),
    "mass": (0.58, 0.98, 0.62, 0.61),
}
def smooth_field(rng: np.random.Generator, shape, control_points: int, sigma: float) -> np.ndarray:
    """A smooth random field: normal values on a coarse grid, interpolated to ``shape``."""
    coarse = rng.normal(0, sigma, (control_points,) * 3).astype(np.float32)
    factors = [s / control_points for s in shape]
    field = ndimage.zoom(coarse, factors, order=1, mode="nearest", grid_mode=True)
    return field[: shape[0], : shape[1], : shape[2]]


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class LesionPlan:
    centres: list[np.ndarray]  # mm, subject space
    radii: list[np.ndarray]  # mm, per axis
    rotations: list[np.ndarray]
    push_mm: float  # mass effect at the first lesion's boundary


def plan_lesions(kind: str, rng: np.random.Generator, world: np.ndarray, tissues: dict, affine) -> LesionPlan:
    """Where the lesions go and how large they are, from the healthy anatomy."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    depth_mm = ndimage.distance_transform_edt(tissues["brain"], sampling=spacing)
    wm = tissues["wm"]
    if kind == "glioma":
        count, radius, where, push = 1, (9.0, 18.0), (wm > 0.6) & (depth_mm > 28), 0.45
    elif kind == "wm_lesions":
        count, radius, where, push = int(rng.integers(4, 13)), (2.0, 5.0), (wm > 0.8) & (depth_mm > 10), 0.0
    elif kind == "t1_hypo":
        count, radius, where, push = int(rng.integers(1, 3)), (6.0, 11.0), (wm > 0.7) & (depth_mm > 18), 0.0
    else:  # mass
        count, radius, where, push = 1, (13.0, 20.0), (depth_mm > 10) & (depth_mm < 18), 0.8
    candidates = np.argwhere(where)
    if len(candidates) == 0:
        candidates = np.argwhere(tissues["brain"])
    centres, radii, rotations = [], [], []
    for _ in range(count):
        voxel = candidates[rng.integers(len(candidates))]
        centres.append(world[(slice(None), *voxel)].astype(np.float32))
        r = rng.uniform(*radius)
        radii.append((r * rng.uniform(0.75, 1.25, 3)).astype(np.float32))
        rotations.append(rotation(*rng.uniform(-np.pi, np.pi, 3)).astype(np.float32))
    return LesionPlan(centres, radii, rotations, push * float(radii[0].max()))


def mass_effect(world: np.ndarray, centre: np.ndarray, radius: float, push_mm: float) -> np.ndarray:
    """Points to sample the healthy anatomy at, so tissue is pushed away from ``centre``.

    Radial map d -> d - push * g(d), g(d) = min(d / radius, 1) * exp(-(d / 2.5 radius)^2),
    monotonic for push < radius, so the anatomy is displaced, never folded.
    """
    offset = world - centre[:, None, None, None]
    dist = np.sqrt((offset**2).sum(0)) + 1e-6
    g = np.minimum(dist / radius, 1.0) * np.exp(-((dist / (2.5 * radius)) ** 2))
    return world - offset / dist * (push_mm * g)


def lesion_compartments(kind, plan: LesionPlan, world, tissues, rng):
    """Soft compartment weights (for intensities) and the hard label map of the lesions."""
    brain = tissues["brain"]
    roughness = smooth_field(rng, world.shape[1:], 10, 0.12)
    rho = np.full(world.shape[1:], np.inf, np.float32)
    for centre, radii, rotation in zip(plan.centres, plan.radii, plan.rotations):
        offset = np.tensordot(rotation.T, world - centre[:, None, None, None], axes=1)
        rho = np.minimum(rho, np.sqrt(((offset / radii[:, None, None, None]) ** 2).sum(0)))
    rho = rho + roughness

    def soft(inside: np.ndarray, edge: float = 0.12) -> np.ndarray:
        """Partial-volume weight in [0, 1] of the region rho < 1 scaled by ``inside``."""
        return np.clip((1 - inside) / edge + 0.5, 0, 1) * brain

    label = np.zeros(rho.shape, np.uint8)
    if kind == "glioma":
        oedema_scale = rng.uniform(1.6, 2.2)
        oedema = soft(rho / oedema_scale) * np.clip(tissues["wm"] * 2 + (rho < 1.3), 0, 1)
        core, necrosis = soft(rho), soft(rho / 0.5)
        compartments = [("oedema", oedema), ("enhancing", core), ("necrosis", necrosis)]
        label[oedema >= 0.5] = 2
        label[core >= 0.5] = 4
        label[necrosis >= 0.5] = 1
    else:
        weight = soft(rho)
        compartments = [(kind if kind != "wm_lesions" else "wm_lesion", weight)]
        label[weight >= 0.5] = 1
    return compartments, label
