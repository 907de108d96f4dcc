"""Run a function over a preprocessed volume: its brain-holding axial slices in batches (2D models), or the
whole volume at once (3D models). The one place every method's network meets a volume.

``fn`` takes a batch of inputs (B, C, *S) and returns named outputs, each
(B, *K, *S); the results come back as (*K, H, W, D) volumes, zero on the slices
``fn`` did not see.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from anodiff.errors import DataError
from anodiff.progress import Progress

BatchFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def brain_slices(brain: torch.Tensor) -> list[int]:
    """Axial indices z of a (1, H, W, D) brain mask that hold any brain: the slices a 2D model runs on."""
    return torch.nonzero(brain[0].flatten(0, 1).amax(0) > 0).flatten().tolist()


def map_slices(fn: BatchFn, image: torch.Tensor, brain: torch.Tensor, *, batch_size: int,
               progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """``fn`` over the brain slices of ``image`` (C, H, W, D), ``batch_size`` slices a call.

    Each output of ``fn`` (B, *K, H, W) is gathered into a float32 (*K, H, W, D) volume on the CPU.
    """
    z_list = brain_slices(brain)
    if not z_list:
        raise DataError("the volume holds no brain voxel")
    out: dict[str, torch.Tensor] = {}
    for start in range(0, len(z_list), batch_size):
        zs = z_list[start : start + batch_size]
        slices = image[..., zs].permute(3, 0, 1, 2).float()  # (B, C, H, W)
        for name, values in fn(slices).items():
            if name not in out:
                out[name] = torch.zeros((*values.shape[1:-2], *image.shape[1:]), dtype=torch.float32)
            out[name][..., zs] = values.float().cpu().movedim(0, -1)
        if progress is not None:
            progress(min(start + batch_size, len(z_list)), len(z_list))
    return out


def map_volume(fn: BatchFn, image: torch.Tensor, *, progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """``fn`` over the whole volume (C, H, W, D) as a batch of one; outputs (*K, H, W, D)."""
    out = {name: values[0].float().cpu() for name, values in fn(image[None].float()).items()}
    if progress is not None:
        progress(1, 1)
    return out
