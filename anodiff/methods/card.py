"""The model card: ``README.md`` in every model folder, what a person reads before using the model.

Written at training from the folder's config and meta.json alone (so ``anodiff inspect
MODEL`` renders the same card for a folder trained before cards existed): what the model
is for, what it was trained on (cases, modalities, grid, preparation, the data's licence
where the data folder says it), the recipe, the calibration and the healthy floor and
sensitivity check measured on held-out healthy data, and its limits. A method adds its
purpose, its limits and its own sections (:meth:`~anodiff.methods.base.Method.card`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from anodiff.config import RunConfig

GENERAL_LIMITS = (
    "A research tool, not a medical device: no output is a diagnosis.",
    "Scans unlike the training data (another scanner, field strength, contrast, resolution, age group or "
    "preparation) raise the healthy floor; check it with `anodiff evaluate` on labelled or healthy scans of the "
    "new site before trusting the masks there.",
)
LICENCE_FILES = ("LICENSE", "LICENCE", "LICENSE.txt", "LICENCE.txt", "LICENSE.md")


def render(*, title: str, purpose: str, config: RunConfig, meta: dict[str, Any], sections: Sequence[str],
           limits: Iterable[str]) -> str:
    """The card's markdown: the method's ``title`` and ``purpose``, the shared sections, the method's own
    ``sections`` (each a markdown block), then its ``limits`` and the general ones."""
    parts = [f"# anodiff model: {title}", "", provenance(config, meta), "", "## Intended use", "", purpose, "",
             "## Training data", "", *training_data(config, meta), "", "## Recipe", "", *recipe(config), ""]
    for section in sections:
        parts += [section.rstrip(), ""]
    parts += ["## Limits", "", *(f"- {limit}" for limit in (*limits, *GENERAL_LIMITS)), ""]
    return "\n".join(parts)


def provenance(config: RunConfig, meta: dict[str, Any]) -> str:
    versions = meta.get("versions", {})
    training = meta.get("training", {})
    where = f" on {training['device']}" if "device" in training else ""
    took = f" in {training['seconds_this_run'] / 60:.0f} min" if "seconds_this_run" in training else ""
    return (f"Trained by anodiff {versions.get('anodiff', '?')} (torch {versions.get('torch', '?')}, MONAI "
            f"{versions.get('monai', '?')}): {config.train.num_steps} steps{where}{took}; model folder format "
            f"{meta.get('format_version', 1)}. The full recipe is `config.yaml`, every figure below is in "
            "`meta.json`.")


def training_data(config: RunConfig, meta: dict[str, Any]) -> list[str]:
    """Bullets: the folder, licence, modalities, cases, healthy tissue, preparation and grid."""
    data = meta.get("training_data", {})
    root = data.get("root")
    lines = [f"- Folder: `{root}` (layout: {', '.join(data.get('layouts', [])) or 'unknown'})",
             f"- Licence of the data: {data_licence(Path(root)) if root else 'unknown'}",
             f"- Modalities, in channel order: {', '.join(meta.get('modalities', []))}"]
    cases = data.get("train_cases", [])
    inputs = data.get("num_healthy_inputs", data.get("num_slices"))
    unit = "slices" if config.model.spatial_dims == 2 else "volumes"
    lines.append(f"- Cases: {len(cases)} trained on" + (f" ({inputs} {unit})" if inputs is not None else "")
                 + f": {listed(cases)}")
    held = data.get("calibration_cases")
    if held:
        slabs = data.get("calibration_slabs") or {}
        how = "lent an axial slab each to" if slabs else "held out for"
        lines.append(f"- {len(held)} case(s) {how} calibration: {listed(held)}")
    lines.append(f"- Grid: {grid(config)}")
    lines.append(f"- Preparation: {preparation(meta.get('preparation'))}")
    return lines


def grid(config: RunConfig) -> str:
    d = config.data
    spacing = "the scans' own spacing" if d.spacing_mm is None else "x".join(f"{s:g}" for s in d.spacing_mm) + " mm"
    shape = (f"axial slices resized to {d.image_size}x{d.image_size}" if config.model.spatial_dims == 2
             else f"volumes resized to {d.image_size}^3")
    norm = (f"percentiles {d.percentiles[0]:g}-{d.percentiles[1]:g} to [0, 1]" if d.normalisation == "percentiles"
            else "low percentile to 0, brain median to 0.4")
    return f"{spacing}, cropped to the brain, {shape}; intensities per scan: {norm}"


def preparation(record: dict[str, Any] | None) -> str:
    if not record:
        return "none by anodiff (the inputs were used as given: skull-stripped and co-registered)"
    settings = ", ".join(f"{k} {v}" for k, v in record.items() if not isinstance(v, (dict, list)))
    return f"`anodiff prepare` (bias correction, co-registration, template alignment, skull stripping): {settings}"


def recipe(config: RunConfig) -> list[str]:
    m, s, t = config.model, config.scheduler, config.train
    return [f"- Network: MONAI DiffusionModelUNet, {m.spatial_dims}D, channels {list(m.channels)}, "
            f"{m.num_res_blocks} residual block(s) per level",
            f"- Diffusion: {s.num_train_timesteps} steps ({s.schedule}), {s.noise} noise, predicts {s.prediction_type}",
            f"- Training: {t.num_steps} steps of {t.batch_size}, learning rate {t.lr:g} ({t.lr_schedule}), "
            f"EMA {t.ema_decay:g}, seed {t.seed}"]


def listed(ids: Sequence[str], most: int = 12) -> str:
    shown = ", ".join(ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "") if ids else "none"


def data_licence(root: Path) -> str:
    """What the data folder says of its licence: a BIDS ``dataset_description.json``'s ``License``, anodiff's
    synthetic ``cohort.json``, or a licence file; else that it is unknown."""
    for name, key in (("dataset_description.json", "License"), ("cohort.json", "licence")):
        found = read_json(root / name).get(key)
        if found:
            return f"{found} (from `{name}`)"
    for name in LICENCE_FILES:
        if (root / name).is_file():
            first = next((line.strip() for line in (root / name).read_text("utf-8", "replace").splitlines()
                          if line.strip()), "")
            return f"{first} (from `{name}`)"
    return "not stated in the data folder; check the data's own terms before sharing this model"


def read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
