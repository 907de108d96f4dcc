"""The one prediction type every method returns for a case, and the clock that fills its timings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from anodiff.io import Volume


@dataclass(frozen=True)
class Prediction:
    """A case's outputs on its input grid (X, Y, Z).

    ``mask`` uint8: {0, 1}, or for several regions a label map (0, or the 1-based
    index of the last region present). ``maps``: named float arrays, (X, Y, Z) or
    (K, X, Y, Z); which names a method fills, and which of them ``anodiff detect``
    writes, the method declares (``Method.outputs``). ``brain`` bool: where maps are
    defined. ``num_network_evals``: network passes per slice (and sample).
    """

    mask: np.ndarray
    maps: dict[str, np.ndarray]
    reference: Volume
    brain: np.ndarray
    threshold: float
    timings: dict[str, float] = field(default_factory=dict)
    num_network_evals: int = 0
    num_slices: int = 0


class Timings(dict):
    """Seconds by stage name: ``with timings.measure("network_s"): ...``."""

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        clock = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - clock
