"""The intensity-threshold baseline every anodiff figure is shown beside (FLAIR, or the model's first modality).

Its score is the histogram-equalised image inside the brain, so one threshold
rule (a healthy false-positive rate, as for anodiff) applies to every scan.
"""

from __future__ import annotations

import numpy as np
from skimage import exposure


def baseline_modality(available: tuple[str, ...] | list[str], modalities: tuple[str, ...]) -> str:
    """The baseline's modality: FLAIR when the case has it, else the model's first."""
    return "flair" if "flair" in available else modalities[0]


def baseline_score(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The intensity baseline: histogram-equalised image inside the brain, in [0, 1]; 0 outside."""
    equalised = exposure.equalize_hist(image, nbins=1024, mask=brain)
    return np.where(brain, equalised, 0).astype(np.float32)
