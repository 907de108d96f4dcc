"""Preprocessed volumes, cached once, and the 2D axial slice data set built on them.

Each case goes through the preprocessing chain once: in memory (MONAI
``CacheDataset``) or on disk (``PersistentDataset``, keyed on the case's paths
and the chain), so an epoch never re-reads NIfTI files. With ``data.slice_store:
disk`` the kept slices go to disk as float16 records (:mod:`anodiff.data.slicestore`)
and are read one at a time, so memory does not grow with the number of cases. :class:`SliceDataset`
indexes the axial slices of the cached volumes that hold enough brain, within
a range of the brain's extent, and, for unsupervised training, with no label
voxel at all.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from scipy import ndimage

from anodiff import __version__
from anodiff.config import DataConfig, config_to_dict
from anodiff.data.cases import Case
from anodiff.data.slabs import Slab, axial_positions, in_slab
from anodiff.data.slicestore import DiskSlices
from anodiff.data.transforms import (
    BRAIN,
    CHAIN_VERSION,
    HIDDEN,
    IMAGE,
    LABEL,
    anodiff_errors,
    case_item,
    preprocessing,
)
from anodiff.progress import Progress

log = logging.getLogger(__name__)




def volume_dataset(
    cases: Sequence[Case],
    modalities: tuple[str, ...],
    cfg: DataConfig,
    *,
    with_label: bool,
    spatial_dims: int = 2,
    in_memory: bool = True,
) -> Dataset:
    """Preprocessed volumes, each computed once (memory, or ``cfg.cache_dir`` on disk); with ``in_memory``
    False and no cache folder, computed when read (for a reader that reads each volume once)."""
    items = [case_item(c, modalities) for c in cases]
    if with_label:
        missing = [c.id for c in cases if c.label is None]
        if missing:
            log.info("%d case(s) have no label and count as healthy: %s", len(missing), ", ".join(missing[:5]))
    chain = preprocessing(cfg, with_label=with_label, spatial_dims=spatial_dims)
    if cfg.cache_dir is not None:
        return PersistentDataset(items, transform=chain, cache_dir=cfg.cache_dir,
                                 hash_func=cache_key(cfg, with_label=with_label, spatial_dims=spatial_dims))
    if not in_memory:
        return Dataset(items, transform=chain)
    # copy_cache=False: the chain is deterministic and readers never write into the cache.
    return CacheDataset(items, transform=chain, cache_rate=1.0, num_workers=0, progress=False, copy_cache=False)


def cache_key(cfg: DataConfig, *, with_label: bool, spatial_dims: int):
    """The disk cache's key of a :func:`case_item`: its paths, the chain's settings and anodiff's version, and
    each file's size and modification time, so a changed setting or a replaced file is never served stale."""
    chain = {"data": config_to_dict(cfg), "with_label": with_label, "spatial_dims": spatial_dims,
             "anodiff": __version__, "chain_version": CHAIN_VERSION}
    chain["data"].pop("cache_dir")
    chain["data"].pop("slice_store")

    def key(item: dict) -> bytes:
        paths = [*item["images"].values(), *([item["label_path"]] if item.get("label_path") else [])]
        stamps = []
        for path in paths:
            stat = os.stat(path) if os.path.exists(path) else None
            stamps.append((path, stat.st_size, stat.st_mtime_ns) if stat else (path, None, None))
        return pickle_hashing({"item": item, "chain": chain, "files": stamps})

    return key


@dataclass(frozen=True)
class SliceRef:
    volume: int
    z: int


def away_from_label(brain: torch.Tensor, label: torch.Tensor | None, spacing_mm, margin_mm: float) -> torch.Tensor:
    """The brain (1, H, W, D) bool, less every voxel within ``margin_mm`` of a label voxel (3D, in mm on a grid of
    ``spacing_mm``): the healthy tissue of a labelled case, mid-brain anatomy included."""
    inside = brain > 0
    if label is None or not (label > 0).any():
        return inside
    distance = ndimage.distance_transform_edt(~(label[0] > 0).numpy(), sampling=spacing_mm)
    return inside & torch.from_numpy(distance > margin_mm)[None]


def grid_spacing(image) -> tuple[float, float, float]:
    """Voxel spacing (mm) of a preprocessed volume, from the affine the chain left on its MetaTensor."""
    affine = np.asarray(image.affine, dtype=float)
    return tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))


def select_slices(volume: dict[str, Any], cfg: DataConfig, *, healthy_only: bool,
                  drop: Slab | None = None) -> list[int]:
    """Axial indices z of one preprocessed volume that a 2D data set keeps.

    A slice is kept when its brain area is at least ``cfg.min_brain_fraction`` of
    the slice, it lies within ``cfg.slice_range`` of the brain's axial extent,
    outside the ``drop`` slab (:mod:`anodiff.data.slabs`) and, with ``healthy_only``,
    it has no label voxel; or, when the volume holds its ``hidden`` tissue (the brain near
    the label), enough brain besides it.
    """
    brain = volume[BRAIN][0] > 0  # (X, Y, Z)
    area = brain.sum(dim=(0, 1)).float() / (brain.shape[0] * brain.shape[1])
    z_brain = torch.nonzero(area > 0).flatten()
    if z_brain.numel() == 0:
        return []
    first, last = int(z_brain[0]), int(z_brain[-1])
    extent = last - first + 1
    lo = first + int(cfg.slice_range[0] * extent)
    hi = first + int(round(cfg.slice_range[1] * extent))
    keep = torch.zeros_like(area, dtype=torch.bool)
    keep[lo:hi] = True
    keep &= area >= cfg.min_brain_fraction
    if HIDDEN in volume:
        healthy = brain & ~(volume[HIDDEN][0] > 0)
        keep &= healthy.sum(dim=(0, 1)).float() / (brain.shape[0] * brain.shape[1]) >= cfg.min_brain_fraction
    elif healthy_only and LABEL in volume:
        keep &= (volume[LABEL][0] > 0).sum(dim=(0, 1)) == 0
    if drop is not None:
        keep &= ~torch.from_numpy(in_slab(axial_positions(brain.numpy(), 2), drop))
    return torch.nonzero(keep).flatten().tolist()


class SliceDataset(torch.utils.data.Dataset):
    """Axial 2D slices of cached, preprocessed volumes.

    Item: ``image`` (C, H, W) float32 in [0, 1], ``brain`` (1, H, W) in {0, 1},
    ``label`` (1, H, W) in {0, 1} (whole lesion; zeros for unlabelled cases), or
    with ``regions`` (R, H, W), one channel per region (the label values it holds),
    ``case_id`` and ``z``. ``drop``: per case id, an axial slab whose slices are left out.
    With ``margin_mm`` (healthy data from labelled cases), every slice with enough brain
    farther than ``margin_mm`` from the label is kept, and the item holds the brain nearer
    the label as ``hidden`` (1, H, W) in {0, 1}: what training hides from the network.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        modalities: tuple[str, ...],
        cfg: DataConfig,
        *,
        healthy_only: bool,
        regions: tuple[tuple[int, ...], ...] | None = None,
        drop: dict[str, Slab] | None = None,
        margin_mm: float | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.cases = list(cases)
        self.regions = regions
        self.healthy_only = healthy_only
        with_label = any(c.label is not None for c in self.cases)
        on_disk = cfg.slice_store == "disk"
        with anodiff_errors():
            cached = volume_dataset(self.cases, modalities, cfg, with_label=with_label, in_memory=not on_disk)
        # Removed with the data set; under cache_dir when one is given (a disk with room).
        self._folder = tempfile.TemporaryDirectory(prefix="anodiff-slices-", dir=cfg.cache_dir) if on_disk else None
        # Plain tensors held once (or slices on disk): a slice lookup then copies nothing and reads no NIfTI file.
        self.volumes: list[dict[str, torch.Tensor] | DiskSlices] = []
        self.refs: list[SliceRef] = []
        self._lesion: list[int] = []
        for index in range(len(cached)):
            with anodiff_errors():
                item = cached[index]
            volume = {k: torch.as_tensor(v).float() for k, v in item.items() if k in (IMAGE, BRAIN, LABEL)}
            if margin_mm is not None:
                away = away_from_label(volume[BRAIN], volume.get(LABEL), grid_spacing(item[IMAGE]), margin_mm)
                volume[HIDDEN] = ((volume[BRAIN] > 0) & ~away).float()
            zs = select_slices(volume, cfg, healthy_only=self.healthy_only,
                               drop=(drop or {}).get(self.cases[index].id))
            if LABEL in volume:
                lesion = (volume[LABEL][0] > 0).any(dim=(0, 1))
                self._lesion += [len(self.refs) + i for i, z in enumerate(zs) if lesion[z]]
            self.refs += [SliceRef(index, z) for z in zs]
            if on_disk:
                path = Path(self._folder.name) / f"{index:06d}.slices"
                volume = DiskSlices(path, volume[IMAGE], {k: volume.get(k) for k in (BRAIN, LABEL, HIDDEN)
                                                          if k != HIDDEN or k in volume}, zs)
            self.volumes.append(volume)
            if progress is not None:
                progress(index + 1, len(cached))
        log.info("%d slices from %d volumes (healthy_only=%s, slices in %s)", len(self.refs), len(self.volumes),
                 self.healthy_only, cfg.slice_store)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref = self.refs[index]
        volume = self.volumes[ref.volume]
        if isinstance(volume, DiskSlices):
            image, masks = volume.read(ref.z)
        else:
            image = volume[IMAGE][..., ref.z]
            masks = {k: volume[k][..., ref.z] for k in (BRAIN, LABEL, HIDDEN) if k in volume}
        brain = masks[BRAIN]
        label = masks.get(LABEL, torch.zeros_like(brain))
        item = {IMAGE: image, BRAIN: brain, "case_id": self.cases[ref.volume].id, "z": ref.z}
        if HIDDEN in masks:
            item[HIDDEN] = masks[HIDDEN]
        if self.regions is None:
            item[LABEL] = (label > 0).float()
        else:
            item[LABEL] = torch.cat([torch.isin(label, torch.tensor(values, dtype=label.dtype)).float()
                                     for values in self.regions])
        return item

    def lesion_indices(self) -> list[int]:
        """Indices of the slices that hold at least one label voxel."""
        return list(self._lesion)


def brain_patches(images: torch.Tensor, brains: torch.Tensor, size: int, generator: torch.Generator,
                  *others: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """One random ``size`` x ``size`` patch per slice, centred on a random brain pixel (kept inside the slice).

    ``images`` (B, C, H, W), ``brains`` (B, 1, H, W) -> (B, C, size, size); with ``others`` (B, K, H, W), the
    same patches of each, all returned as a tuple. Every draw comes from ``generator``.
    """
    height, width = images.shape[-2:]
    corners = []
    for brain in brains:
        inside = torch.nonzero(brain[0] > 0)
        if len(inside) == 0:
            inside = torch.tensor([[height // 2, width // 2]])
        y, x = inside[int(torch.randint(len(inside), (1,), generator=generator))].tolist()
        corners.append((min(max(y - size // 2, 0), height - size), min(max(x - size // 2, 0), width - size)))
    crop = lambda stack: torch.stack([s[:, top:top + size, left:left + size]  # noqa: E731
                                      for s, (top, left) in zip(stack, corners)])
    return crop(images) if not others else tuple(crop(stack) for stack in (images, *others))


def mirrored(generator: torch.Generator, *batches: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The ``batches`` with a random half of their samples mirrored left to right, the same samples in each.

    ``batches`` (B, C, X, ...) on the RAS grid, whose first spatial axis X runs from left to right. A mirrored
    healthy brain is still a healthy brain, so a cohort of a few subjects shows the network more anatomy.
    """
    flip = torch.rand(batches[0].shape[0], generator=generator) < 0.5
    return tuple(torch.where(flip.view(-1, *[1] * (b.ndim - 1)), b.flip(2), b) for b in batches)


class VolumeDataset(torch.utils.data.Dataset):
    """Whole preprocessed volumes, for 3D models.

    Item: ``image`` (C, S, S, S) float32 in [0, 1], ``brain`` (1, S, S, S), ``case_id``.
    With ``healthy_only`` a volume is kept only when it has no label voxel.
    """

    def __init__(self, cases: Sequence[Case], modalities: tuple[str, ...], cfg: DataConfig, *,
                 healthy_only: bool) -> None:
        with_label = any(c.label is not None for c in cases)
        with anodiff_errors():
            cached = volume_dataset(list(cases), modalities, cfg, with_label=with_label, spatial_dims=3)
        self.items: list[dict[str, Any]] = []
        for index, case in enumerate(cases):
            with anodiff_errors():
                item = cached[index]
            if healthy_only and LABEL in item and bool((item[LABEL] > 0).any()):
                continue
            self.items.append({IMAGE: torch.as_tensor(item[IMAGE]).float(),
                               BRAIN: torch.as_tensor(item[BRAIN]).float(), "case_id": case.id})
        log.info("%d volumes of %d cases (healthy_only=%s)", len(self.items), len(cases), healthy_only)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]
