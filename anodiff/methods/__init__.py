"""The method table: ``model.kind`` -> the one object that builds, trains, loads, predicts with, validates
and evaluates that method (:class:`~anodiff.methods.base.Method`).

A loaded model carries its method (``model.method``, set by :func:`load_model`)
and a report.json names the kind that wrote it (:func:`method_of_report`), so the
jobs and the CLI never compare ``model.kind`` or name a method. Adding a method =
one folder here (a :class:`~anodiff.methods.base.Method` subclass and its
instance, with whatever modules it needs) and one entry in :data:`METHODS`; a
method with settings of its own adds its section to :mod:`anodiff.config.sections`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from anodiff.config import RunConfig, build, load_config
from anodiff.errors import CheckpointError, ConfigError
from anodiff.formats import report_kind, upgrade_model
from anodiff.methods.anomaly.ddpm import DDPM
from anodiff.methods.anomaly.ldm import LDM
from anodiff.methods.base import Method
from anodiff.methods.segdiff.method import SEGDIFF
from anodiff.modelfolder import CARD, TrainedModel, read_folder

METHODS: dict[str, Method] = {method.kind: method for method in (DDPM, LDM, SEGDIFF)}


def method_for(kind: str) -> Method:
    """The method of ``model.kind``; ConfigError listing the known kinds otherwise."""
    try:
        return METHODS[kind]
    except KeyError:
        raise ConfigError(f"model.kind {kind!r} is not a method; choose one of {sorted(METHODS)}") from None


def validate(config: RunConfig) -> RunConfig:
    """``config``, checked by its method (settings that only one method reads)."""
    method_for(config.model.kind).validate(config)
    return config


def load_recipe(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A YAML recipe with overrides (:func:`anodiff.config.load_config`), checked by its method."""
    return validate(load_config(path, overrides))


def method_of_report(figures: dict) -> Method:
    """The method whose evaluation wrote a report.json (one that does not say is a pixel-space detector's)."""
    return method_for(report_kind(figures) or DDPM.kind)


def kinds_where(wanted) -> list[str]:
    """The kinds whose method satisfies ``wanted(method)``, for messages that say which kinds offer an option."""
    return [kind for kind, method in METHODS.items() if wanted(method)]


def load_model(folder: str | Path, *, device: torch.device | str = "cpu") -> TrainedModel:
    """Load a model folder through its method. Raises CheckpointError naming what is missing or wrong."""
    folder = Path(folder)
    method, config, meta = read_model(folder)
    return replace(method.load(folder, config, meta, torch.device(device)), method=method)


def read_model(folder: Path) -> tuple[Method, RunConfig, dict]:
    """A model folder's method, config and meta (upgraded from older formats), without its weights."""
    raw, meta = read_folder(folder)
    try:
        if not isinstance(raw, dict):
            raise ConfigError("a config must be a mapping of sections")
        method = method_for((raw.get("model") or {}).get("kind", "ddpm"))
        raw, meta = upgrade_model(raw, meta, sampler_from=method.sampler_section)
        config = validate(build(RunConfig, raw, source=str(folder / "config.yaml"), base_dir=folder))
    except (ConfigError, CheckpointError) as err:
        raise CheckpointError(f"{folder}: unreadable config.yaml or meta.json ({' '.join(str(err).split())})") from err
    return method, config, meta


def model_card(folder: str | Path) -> str:
    """A model folder's card: its README.md, or (a folder trained before cards) the card its config and meta
    give."""
    folder = Path(folder)
    if (folder / CARD).is_file():
        return (folder / CARD).read_text(encoding="utf-8")
    method, config, meta = read_model(folder)
    return method.card(config, meta)
