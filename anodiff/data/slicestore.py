"""Axial slices kept on disk, read one at a time: training data larger than memory.

A :class:`DiskSlices` holds the kept slices of one preprocessed volume in one
file of fixed-size records, ``image`` (C, H, W) float16 then its masks (``brain``,
``label``, ...; (H, W) uint8 each), and reads a slice with one ``pread``: nothing is mapped
into the process, so its memory stays that of the slices in flight, whatever the
number of cases (the page cache, which the kernel reclaims, holds the rest).
Images lie in [0, 1], where float16 keeps about three decimal digits.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import torch

MAX_LABEL = 255


class DiskSlices:
    """The slices ``zs`` of one volume, written once to ``path`` and read back by index."""

    def __init__(self, path: Path, image: torch.Tensor, masks: dict[str, torch.Tensor | None], zs: list[int]) -> None:
        """``image`` (C, H, W, Z) and ``masks`` by name, each (1, H, W, Z) with values 0-255 (brain, label, ...; None
        for none): a preprocessed volume."""
        self.path = Path(path)
        self.channels, self.height, self.width = image.shape[0], image.shape[1], image.shape[2]
        self.position = {z: i for i, z in enumerate(zs)}
        self.names = list(masks)
        for name, mask in masks.items():
            if mask is not None and float(mask.max()) > MAX_LABEL:
                raise ValueError(f"{name} values above {MAX_LABEL} cannot be stored as uint8")
        planes = {name: torch.zeros_like(image[:1]) if mask is None else mask for name, mask in masks.items()}
        records = [self._record(image[..., z], [plane[0, ..., z] for plane in planes.values()]) for z in zs]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        partial.write_bytes(b"".join(records))
        partial.replace(self.path)

    @property
    def _image_bytes(self) -> int:
        return self.channels * self.height * self.width * 2

    @property
    def _record_bytes(self) -> int:
        return self._image_bytes + len(self.names) * self.height * self.width

    def _record(self, image: torch.Tensor, planes: list[torch.Tensor]) -> bytes:
        return image.numpy().astype(np.float16).tobytes() + b"".join(
            np.rint(plane.numpy()).astype(np.uint8).tobytes() for plane in planes)

    def read(self, z: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Slice ``z``: image (C, H, W) float32, and each mask (1, H, W) float32 by name."""
        size, plane = self._record_bytes, self.height * self.width
        fd = os.open(self.path, os.O_RDONLY)
        try:
            raw = os.pread(fd, size, self.position[z] * size)
        finally:
            os.close(fd)
        image = np.frombuffer(raw, np.float16, count=self.channels * plane).reshape(
            self.channels, self.height, self.width)
        masks = np.frombuffer(raw, np.uint8, offset=self._image_bytes).reshape(len(self.names), 1, self.height,
                                                                                self.width)
        return (torch.from_numpy(image.astype(np.float32)),
                {name: torch.from_numpy(mask.astype(np.float32)) for name, mask in zip(self.names, masks)})
