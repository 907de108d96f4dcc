"""Axial slices kept on disk, read one at a time: training data larger than memory.

A :class:`DiskSlices` holds the kept slices of one preprocessed volume in one
file of fixed-size records, ``image`` (C, H, W) float16 then ``brain`` and
``label`` (H, W) uint8, and reads a slice with one ``pread``: nothing is mapped
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

    def __init__(self, path: Path, image: torch.Tensor, brain: torch.Tensor, label: torch.Tensor | None,
                 zs: list[int]) -> None:
        """``image`` (C, H, W, Z), ``brain`` and ``label`` (1, H, W, Z): a preprocessed volume."""
        self.path = Path(path)
        self.channels, self.height, self.width = image.shape[0], image.shape[1], image.shape[2]
        self.position = {z: i for i, z in enumerate(zs)}
        self.has_label = label is not None
        if label is not None and float(label.max()) > MAX_LABEL:
            raise ValueError(f"label values above {MAX_LABEL} cannot be stored as uint8")
        records = [self._record(image[..., z], brain[0, ..., z], None if label is None else label[0, ..., z])
                   for z in zs]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        partial.write_bytes(b"".join(records))
        partial.replace(self.path)

    @property
    def _image_bytes(self) -> int:
        return self.channels * self.height * self.width * 2

    @property
    def _record_bytes(self) -> int:
        return self._image_bytes + 2 * self.height * self.width

    def _record(self, image: torch.Tensor, brain: torch.Tensor, label: torch.Tensor | None) -> bytes:
        label = torch.zeros_like(brain) if label is None else label
        return (image.numpy().astype(np.float16).tobytes() + (brain > 0).numpy().astype(np.uint8).tobytes()
                + np.rint(label.numpy()).astype(np.uint8).tobytes())

    def read(self, z: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slice ``z``: image (C, H, W) float32, brain (1, H, W) float32, label (1, H, W) float32."""
        size, plane = self._record_bytes, self.height * self.width
        fd = os.open(self.path, os.O_RDONLY)
        try:
            raw = os.pread(fd, size, self.position[z] * size)
        finally:
            os.close(fd)
        image = np.frombuffer(raw, np.float16, count=self.channels * plane).reshape(
            self.channels, self.height, self.width)
        masks = np.frombuffer(raw, np.uint8, offset=self._image_bytes).reshape(2, 1, self.height, self.width)
        return (torch.from_numpy(image.astype(np.float32)), torch.from_numpy(masks[0].astype(np.float32)),
                torch.from_numpy(masks[1].astype(np.float32)))
