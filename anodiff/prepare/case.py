"""Prepare one raw case: bias correction, co-registration, template registration, brain extraction.

What a case becomes (``OUT/<id>/``, the BraTS 2021 layout, so every anodiff
command reads it as it reads BraTS)::

    <id>_<modality>.nii.gz      each modality on the prepared grid, bias-corrected, 0 outside the brain
    <id>_brain.nii.gz           the brain mask on the prepared grid (uint8)
    <id>_seg.nii.gz             the label, if the raw case had one, carried onto the prepared grid
    prepare/brain_on_raw_<ref>.nii.gz   the brain mask on the raw reference scan's own grid
    prepare/<mod>_to_<ref>.tfm          rigid, reference points -> that modality's raw points
    prepare/grid_to_<ref>.tfm           prepared-grid points -> raw reference points (affine)
    prepare/prepare.json        what was done, the raw files, seconds per stage
    prepare/qc.png              the brain's outline on the raw scan; the template's on the prepared one

A BIDS case becomes a case of a BIDS derivatives dataset instead
(``OUT/sub-X/[ses-Y/]anat/``, the scans' entities kept, :func:`output_names`):
``..._space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz`` (no ``space-`` on the
reference's own grid), ``..._desc-brain_mask.nii.gz`` and ``..._desc-lesion_mask.nii.gz``,
with the same ``prepare/`` folder beside them.

Transforms follow ITK's convention (output points -> input points), as text
files; the prepared grid's geometry is stored in ``prepare.json``, so a map
computed on it can be resampled back onto the raw scan (:func:`to_raw_grid`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from anodiff import figures, outputs
from anodiff.data import bids
from anodiff.data.cases import Case
from anodiff.errors import DataError
from anodiff.io import Volume, read_volume, write_volume
from anodiff.prepare import brain as brains
from anodiff.prepare import register
from anodiff.prepare.geometry import affine_of, read_transform, regrid, resample, to_array, to_sitk, write_transform
from anodiff.prepare.template import mni152

GRIDS = ("template", "reference")
TEMPLATE_SPACE = "MNI152NLin2009aSym"  # the template's BIDS name: ICBM 2009a, nonlinear, symmetric
REFERENCE_ORDER = ("t1", "t1ce", "t2", "flair", "pd")


@dataclass(frozen=True)
class Options:
    """How cases are prepared; a model trained on prepared data stores these and detects with them."""

    reference: str | None = None  # the modality the others and the template are aligned to (default: t1)
    grid: str = "template"  # "template": resampled onto the template's grid; "reference": the raw reference's
    spacing_mm: float = 1.0  # isotropic spacing of the prepared grid
    bias: bool = True  # N4 bias-field correction
    seed: int = 0  # the registrations' point samples

    def check(self) -> None:
        if self.grid not in GRIDS:
            raise DataError(f"grid must be one of {', '.join(GRIDS)}, got '{self.grid}'")
        if not 0.25 <= self.spacing_mm <= 8:
            raise DataError(f"spacing must be between 0.25 and 8 mm, got {self.spacing_mm}")


def reference_of(case: Case, options: Options) -> str:
    """The case's reference modality: the one asked for, else the first of ``REFERENCE_ORDER`` it has."""
    if options.reference:
        if options.reference not in case.images:
            raise DataError(f"case {case.id} has no '{options.reference}' (it has {', '.join(case.images)})")
        return options.reference
    return next((m for m in REFERENCE_ORDER if m in case.images), next(iter(case.images)))


def prepare_case(case: Case, out: Path, options: Options = Options()) -> Path:
    """Prepare ``case`` into ``out/<id>/`` (written whole, or not at all); returns that folder.

    Raises:
        DataError: a file that cannot be read, or a missing reference modality.
    """
    options.check()
    folder = case_folder(out, case)
    outputs.check_removable(folder, what="prepared case folder")
    staging, old = (folder.with_name(f".{folder.name}.{part}") for part in ("partial", "old"))
    for leftover in (staging, old):  # what a killed run left behind
        outputs.remove(leftover)
    outputs.mark(staging, "anodiff prepare")
    (staging / "prepare").mkdir()
    try:
        record = _prepare_into(case, staging, options)
        (staging / "prepare" / "prepare.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        # The old case is moved aside, not removed, until the new one is in place: a kill loses neither.
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
        outputs.remove(old)
    finally:
        outputs.remove(staging)
    return folder


def _prepare_into(case: Case, folder: Path, options: Options) -> dict:
    clock, seconds = time.perf_counter(), {}

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 2)
        clock = now

    ref = reference_of(case, options)
    raw = {m: read_volume(p) for m, p in case.images.items()}
    scans = {m: to_sitk(v) for m, v in raw.items()}
    stripped = brains.is_skull_stripped(scans[ref])
    heads = {m: brains.stripped_brain(s) if stripped else brains.head_mask(s) for m, s in scans.items()}
    if options.bias:
        scans = {m: brains.correct_bias(s, heads[m]) for m, s in scans.items()}
    lap("bias")
    with register.deterministic():
        to_ref = {m: register.coregister(scans[ref], s, seed=options.seed) for m, s in scans.items() if m != ref}
        lap("coregister")
        # The template places the brain mask even when the output keeps the reference's own grid.
        template = mni152() if options.grid == "template" or not stripped else None
        template_to_ref = None if template is None else register.to_template(
            scans[ref], heads[ref], template, seed=options.seed, stripped=stripped)
    grid_to_ref = template_to_ref if options.grid == "template" else sitk.AffineTransform(3)
    lap("template")

    brain_raw = heads[ref] if stripped else brains.refine_brain(
        scans[ref], resample(template.brain, scans[ref], template_to_ref.GetInverse()))
    lap("brain")
    checks = _brain_checks(case, brain_raw)
    grid = regrid(template.image if options.grid == "template" else scans[ref], options.spacing_mm)
    prepared, brain = _write_outputs(case, folder, output_names(case, options), ref, scans, to_ref, grid_to_ref,
                                     grid, brain_raw, raw)
    _qc(folder, case.id, ref, scans[ref], brain_raw, grid, prepared, brain,
        template if options.grid == "template" else None)
    lap("write")
    return {"case": case.id, "reference": ref, "skull_stripped": stripped, "options": asdict(options),
            "template": None if template is None else template.name,
            "raw": {m: str(p) for m, p in case.images.items()},
            "raw_shape": list(raw[ref].shape), "raw_affine": raw[ref].affine.tolist(),
            "grid": {"size": list(grid.GetSize()), "affine": affine_of(grid).tolist()},
            "brain": checks, "seconds": seconds}


def _write_outputs(case, folder, names, ref, scans, to_ref, grid_to_ref, grid, brain_raw,
                   raw) -> tuple[np.ndarray, np.ndarray]:
    """Write the prepared case into ``folder``; returns the reference scan (whole head) and the brain on the
    prepared grid, (X, Y, Z), for the QC figure. ``names``: :func:`output_names`."""
    brain = to_array(resample(sitk.Cast(brain_raw, sitk.sitkFloat32), grid, grid_to_ref)) > 0.5
    like = Volume(np.zeros(grid.GetSize(), np.uint8), affine_of(grid))
    for m, scan in scans.items():
        transform = grid_to_ref if m == ref else sitk.CompositeTransform([to_ref[m], grid_to_ref])
        on_grid = to_array(resample(scan, grid, transform))
        if m == ref:
            reference = on_grid
        image = np.where(brain, np.maximum(on_grid, 0), 0)
        write_volume(image.astype(np.float32), folder / names[m], like=like, dtype=np.float32)
    write_volume(brain.astype(np.uint8), folder / names["brain"], like=like, dtype=np.uint8)
    if case.label is not None:
        label = to_sitk(read_volume(case.label, allow_constant=True))
        carried = to_array(resample(label, grid, grid_to_ref, label=True)) * brain
        write_volume(np.rint(carried).astype(np.uint8), folder / names["seg"], like=like, dtype=np.uint8)
    write_volume(to_array(brain_raw, np.uint8), folder / "prepare" / f"brain_on_raw_{ref}.nii.gz",
                 like=raw[ref], dtype=np.uint8)
    write_transform(grid_to_ref, folder / "prepare" / f"grid_to_{ref}.tfm")
    for m, transform in to_ref.items():
        write_transform(transform, folder / "prepare" / f"{m}_to_{ref}.tfm")
    return reference, brain


def _qc(folder, case_id, ref, scan, brain_raw, grid, prepared, brain, template) -> None:
    """``qc.png``: the brain on the raw ``scan``; the brain (and the template's) on the ``prepared`` one."""
    rows = [(f"raw {ref}", to_array(scan), affine_of(scan), [("brain", to_array(brain_raw), (0.0, 1.0, 1.0))])]
    outlines = [("brain", brain, (0.0, 1.0, 1.0))]
    if template is not None:
        outlines.append(("template brain", to_array(resample(template.brain, grid)), (1.0, 0.85, 0.0)))
    rows.append((f"prepared {ref}", prepared, affine_of(grid), outlines))
    figures.save_outline_rows(folder / "prepare" / "qc.png", rows, f"{case_id}: anodiff prepare")


def _brain_checks(case: Case, brain: sitk.Image) -> dict:
    """The brain's volume, and its Dice against the brain mask the raw case came with (if any)."""
    found = to_array(brain) > 0.5
    checks = {"ml": round(float(found.sum() * np.prod(brain.GetSpacing())) / 1000, 1)}
    if case.brain is not None:
        given = resample(to_sitk(read_volume(case.brain, allow_constant=True)), brain, label=True)
        given = to_array(given) > 0.5
        checks["dice_vs_given"] = round(float(2 * (found & given).sum() / max(found.sum() + given.sum(), 1)), 4)
    return checks


def to_raw_grid(values: np.ndarray, prepared: Path, *, label: bool) -> Volume:
    """``values`` (X, Y, Z) on a prepared case's grid, resampled onto its raw reference scan's grid.

    ``prepared``: the case's folder written by :func:`prepare_case`. Linear
    interpolation for a map, nearest neighbour for a mask (``label``).
    """
    record = read_record(prepared)
    ref = record["reference"]
    grid_to_ref = read_transform(prepared / "prepare" / f"grid_to_{ref}.tfm")
    on_grid = to_sitk(np.asarray(values, np.float32), np.asarray(record["grid"]["affine"]))
    raw_affine = np.asarray(record["raw_affine"])
    raw_grid = to_sitk(np.zeros(record["raw_shape"], np.float32), raw_affine)
    back = to_array(resample(on_grid, raw_grid, grid_to_ref.GetInverse(), label=label))
    return Volume(back, raw_affine)


def read_record(prepared: Path) -> dict:
    """The ``prepare.json`` of a prepared case folder, or DataError."""
    path = Path(prepared) / "prepare" / "prepare.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable preparation record ({err})") from err


def case_folder(out: Path, case: Case) -> Path:
    """Where :func:`prepare_case` writes ``case`` under ``out``: ``out/<id>``, or a BIDS case's anat folder."""
    return bids.anat_folder(out, case.entities) if case.entities else out / case.id


def output_names(case: Case, options: Options) -> dict[str, str]:
    """The file names of a prepared case: each modality's, ``brain`` and ``seg`` (see the module doc)."""
    if not case.entities:
        return {**{m: f"{case.id}_{m}.nii.gz" for m in case.images}, "brain": f"{case.id}_brain.nii.gz",
                "seg": f"{case.id}_seg.nii.gz"}
    space = TEMPLATE_SPACE if options.grid == "template" else None
    scans = {m: bids.scan_derivative_name(path, "preproc", space=space) for m, path in case.images.items()}
    return {**scans, "brain": bids.derivative_name(case.entities, "brain", "mask", space=space),
            "seg": bids.derivative_name(case.entities, "lesion", "mask", space=space)}
