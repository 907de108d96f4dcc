"""The intensity-threshold baselines every anodiff figure is shown beside (FLAIR, and the model's first modality).

Its score is the histogram-equalised image inside the brain, so one threshold
rule (a healthy false-positive rate, as for anodiff) applies to every scan.
"""

from __future__ import annotations

import numpy as np
from skimage import exposure


def baseline_modalities(available: tuple[str, ...] | list[str], modalities: tuple[str, ...]) -> list[str]:
    """The baselines' modalities: FLAIR when the case has it, and the model's first modality when it is another
    (a T2 model stands beside the FLAIR and the T2 thresholds)."""
    names = ["flair"] if "flair" in available else []
    return names + [m for m in modalities[:1] if m not in names]


def baseline_score(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The intensity baseline: histogram-equalised image inside the brain, in [0, 1]; 0 outside."""
    equalised = exposure.equalize_hist(image, nbins=1024, mask=brain)
    return np.where(brain, equalised, 0).astype(np.float32)
