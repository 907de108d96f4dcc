"""A trained model is a folder: ``config.yaml``, ``model.safetensors``, ``meta.json``, and its card ``README.md``.

A latent diffusion model adds ``autoencoder.safetensors`` (stage 1); ``meta.json``
then also holds the latent scale factor. A SegDiff model may add
``reference.safetensors``, the plain UNet trained beside it for comparison.

``meta.json`` records the anodiff/torch/MONAI versions, the modalities, the
preprocessing, the calibrated threshold(s) and a summary of the training data.
It is written last: a folder without it is not a model. Reading parses YAML with
``safe_load``, JSON, and safetensors: it never unpickles. Which networks a folder
holds is its method's business (``load`` in :mod:`anodiff.methods`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import monai
import torch
import yaml
from torch import nn

from anodiff import __version__, distributed, outputs
from anodiff.config import config_to_yaml
from anodiff.config.sections import RunConfig
from anodiff.diffusion.spaces import PixelSpace, Space
from anodiff.errors import CheckpointError, DataError
from anodiff.formats import FORMAT_VERSION
from anodiff.outputs import write_json, write_text
from anodiff.weights import remove_stale_temporaries, state_tensors, write_safetensors

WEIGHTS, META, CONFIG, AUTOENCODER = "model.safetensors", "meta.json", "config.yaml", "autoencoder.safetensors"
REFERENCE, CHECKPOINT = "reference.safetensors", "checkpoint.safetensors"
CARD = "README.md"  # the model card (anodiff.methods.card)


@dataclass(frozen=True)
class TrainedModel:
    config: RunConfig
    network: nn.Module  # the denoiser, in eval mode
    meta: dict[str, Any]
    folder: Path
    space: Space = field(default_factory=PixelSpace)  # where it diffuses: pixels, or an autoencoder's latents
    reference: nn.Module | None = None  # segdiff: the plain UNet trained beside it, when there is one
    method: Any = None  # its entry of the method table (anodiff.methods), set by anodiff.methods.load_model

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.meta["modalities"])


def versions() -> dict[str, str]:
    return {"anodiff": __version__, "torch": torch.__version__, "monai": monai.__version__}


def is_model_folder(folder: Path) -> bool:
    """Whether anodiff made ``folder`` for a model: its marker, or (before markers) config.yaml beside meta.json
    or a checkpoint."""
    return outputs.is_marked(folder) or holds_model(folder)


def holds_model(folder: Path) -> bool:
    """Whether ``folder`` holds a model, trained or in training: config.yaml beside meta.json or a checkpoint."""
    return (folder / CONFIG).is_file() and any((folder / name).is_file() for name in (META, CHECKPOINT))


def check_trainable(folder: Path) -> None:
    """Raise DataError for a non-empty ``folder`` that is not a model folder: training would write into it."""
    if not outputs.is_empty(folder) and not is_model_folder(folder):
        raise DataError(f"{folder}: not empty and not a model folder anodiff made; train into a new or empty "
                        "folder")


def begin(folder: Path) -> None:
    """Open ``folder`` for training: until meta.json is written again, last, it is not a model."""
    if distributed.is_main():
        check_trainable(folder)
        outputs.mark(folder, "anodiff train")
        (folder / META).unlink(missing_ok=True)
        remove_stale_temporaries(folder)
    distributed.barrier()


def save_model(folder: Path, config: RunConfig, network: nn.Module, meta: dict[str, Any],
               card: Callable[[dict[str, Any]], str] | None = None) -> None:
    """Write weights, config, the model card (``card(meta)``, README.md) and, last, meta (each atomically); meta
    gains the format and library versions.

    meta.json is what makes the folder a model: a run killed before it leaves a
    folder that loading refuses, never weights paired with a stale meta.
    """
    folder.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "format_version": FORMAT_VERSION, "versions": versions()}
    write_safetensors(state_tensors(network), folder / WEIGHTS)
    write_text(folder / CONFIG, config_to_yaml(config))
    if card is not None:
        write_text(folder / CARD, card(meta))
    write_json(folder / META, meta)


def discard_training_state(folder: Path) -> None:
    """Forget checkpoints and stage-1 weights, so training starts afresh (``anodiff train --overwrite``)."""
    check_trainable(folder)
    for path in (folder / CHECKPOINT, folder / AUTOENCODER,
                 folder / "autoencoder" / "checkpoint.safetensors", folder / REFERENCE,
                 folder / "reference" / "checkpoint.safetensors"):
        path.unlink(missing_ok=True)


def read_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw config mapping and meta of a model folder. Raises CheckpointError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a model folder (train one with `anodiff train`)")
    for name in (CONFIG, WEIGHTS, META):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}; training did not finish (use `anodiff train --resume`)")
    try:
        raw = yaml.safe_load((folder / CONFIG).read_text(encoding="utf-8"))
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder}: unreadable {CONFIG} or {META} ({' '.join(str(err).split())})") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder}: unreadable {META} (not a mapping)")
    return raw, meta
