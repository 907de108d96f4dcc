"""What older anodiff wrote, read in today's terms: the one place that knows old keys.

A model folder's ``meta.json`` records ``format_version``; a folder without one
is format 1 (before the version was recorded). Loading hands an older folder's
config and meta to :func:`upgrade_model`, so everything past loading sees only
today's keys. A report's ``report.json`` is read through :func:`report_kind` and
:func:`has_curves`.

Format 2 (this one): ``format_version`` recorded; the calibrated thresholds of
the intensity baselines by name (``baseline_thresholds``); report.json names the
model kind that drew it.
"""

from __future__ import annotations

from typing import Any

from anodiff.errors import CheckpointError

FORMAT_VERSION = 2

# Keys that moved or went: a recipe naming one fails with a line saying where it went (the config loader), and
# model folders written before the move still load.
MOVED_KEYS = {
    "anomaly.sampler": "sampler.kind",
    "anomaly.num_inference_steps": "sampler.num_inference_steps",
    "anomaly.eta": "sampler.eta",
    "segmentation.num_inference_steps": "sampler.num_inference_steps",
    "segmentation.eta": "sampler.eta",
}
# Keys added since: a model folder saved without one keeps the behaviour it was calibrated with.
ADDED_KEYS = {
    "data.normalisation": "percentiles",
    "anomaly.score": "residual",
    "anomaly.combine": "mean",
    "anomaly.centre": False,
    "anomaly.scale": False,
}
REMOVED_KEYS = {
    "data.healthy_only": "each method chooses its slices (healthy ones, or all for segdiff)",
    "train.num_workers": "training slices are held in memory, no loader workers",
}


def format_of(meta: dict[str, Any]) -> int:
    """The format version of a model folder's meta.json (1: written before versions were recorded)."""
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"meta.json: format_version {version!r} is not a version")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"meta.json: format {version} was written by a newer anodiff than this one (reads up "
                              f"to {FORMAT_VERSION}); upgrade anodiff")
    return version


def upgrade_model(raw: dict[str, Any], meta: dict[str, Any], *, sampler_from: str
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model folder's config mapping and meta in today's format.

    Format 1: the sampler settings of section ``sampler_from`` (where the model's
    method kept them) move to ``sampler``; removed keys are dropped; keys added since
    take the value that reproduces the old behaviour; the one, unnamed baseline
    threshold is kept for :func:`baseline_thresholds`.
    """
    if format_of(meta) == FORMAT_VERSION:
        return raw, meta
    raw = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    moved: dict[str, Any] = {}
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            value = raw[section].pop(key)
            if section == sampler_from:
                moved[new.split(".")[1]] = value
    if moved and "sampler" not in raw:
        raw["sampler"] = moved
    for old in REMOVED_KEYS:
        section, key = old.split(".")
        if isinstance(raw.get(section), dict):
            raw[section].pop(key, None)
    for added, old_value in ADDED_KEYS.items():
        section, key = added.split(".")
        if isinstance(raw.get(section), dict):
            raw[section].setdefault(key, old_value)
    return raw, {**meta, "format_version": FORMAT_VERSION}


def baseline_thresholds(meta: dict[str, Any], names: list[str]) -> dict[str, float]:
    """The calibrated thresholds of the baselines ``names`` that the model calibrated, in that order. A folder of
    format 1 may hold one, unnamed (``baseline_threshold``): the first baseline's."""
    if "baseline_thresholds" not in meta:
        return {names[0]: meta["baseline_threshold"]}
    return {name: meta["baseline_thresholds"][name] for name in names if name in meta["baseline_thresholds"]}


def report_kind(figures: dict[str, Any]) -> str | None:
    """The model kind whose evaluation wrote a report.json; None for a report of format 1 that does not say (a
    detection report: the only kind rendered then)."""
    return figures.get("kind")


def has_curves(figures: dict[str, Any]) -> bool:
    """Whether a detection report.json holds its curves' points (reports before they were stored do not)."""
    return all("curves" in m for m in figures["methods"].values())
