"""Calibration slabs: every training case lends an axial slab of its brain to calibration.

With ``train.holdout: slabs`` (2D pixel-space models) no case is set aside: each
case holds out an axial slab of ``val_fraction`` of its brain's extent, the slabs of
successive cases spread evenly from the brain's bottom to its top (k = round(1 /
val_fraction) positions, repeated after k cases), so calibration sees every level of
the brain. Training keeps only the slices farther than :data:`GUARD` of the extent
from the case's slab, so no calibration slice has a training neighbour. A data set of
two or three cases then trains on every subject instead of one or two.

A position is a fraction of the brain's axial extent, from the centre of its lowest
slice (about 0) to that of its highest (about 1), so a slab is the same anatomy on
the input grid and on the network grid whatever their spacing, crop or storage order.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

Slab = tuple[float, float]  # [low, high) positions, as fractions of the brain's axial extent

GUARD = 0.05  # of the brain's extent (~7 mm of an adult brain) kept out of training on each side of a slab


def held_out_slabs(case_ids: list[str], val_fraction: float) -> dict[str, Slab]:
    """Each case's calibration slab, ``val_fraction`` wide: k positions from bottom to top, case i at i mod k
    (one case: the middle)."""
    k = min(len(case_ids), max(1, round(1 / val_fraction)))
    step = (1 - val_fraction) / (k - 1) if k > 1 else 0.0
    low = lambda i: (1 - val_fraction) / 2 if k == 1 else (i % k) * step  # noqa: E731
    return {case_id: (low(i), low(i) + val_fraction) for i, case_id in enumerate(case_ids)}


def guarded(slab: Slab, guard: float = GUARD) -> Slab:
    """The slab widened by ``guard`` on each side: what training leaves out."""
    return slab[0] - guard, slab[1] + guard


def axial_positions(brain: np.ndarray, axis: int, *, upward: bool = True) -> np.ndarray:
    """(N,) positions of the N indices along ``axis`` of a bool brain mask, as fractions of the brain's extent
    along it; ``upward``: the index grows towards the head's top (False: a grid stored top first). All NaN
    without a brain voxel."""
    others = tuple(a for a in range(brain.ndim) if a != axis)
    on = np.flatnonzero(brain.any(axis=others))
    size = brain.shape[axis]
    if on.size == 0:
        return np.full(size, np.nan)
    extent = on[-1] - on[0] + 1
    index = np.arange(size)
    return (index - on[0] + 0.5) / extent if upward else (on[-1] - index + 0.5) / extent


def in_slab(positions: np.ndarray, slab: Slab) -> np.ndarray:
    """Bool (N,): positions within [low, high)."""
    return (positions >= slab[0]) & (positions < slab[1])


def world_z_axis(affine: np.ndarray) -> tuple[int, bool]:
    """(the voxel axis running along world z, whether its index grows upwards) of a 3D grid."""
    orientation = nib.orientations.io_orientation(affine)
    axis = int(np.argmax(orientation[:, 0] == 2))
    return axis, bool(orientation[axis, 1] > 0)


def along(values: np.ndarray, axis: int) -> np.ndarray:
    """(N,) values per index of ``axis``, shaped to broadcast over a 3D grid."""
    view = [1, 1, 1]
    view[axis] = -1
    return values.reshape(view)


def slab_region(brain: np.ndarray, affine: np.ndarray, slab: Slab) -> np.ndarray:
    """Bool, broadcastable to ``brain`` (X, Y, Z): the voxels of the axial (world z) slab on this grid."""
    axis, upward = world_z_axis(affine)
    return along(in_slab(axial_positions(brain, axis, upward=upward), slab), axis)
