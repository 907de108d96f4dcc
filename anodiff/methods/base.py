"""What a method is: the interface every entry of the method table implements, and the pieces they share.

A method builds its networks, trains them into a model folder, loads that folder,
predicts one case (a :class:`~anodiff.inference.prediction.Prediction` with named
maps), checks the config settings that only it reads, and evaluates itself. The
jobs and the CLI call these and nothing else, so they never ask which method
a model is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import yaml

from anodiff import distributed
from anodiff.config import RunConfig, config_to_dict
from anodiff.data.cases import Case
from anodiff.errors import ConfigError
from anodiff.evaluation.report import Report
from anodiff.inference.cases import PreprocessedCase
from anodiff.inference.prediction import Prediction
from anodiff.methods import card
from anodiff.modelfolder import TrainedModel
from anodiff.prepare import preparation_record
from anodiff.progress import Progress

T = TypeVar("T")


class Method:
    """One method (ddpm, ldm, segdiff, ...). Subclasses set the attributes and implement the methods."""

    kind: str = ""
    outputs: dict[str, str] = {}  # what `anodiff detect` can write: output name -> Prediction map name
    draws_samples: bool = False  # takes `--samples`
    activity: str = "detecting"  # what `anodiff detect`'s progress bar says it does
    sampler_section: str = ""  # where configs before the `sampler` section kept its settings
    evaluate_settings: tuple[str, ...] = ("sampler.",)  # the config sections `evaluate` may change after training
    title: str = ""  # what the model card's heading calls the method
    output_desc: str = "anomaly"  # the BIDS desc- entity of its outputs (sub-01_desc-anomaly_mask.nii.gz)
    purpose: str = ""  # the model card's intended use

    def card(self, config: RunConfig, meta: dict[str, Any]) -> str:
        """The model card (README.md of the model folder) of a folder's config and meta."""
        return card.render(title=self.title, purpose=self.purpose, config=config, meta=meta,
                           sections=self.card_sections(config, meta), limits=self.card_limits(config, meta))

    def card_sections(self, config: RunConfig, meta: dict[str, Any]) -> list[str]:
        """The card's sections on what only this method does (markdown blocks)."""
        return []

    def card_limits(self, config: RunConfig, meta: dict[str, Any]) -> list[str]:
        """What this model cannot do, as its settings and checks show."""
        return []

    def validate(self, config: RunConfig) -> None:
        """Raise ConfigError for settings this method cannot run with."""
        check_image_size(config, 2 ** (len(config.model.channels) - 1))

    def train(self, data: Path, config: RunConfig, out: Path, *, device: torch.device, resume: bool = False,
              progress: Progress | None = None) -> None:
        """Train on ``data`` into the model folder ``out`` (rank 0 writes it; meta.json last)."""
        raise NotImplementedError

    def load(self, folder: Path, config: RunConfig, meta: dict[str, Any], device: torch.device) -> TrainedModel:
        """The model of a folder whose config and meta are read (weights loaded, networks in eval mode)."""
        raise NotImplementedError

    def threshold(self, model: TrainedModel, given: float | None) -> float:
        """The threshold ``predict`` uses: ``given``, else the model's own."""
        raise NotImplementedError

    def predict(self, model: TrainedModel, case: Case, *, threshold: float, generator: torch.Generator | None = None,
                samples: int | None = None, detail: bool = False, preprocessed: PreprocessedCase | None = None,
                progress: Progress | None = None) -> Prediction:
        """One case on its own grid; ``detail`` adds the maps only an evaluation needs."""
        raise NotImplementedError

    def describe(self, model: TrainedModel) -> str:
        """One line on what the trained model holds, for the end of `anodiff train`."""
        return ""

    def output_channels(self, model: TrainedModel) -> tuple[str, ...]:
        """Names of the channels of (K, X, Y, Z) output maps, each written to its own file; () for one."""
        return ()

    def evaluate(self, model: TrainedModel, data: Path, *, seed: int = 0, samples: int | None = None,
                 overrides: list[str] | None = None, overlays: Path | None = None,
                 progress: Progress | None = None) -> Report:
        """The labelled cases of ``data`` scored beside this method's reference; per-case PNGs to ``overlays``."""
        raise NotImplementedError

    def check_evaluate_overrides(self, overrides: list[str]) -> None:
        """Raise ConfigError for an override of a setting that cannot change after training."""
        bad = [o for o in overrides if not o.strip().startswith(self.evaluate_settings)]
        if bad:
            wanted = " and ".join(f"{section}*" for section in self.evaluate_settings)
            raise ConfigError(f"a {self.kind} model takes only {wanted} settings after training, not {bad[0]!r}")

    def check_samples(self, model: TrainedModel, samples: int | None, kinds_that_draw: list[str]) -> None:
        """Raise ConfigError for ``--samples`` / ``--uncertainty`` given to a method that draws no samples."""
        if samples is not None and not self.draws_samples:
            raise ConfigError(f"{model.folder}: a {self.kind} model draws no samples; --samples and --uncertainty "
                              f"are for {' and '.join(kinds_that_draw)} models")

    def report_of(self, figures: dict) -> Report:
        """The report of one of this method's evaluations from its ``report.json`` content alone."""
        raise NotImplementedError


def check_image_size(config: RunConfig, factor: int) -> None:
    if config.data.image_size % factor:
        raise ConfigError(f"data.image_size ({config.data.image_size}) must be a multiple of {factor} "
                          f"for these {config.model.kind} channels (each level halves the grid)")


def checkpoint_identity(config: RunConfig) -> str:
    """What a checkpoint must agree with to be resumed: the config, less the step counts."""
    identity = config_to_dict(config)
    identity["train"].pop("num_steps")
    identity["autoencoder"].pop("num_steps")
    return yaml.safe_dump(identity)


def seeded(build: Callable[[], T], seed: int) -> T:
    """``build()`` (networks) with the global RNG seeded (MONAI initialises from it), left as it was afterwards."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def preview_inputs(dataset, count: int = 4) -> torch.Tensor:
    """A few evenly spaced training inputs (B, C, *S) for the PNG grids."""
    return torch.stack([dataset[int(i)]["image"] for i in np.linspace(0, len(dataset) - 1, count).astype(int)])


def peak_gpu_memory_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def training_meta(kind: str, data: Path, layouts, modalities: tuple[str, ...], config: RunConfig,
                  train_cases: list[Case], rank_cases: list[Case], **counts) -> dict:
    """What meta.json records of the data a model was trained on: ``counts`` (cases held out, inputs) join the
    ``training_data`` section."""
    return {
        "kind": kind,
        "modalities": list(modalities),
        "preprocessing": config_to_dict(config.data),
        "preparation": preparation_record(data),
        "training_data": {
            "root": str(data.resolve()),
            "train_cases": [c.id for c in train_cases],
            **counts,
            "cases_per_process": distributed.gather([c.id for c in rank_cases]),
            "layouts": list(layouts),
        },
    }
