"""A synthetic cohort on disk: every case written in the BraTS 2021 layout, plus ``cohort.json``.

The subjects are rendered by :mod:`anodiff.data.synthetic` (or, for raw scans, by
:mod:`anodiff.data.raw`); this module stages them and moves the cohort into place whole.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from anodiff import outputs
from anodiff.data.raw import render_raw_subject, write_raw_case
from anodiff.data.synthetic import (
    LESION_KINDS,
    MODALITIES,
    CaseInfo,
    Subject,
    case_info,
    plan_kinds,
    render_subject,
    save_image,
    save_mask,
)
from anodiff.errors import DataError
from anodiff.progress import Progress

log = logging.getLogger(__name__)
# What model cards say of a synthetic cohort's terms: it is drawn from the template nilearn ships.
LICENCE = ("synthetic subjects drawn from the MNI152 ICBM 2009a template and tissue maps shipped with nilearn; "
           "the template's terms are the McConnell Brain Imaging Centre's (nilearn records its licence as unknown)")


def write_cohort(
    out: str | Path,
    num_cases: int,
    *,
    seed: int = 0,
    healthy_fraction: float = 1 / 3,
    healthy_only: bool = False,
    kinds: tuple[str, ...] = LESION_KINDS,
    spacing_mm: float = 1.0,
    raw: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> list[CaseInfo]:
    """Write a synthetic cohort in the BraTS 2021 layout, plus ``cohort.json``.

    ``raw``: scans as a scanner writes them (:mod:`anodiff.data.raw`: head, pose, own grid per
    modality, t1 / t2 / flair), with the true brain mask (``<id>_brainmask``) on the t1 grid.

    Raises:
        DataError: when ``out`` holds files and ``overwrite`` is False, or on bad arguments.
    """
    out = Path(out)
    if num_cases < 1:
        raise DataError(f"--cases must be at least 1, got {num_cases}")
    if not 0 <= healthy_fraction <= 1:
        raise DataError(f"healthy fraction must be in [0, 1], got {healthy_fraction}")
    if unknown := set(kinds) - set(LESION_KINDS):
        raise DataError(f"unknown lesion kind(s) {sorted(unknown)}; choose from {', '.join(LESION_KINDS)}")
    if not outputs.is_empty(out):
        if not overwrite:
            raise DataError(f"{out}: folder exists and is not empty (pass --overwrite to replace it)")
        outputs.check_removable(out, what="cohort folder")
    plan = plan_kinds(num_cases, seed, healthy_fraction=healthy_fraction, kinds=() if healthy_only else kinds)

    staging = out.with_name(f".{out.name}.partial")
    outputs.remove(staging)  # what a killed run left behind
    outputs.mark(staging, "anodiff synth")
    infos = []
    for index, kind in enumerate(plan):
        case_id = f"synth_{seed:03d}_{index:04d}"
        if raw:
            infos.append(write_raw_case(staging / case_id, case_id, render_raw_subject(
                seed, index, kind, spacing_mm=spacing_mm), kind))
        else:
            subject = render_subject(seed, index, kind, spacing_mm=spacing_mm)
            infos.append(write_case(staging / case_id, case_id, subject, kind))
        log.debug("wrote %s (%s)", case_id, kind or "healthy")
        if progress is not None:
            progress(index + 1, num_cases)
    modalities = ("t1", "t2", "flair") if raw else MODALITIES
    meta = {"seed": seed, "spacing_mm": spacing_mm, "raw": raw, "modalities": list(modalities),
            "label_scheme": "brats2021", "licence": LICENCE, "cases": [asdict(i) for i in infos]}
    (staging / "cohort.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    outputs.remove(out, what="cohort folder")
    staging.rename(out)  # the cohort appears whole or not at all
    return infos


def write_case(folder: Path, case_id: str, subject: Subject, kind: str | None) -> CaseInfo:
    folder.mkdir()
    for modality, image in subject.images.items():
        save_image(image, subject.affine, folder / f"{case_id}_{modality}.nii.gz")
    save_mask(subject.label, subject.affine, folder / f"{case_id}_seg.nii.gz")
    return case_info(case_id, kind, subject.num_lesions, subject.label, subject.affine)


def read_cohort_info(root: str | Path) -> dict[str, CaseInfo]:
    """Case id -> CaseInfo from a cohort's ``cohort.json`` (empty if there is none)."""
    path = Path(root) / "cohort.json"
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        return {c["id"]: CaseInfo(**{**c, "shape": tuple(c["shape"]), "spacing_mm": tuple(c["spacing_mm"])})
                for c in content.get("cases", [])}
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a readable cohort description ({' '.join(str(err).split())})") from err
