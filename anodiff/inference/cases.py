"""Cases as a model takes them: named from the command line, matched to the model's modalities, preprocessed.

:func:`preprocess` runs the model's preprocessing chain once and keeps it, so any
map computed on the network's grid can go back to the scan's own grid
(:meth:`PreprocessedCase.on_input_grid`, MONAI's inverse of the chain).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose

from anodiff.config import DataConfig
from anodiff.data.cases import Case, discover
from anodiff.data.transforms import (
    BRAIN,
    IMAGE,
    LABEL,
    REFERENCE,
    anodiff_errors,
    case_item,
    preprocessing,
    to_input_grid,
)
from anodiff.errors import DataError
from anodiff.io import Volume, strip_image_suffix


@dataclass(frozen=True)
class PreprocessedCase:
    """A case through the model's chain: ``image`` (C, H, W, D) in [0, 1] and ``brain_grid`` (1, H, W, D)
    on the network's grid; ``reference``, the first modality as read, whose grid every output takes."""

    chain: Compose
    item: dict

    @property
    def image(self) -> torch.Tensor:
        return self.item[IMAGE].as_tensor()

    @property
    def brain_grid(self) -> torch.Tensor:
        return self.item[BRAIN].as_tensor()

    @property
    def label_grid(self) -> torch.Tensor | None:
        """(1, H, W, D) label values on the network's grid, when preprocessed ``with_label`` from a labelled case."""
        return self.item[LABEL].as_tensor() if LABEL in self.item else None

    @property
    def reference(self) -> Volume:
        return self.item[REFERENCE]

    @property
    def brain(self) -> np.ndarray:
        """bool (X, Y, Z): the brain on the input grid (non-zero in the first modality)."""
        return self.reference.data != 0

    def on_input_grid(self, values: torch.Tensor) -> np.ndarray:
        """(K, H, W, D) on the network grid -> (K, X, Y, Z) float32 on the input grid."""
        return to_input_grid(self.chain, self.item[IMAGE], values).numpy().astype(np.float32)


def preprocess(case: Case, modalities: tuple[str, ...], data_cfg: DataConfig, spatial_dims: int = 2, *,
            with_label: bool = False) -> PreprocessedCase:
    """Preprocess one case for a model (the chain of :mod:`anodiff.data.transforms`); ``with_label`` also
    takes its label (when it has one) onto the network grid (:attr:`PreprocessedCase.label_grid`)."""
    missing = [m for m in modalities if m not in case.images]
    if missing:
        raise DataError(
            f"case {case.id}: the model needs modalities {list(modalities)}, but {missing} "
            f"{'is' if len(missing) == 1 else 'are'} missing (it has {list(case.images)})"
        )
    with_label = with_label and case.label is not None
    chain = preprocessing(data_cfg, with_label=with_label, spatial_dims=spatial_dims, keep_reference=True)
    item = case_item(case, modalities)
    if not with_label:
        item.pop("label_path", None)
    with anodiff_errors():
        return PreprocessedCase(chain, chain(item))


def match_modalities(case: Case, modalities: tuple[str, ...]) -> Case:
    """A single unnamed scan is taken as the model's one modality; otherwise names must match."""
    if list(case.images) == ["image"] and len(modalities) == 1:
        return Case(id=case.id, images={modalities[0]: case.images["image"]}, label=case.label, layout=case.layout)
    missing = [m for m in modalities if m not in case.images]
    if missing:
        raise DataError(
            f"case {case.id}: the model was trained on {list(modalities)} but the input has "
            f"{list(case.images)}; give each modality (e.g. --flair a.nii.gz --t1 b.nii.gz)"
        )
    return case


def resolve_cases(inputs: list[Path], modality_paths: dict[str, Path]) -> list[Case]:
    """Cases to detect on: a scan file, a case folder, a data folder, or one path per modality."""
    if modality_paths:
        return [Case(id=strip_image_suffix(next(iter(modality_paths.values()))), images=modality_paths)]
    cases: list[Case] = []
    for path in inputs:
        if path.is_file() and not path.name.endswith(".json"):
            cases.append(Case(id=strip_image_suffix(path), images={"image": path}))
        else:
            found = discover(path)
            if not found.cases:
                raise DataError(f"{path}: no cases found")
            cases += found.cases
    return cases


def labelled_cases(data: Path, modalities: tuple[str, ...]) -> tuple[list[Case], Path]:
    """The labelled cases of ``data`` (matched to the modalities) and the data root; DataError when none."""
    found = discover(data)
    cases = [match_modalities(c, modalities) for c in found.cases if c.label is not None]
    if not cases:
        raise DataError(f"{data}: no labelled cases to evaluate on")
    return cases, found.root
