"""What a data set holds, case by case: geometry, modalities and label statistics.

Used by ``anodiff inspect``. Reading a case validates every file through
:mod:`anodiff.io`, so a broken file is reported here with its reason, and the
other cases are still summarised.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from anodiff.data.cases import Case, Discovery
from anodiff.errors import DataError
from anodiff.io import check_same_grid, read_volume
from anodiff.progress import Progress


@dataclass(frozen=True)
class CaseSummary:
    id: str
    layout: str
    modalities: tuple[str, ...]
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    label_counts: dict[int, int] | None  # label value -> voxels; None without a label file
    lesion_ml: float | None

    @property
    def status(self) -> str:
        if self.label_counts is None:
            return "no label"
        return "lesion" if self.lesion_ml else "healthy"


@dataclass(frozen=True)
class CaseProblem:
    id: str
    reason: str


def summarize_case(case: Case) -> CaseSummary:
    """Read and validate one case; DataError names the first file that fails."""
    volumes = {m: read_volume(p) for m, p in case.images.items()}
    label_counts, lesion_ml = None, None
    if case.label is not None:
        label = read_volume(case.label, allow_constant=True)
        check_same_grid({**volumes, "label": label})
        values, counts = np.unique(label.data.astype(np.int64), return_counts=True)
        label_counts = {int(v): int(c) for v, c in zip(values, counts) if v != 0}
        voxel_ml = float(np.prod(label.spacing_mm)) / 1000
        lesion_ml = round(sum(label_counts.values()) * voxel_ml, 2)
    else:
        check_same_grid(volumes)
    ref = next(iter(volumes.values()))
    return CaseSummary(
        id=case.id,
        layout=case.layout,
        modalities=case.modalities,
        shape=ref.shape,
        spacing_mm=tuple(round(s, 3) for s in ref.spacing_mm),  # type: ignore[arg-type]
        orientation=ref.orientation,
        label_counts=label_counts,
        lesion_ml=lesion_ml,
    )


def summarize(
    discovery: Discovery, *, progress: Progress | None = None
) -> Iterator[CaseSummary | CaseProblem]:
    """Summaries of every case, or the problem that stops one being read; never stops early."""
    for index, case in enumerate(discovery.cases):
        try:
            yield summarize_case(case)
        except DataError as err:
            yield CaseProblem(case.id, str(err))
        if progress is not None:
            progress(index + 1, len(discovery.cases))
