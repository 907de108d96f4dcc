"""The preprocessing chain: a case on disk -> a normalised, cropped, resized tensor.

Built from MONAI transforms, so every spatial step is recorded on the image's
``MetaTensor`` and can be inverted (a map computed on the network's grid goes
back to the scan's own grid with ``Compose.inverse``):

1. :class:`LoadCased` reads all modalities through :mod:`anodiff.io` (validated,
   one grid checked) into ``image`` (C, X, Y, Z), ``label`` (1, X, Y, Z) if any,
   and ``brain`` (1, X, Y, Z), the voxels non-zero in any modality (inputs are
   skull-stripped, 0 outside the brain, as BraTS ships them).
2. ``Orientationd`` to RAS, optional ``Spacingd``.
3. ``CropForegroundd`` to the brain's bounding box (plus a margin).
4. ``Resized`` so the longest side is ``image_size`` (aspect kept), then
   ``SpatialPadd`` to a square ``image_size`` in-plane (2D) or a cube (3D).
5. :class:`NormalizeInsideBraind`: per volume and channel, intensities taken
   *inside the brain* map to [0, 1] (percentiles, or the median to a fixed level),
   clipped; 0 outside.
   MONAI's ``ScaleIntensityRangePercentilesd`` takes percentiles over the whole
   array, so the share of background (i.e. the field of view) would move them.

Axial slices of the result are ``image[..., z]`` (RAS: z runs inferior -> superior).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    Invertd,
    MapTransform,
    Orientationd,
    Resized,
    Spacingd,
    SpatialPadd,
)

from anodiff.config import DataConfig
from anodiff.data.cases import Case
from anodiff.errors import AnodiffError, DataError
from anodiff.io import Volume, check_same_grid, read_images, read_volume

IMAGE, LABEL, BRAIN = "image", "label", "brain"
HIDDEN = "hidden"  # brain tissue near a label: a healthy model neither sees it nor learns from it
REFERENCE = "reference"  # the first modality's Volume as read: the grid outputs are written on
# Bumped whenever the chain's code changes what it computes: the disk cache is keyed on it.
CHAIN_VERSION = 2
# More non-zero millilitres than any adult brain holds (1.1-1.8 l, cerebellum and ventricles included; the
# synthetic subjects reach 2.2 l): a scan with more still has its skull on, or has no zero background.
MAX_BRAIN_ML = 2500.0


def case_item(case: Case, modalities: tuple[str, ...]) -> dict[str, Any]:
    """The dict a preprocessing chain takes: plain strings, so it can be hashed for caching."""
    item: dict[str, Any] = {"id": case.id, "images": {m: str(case.images[m]) for m in modalities}}
    if case.label is not None:
        item["label_path"] = str(case.label)
    return item


class LoadCased(MapTransform):
    """Read a case's modalities (validated, same grid) into channel-first MetaTensors.

    Input: ``{"images": {modality: path}, "label_path": path (optional), ...}``.
    Output adds ``image`` (C, X, Y, Z) float32, ``brain`` (1, X, Y, Z) float32 in {0, 1},
    with ``keep_reference`` ``reference`` (the first modality's :class:`~anodiff.io.Volume`,
    so detection reads nothing twice) and, with a label, ``label`` (1, X, Y, Z) float32 holding the label values.
    """

    def __init__(self, keep_reference: bool = False) -> None:
        super().__init__(keys=[IMAGE], allow_missing_keys=True)
        self.keep_reference = keep_reference

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        volumes = read_images(data["images"])
        ref = next(iter(volumes.values()))
        stack = np.stack([v.data for v in volumes.values()])
        meta = {"filename_or_obj": str(ref.path), "modalities": list(volumes)}
        affine = torch.as_tensor(ref.affine, dtype=torch.float64)
        out[IMAGE] = MetaTensor(torch.from_numpy(stack), affine=affine, meta=dict(meta))
        brain = (stack != 0).any(0, keepdims=True)
        check_skull_stripped(ref, int(brain.sum()))
        out[BRAIN] = MetaTensor(torch.from_numpy(brain.astype(np.float32)), affine=affine.clone(), meta=dict(meta))
        if self.keep_reference:  # detection only: a cache of training volumes must not hold full-size copies
            out[REFERENCE] = ref
        if data.get("label_path"):
            label = read_volume(data["label_path"], allow_constant=True)
            check_same_grid({**volumes, LABEL: label})
            out[LABEL] = MetaTensor(torch.from_numpy(label.data[None]), affine=affine.clone(), meta=dict(meta))
        return out


def check_skull_stripped(reference: Volume, brain_voxels: int) -> None:
    """Raise DataError when a case's non-zero region is larger than a brain: the chain reads skull-stripped
    scans (0 outside the brain), and a head would be scored whole."""
    brain_ml = brain_voxels * float(np.prod(reference.spacing_mm)) / 1000
    if brain_ml > MAX_BRAIN_ML:
        raise DataError(f"{reference.path}: {brain_ml:.0f} ml of non-zero voxels, more than any brain "
                        f"({MAX_BRAIN_ML:.0f} ml at most): the scan is not skull-stripped; run `anodiff prepare` on "
                        "it first, or use a model trained on prepared scans (it prepares raw scans itself)")


MEDIAN_LEVEL = 0.4  # where "median" normalisation puts the brain's median: healthy tissue stays below ~0.8


class NormalizeInsideBraind(MapTransform):
    """Map each channel's intensities inside ``brain`` to [0, 1], clipped; 0 outside.

    ``percentiles``: [p_low, p_high] to [0, 1], as in nnU-Net's CT scheme (0.5, 99.5).
    ``median``: p_low to 0 and the median to :data:`MEDIAN_LEVEL`. A lesion filling
    a tenth of the brain moves the median by a few percent, but p_high by a third,
    so only ``median`` keeps healthy tissue at its level and a bright lesion's contrast.
    Statistics are taken per volume and per channel over brain voxels only, so the
    field of view does not move them.
    """

    def __init__(self, percentiles: tuple[float, float] = (0.5, 99.5),
                 normalisation: Literal["percentiles", "median"] = "percentiles") -> None:
        super().__init__(keys=[IMAGE])
        self.percentiles = percentiles
        self.normalisation = normalisation

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        image, brain = data[IMAGE], data[BRAIN][0] > 0
        normalised = image.clone()
        for c in range(image.shape[0]):
            values = image[c][brain]
            if values.numel() == 0:
                normalised[c] = 0
                continue
            q = torch.tensor([p / 100 for p in self.percentiles] + [0.5], dtype=values.dtype)
            lo, hi, median = torch.quantile(_subsample(values), q)
            if self.normalisation == "median":
                hi = lo + (median - lo) / MEDIAN_LEVEL
            scaled = (image[c] - lo) / torch.clamp(hi - lo, min=1e-6)
            normalised[c] = torch.where(brain, scaled.clamp(0, 1), torch.zeros_like(scaled))
        out[IMAGE] = normalised
        return out


def _subsample(values: torch.Tensor, limit: int = 4_000_000) -> torch.Tensor:
    """torch.quantile refuses inputs above 2**24 elements; a strided subsample is exact enough."""
    step = max(1, values.numel() // limit)
    return values[::step]


def preprocessing(
    cfg: DataConfig, *, with_label: bool, spatial_dims: Literal[2, 3] = 2, keep_reference: bool = False
) -> Compose:
    """The chain from a :func:`case_item` dict to network-ready tensors (see module doc)."""
    keys = [IMAGE, BRAIN] + ([LABEL] if with_label else [])
    interp = ["bilinear", "nearest"] + (["nearest"] if with_label else [])
    size = cfg.image_size
    ras = (("L", "R"), ("P", "A"), ("I", "S"))
    steps = [LoadCased(keep_reference), Orientationd(keys=keys, axcodes="RAS", labels=ras)]
    if cfg.spacing_mm is not None:
        steps.append(Spacingd(keys=keys, pixdim=cfg.spacing_mm, mode=interp, dtype=np.float32))
    steps += [
        CropForegroundd(keys=keys, source_key=BRAIN, margin=cfg.crop_margin, allow_smaller=True),
        Resized(
            keys=keys,
            spatial_size=size,
            size_mode="longest",
            mode=["trilinear", "nearest"] + (["nearest"] if with_label else []),
            anti_aliasing=[True, False] + ([False] if with_label else []),
        ),
        SpatialPadd(keys=keys, spatial_size=(size, size, -1) if spatial_dims == 2 else (size, size, size)),
        # Last, on the final grid, so that the brain mask also zeroes what resizing smeared outside it.
        NormalizeInsideBraind(cfg.percentiles, cfg.normalisation),
    ]
    return Compose(steps)


def to_input_grid(chain: Compose, reference: MetaTensor, values: torch.Tensor) -> torch.Tensor:
    """Undo ``chain``'s spatial steps on ``values``: (C, H, W, D) network grid -> (C, X, Y, Z) input grid.

    ``reference`` is the chain's ``image`` output, whose recorded operations are
    replayed backwards (linear interpolation: threshold a map after this, not before).
    """
    carrier = MetaTensor(values, meta=dict(reference.meta), applied_operations=list(reference.applied_operations))
    invert = Invertd(keys="values", transform=chain, orig_keys=IMAGE, nearest_interp=False)
    restored = invert({"values": carrier, IMAGE: reference})["values"]
    return torch.as_tensor(restored)


@contextmanager
def anodiff_errors() -> Iterator[None]:
    """Re-raise an AnodiffError that MONAI wrapped in 'RuntimeError: applying transform ...'."""
    try:
        yield
    except RuntimeError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, AnodiffError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
