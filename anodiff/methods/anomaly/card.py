"""What a detection model's card (:mod:`anodiff.methods.card`) says of its scoring, calibration and checks."""

from __future__ import annotations

from typing import Any

from anodiff.config import RunConfig
from anodiff.evaluation.anomaly import floor_table, sensitivity_table
from anodiff.methods.anomaly.scoring import passes_per_input

PURPOSE = ("Unsupervised anomaly detection in brain MRI. The network learned healthy tissue only; `anodiff detect` "
           "noises a scan part of the way, denoises it back, and scores how far the scan departs from that healthy "
           "reconstruction. The map (`_map.nii.gz`) ranks voxels by how abnormal they look; the mask (`_mask.nii.gz`) "
           "is the map above a threshold set at a known false-positive rate on held-out healthy tissue. It outlines "
           "what differs from the training data, of any kind: tumours, lesions, cavities, and also artefacts.")
BRAIN_MM = 170  # about how wide the cropped brain is, for the pixel size a grid implies


def sections(config: RunConfig, meta: dict[str, Any]) -> list[str]:
    """The detection, calibration, healthy-floor and sensitivity-check sections."""
    return [detection(config), calibration(config, meta), floor(meta), sensitivity(meta)]


def detection(config: RunConfig) -> str:
    a = config.anomaly
    levels = ", ".join(map(str, a.levels))
    how = ("each scored apart, then their " + a.combine_levels) if a.levels_apart else "reconstructions averaged"
    return "\n".join([
        "## Detection", "",
        f"- Noise levels t0: {levels} ({how}); sampler {config.sampler.kind}, "
        f"{passes_per_input(config)} network passes per slice",
        f"- Map: {a.score} residual, modalities combined by their {a.combine}"
        + (", centred per scan" if a.centre else "") + (", scaled per scan" if a.scale else "")
        + f"; median filter {a.median_size}; components under {a.min_component_mm3:g} mm3 dropped"])


def calibration(config: RunConfig, meta: dict[str, Any]) -> str:
    found = meta.get("calibration") or {}
    if "threshold" not in meta:
        return "## Calibration\n\nNot calibrated: give `--threshold` to `anodiff detect`."
    lines = ["## Calibration", "",
             f"- Threshold {meta['threshold']:.4g}: a healthy false-positive rate of {found.get('fpr', 0):.2%} over "
             f"{found.get('voxels', 0):,} held-out healthy brain voxels of {len(found.get('cases', []))} case(s)"]
    for name, value in (meta.get("baseline_thresholds") or {}).items():
        lines.append(f"- The {name.upper()} intensity baseline's threshold at the same rate: {value:.4g}")
    return "\n".join(lines)


def floor(meta: dict[str, Any]) -> str:
    found = meta.get("healthy_floor")
    return floor_table(found).to_markdown() if found and found.get("zones") else ""


def sensitivity(meta: dict[str, Any]) -> str:
    found = meta.get("sensitivity")
    return sensitivity_table(found).to_markdown() if found and found.get("kinds") else ""


def limits(config: RunConfig, meta: dict[str, Any]) -> list[str]:
    """The limits this model's own settings and checks imply."""
    found = [f"Lesions under about two pixels of the network grid are missed: a brain about {BRAIN_MM} mm across "
             f"becomes {config.data.image_size} px, {BRAIN_MM / config.data.image_size:.1f} mm pixels."]
    kinds = ((meta.get("sensitivity") or {}).get("kinds")) or {}
    weak = sorted((g["auroc"], name) for name, g in kinds.items()
                  if isinstance(g.get("auroc"), float) and g["auroc"] < 0.9)  # None: too few to measure
    if weak:
        found.append("The sensitivity check found these inserted kinds hardest: "
                     + ", ".join(f"{name} (AUROC {auroc:.2f})" for auroc, name in weak) + ".")
    if config.scheduler.noise == "gaussian" and max(config.anomaly.levels) <= 150:
        found.append(f"At t0 {max(config.anomaly.levels)} with Gaussian noise the reconstruction can copy a large "
                     "lesion (a cavity, a nearly iso-intense mass), and the map then outlines only its rim.")
    found.append("The threshold keeps its false-positive rate only on scans like the calibration cases.")
    return found
