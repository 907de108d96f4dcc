"""The healthy floor: how faithfully a model reconstructs healthy tissue, zone by zone.

No anomaly score beats its own floor: a lesion is found only where it stands
above the residual of healthy tissue like it. On held-out healthy brain, on the
input grid, this module reads the plain residual |x - x_hat| (averaged over
modalities and median-filtered like the map, whatever the map's ``anomaly.score``:
mean and 99th percentile; named ``score_*`` in meta.json) and the SSIM between the normalised input and its
reconstruction, overall and in four zones found from the scan itself, with no
atlas or label:

* ``brain_edge``: brain within ``edge_mm`` of the brain mask's surface (at least its outer voxel layer);
* ``ventricle_rim``: a ``rim_voxels`` band around the ventricles, the connected
  pieces of cerebrospinal fluid deeper than ``deep_mm`` of at least ``ventricle_ml``
  (smaller ones are sulci);
* ``white_matter`` and ``cortex`` (grey matter within ``cortex_mm`` of the surface),
  from three intensity classes (multi-Otsu) of one modality, mapped to tissues by
  that contrast's usual order.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu
from skimage.metrics import structural_similarity

ZONES = ("overall", "brain_edge", "ventricle_rim", "white_matter", "cortex")
# Tissues by intensity, darkest first, in each contrast (T1: CSF < GM < WM; T2: WM < GM < CSF; FLAIR: CSF < WM < GM).
TISSUE_ORDER = {"t1": ("csf", "gm", "wm"), "t1ce": ("csf", "gm", "wm"), "t2": ("wm", "gm", "csf"),
                "flair": ("csf", "wm", "gm")}


def zone_modality(modalities: tuple[str, ...]) -> str:
    """The contrast the tissue classes are read from: T1 (the clearest grey/white contrast) when there is one."""
    return next((m for m in ("t1", "t1ce", "flair", "t2") if m in modalities), modalities[0])


def tissue_zones(image: np.ndarray, brain: np.ndarray, spacing_mm, modality: str, *, edge_mm: float = 3.0,
                 deep_mm: float = 15.0, ventricle_ml: float = 1.0, cortex_mm: float = 20.0,
                 rim_voxels: int = 2) -> dict[str, np.ndarray]:
    """Bool (X, Y, Z) masks of the zones (see the module doc) of one scan ``image`` of contrast ``modality``."""
    spacing = [float(s) for s in spacing_mm]
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    edge = brain & (depth <= max(edge_mm, *spacing))  # a voxel's depth is at least its own size
    inner = brain & ~edge
    zones = {"overall": brain.copy(), "brain_edge": edge}
    values = image[inner]
    if values.size < 10 or np.unique(values).size < 4:  # too little brain to tell tissues apart
        return zones | {name: np.zeros_like(brain) for name in ("ventricle_rim", "white_matter", "cortex")}
    classes = np.digitize(image, threshold_multiotsu(values, classes=3))
    order = TISSUE_ORDER.get(modality, TISSUE_ORDER["t1"])
    tissue = {name: inner & (classes == index) for index, name in enumerate(order)}
    pieces, count = ndimage.label(tissue["csf"] & (depth > deep_mm))
    sizes_ml = ndimage.sum(np.ones_like(pieces), pieces, index=np.arange(1, count + 1)) * np.prod(spacing) / 1000
    ventricles = np.isin(pieces, 1 + np.flatnonzero(sizes_ml >= ventricle_ml))
    rim = ndimage.binary_dilation(ventricles, iterations=rim_voxels) & inner & ~ventricles
    return zones | {"ventricle_rim": rim, "white_matter": tissue["wm"] & ~rim,
                    "cortex": tissue["gm"] & ~rim & (depth <= cortex_mm)}


def ssim_map(normalised: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """Local SSIM (X, Y, Z) of a (C, X, Y, Z) input and its reconstruction in [0, 1], averaged over modalities."""
    maps = [structural_similarity(x, y, data_range=1.0, full=True)[1] for x, y in zip(normalised, reconstruction)]
    return np.mean(maps, axis=0).astype(np.float32)


def floor_samples(score: np.ndarray, ssim: np.ndarray, zones: dict[str, np.ndarray],
                  where: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The score and SSIM values of one case in each zone, restricted to ``where`` (its healthy voxels)."""
    return {name: {"score": score[mask & where], "ssim": ssim[mask & where]} for name, mask in zones.items()}


def floor_figures(samples: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, float]]:
    """Per zone, pooled over cases: voxels, mean and 99th percentile of the score, mean SSIM."""
    figures = {}
    for zone in ZONES:
        score = np.concatenate([s[zone]["score"] for s in samples if zone in s] or [np.zeros(0)])
        ssim = np.concatenate([s[zone]["ssim"] for s in samples if zone in s] or [np.zeros(0)])
        if score.size == 0:
            figures[zone] = {"voxels": 0, "score_mean": float("nan"), "score_p99": float("nan"),
                             "ssim_mean": float("nan")}
            continue
        figures[zone] = {"voxels": int(score.size), "score_mean": float(score.mean()),
                         "score_p99": float(np.percentile(score, 99)), "ssim_mean": float(ssim.mean())}
    return figures
