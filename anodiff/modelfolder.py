"""A trained model is a folder: ``config.yaml``, ``model.safetensors``, ``meta.json``.

A latent diffusion model adds ``autoencoder.safetensors`` (stage 1); ``meta.json``
then also holds the latent scale factor. A SegDiff model (``model.kind: segdiff``)
may add ``reference.safetensors``, the plain UNet trained beside it for comparison.

``meta.json`` records the anodiff/torch/MONAI versions, the modalities, the
preprocessing, the calibrated threshold(s) and a summary of the training data.
Loading parses YAML with ``safe_load``, JSON, and safetensors: it never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import monai
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from anodiff import __version__
from anodiff.autoencoder import LatentSpace
from anodiff.config import RunConfig, build, config_to_dict
from anodiff.diffusion import PixelSpace, Space
from anodiff.errors import CheckpointError, ConfigError
from anodiff.io import replaced_atomically
from anodiff.models import build_autoencoder, build_network, build_reference_unet

WEIGHTS, META, CONFIG, AUTOENCODER = "model.safetensors", "meta.json", "config.yaml", "autoencoder.safetensors"
REFERENCE = "reference.safetensors"


@dataclass(frozen=True)
class TrainedModel:
    config: RunConfig
    network: nn.Module  # the denoiser, in eval mode
    meta: dict[str, Any]
    folder: Path
    space: Space = field(default_factory=PixelSpace)  # where it diffuses: pixels, or an autoencoder's latents
    reference: nn.Module | None = None  # segdiff: the plain UNet trained beside it, when there is one

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.meta["modalities"])


def versions() -> dict[str, str]:
    return {"anodiff": __version__, "torch": torch.__version__, "monai": monai.__version__}


def write_text(path: Path, text: str) -> None:
    with replaced_atomically(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, content: dict) -> None:
    write_text(path, json.dumps(content, indent=2))


def save_model(folder: Path, config: RunConfig, network: nn.Module, meta: dict[str, Any]) -> None:
    """Write weights, config and, last, meta (each atomically); meta gains the library versions.

    meta.json is what makes the folder a model: a run killed before it leaves a
    folder that ``load_model`` refuses, never weights paired with a stale meta.
    """
    from anodiff.training import state_tensors, write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(state_tensors(network), folder / WEIGHTS)
    write_text(folder / CONFIG, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    write_json(folder / META, {**meta, "versions": versions()})


def discard_training_state(folder: Path) -> None:
    """Forget checkpoints and stage-1 weights, so training starts afresh (``anodiff train --overwrite``)."""
    for path in (folder / "checkpoint.safetensors", folder / AUTOENCODER,
                 folder / "autoencoder" / "checkpoint.safetensors", folder / REFERENCE,
                 folder / "reference" / "checkpoint.safetensors"):
        path.unlink(missing_ok=True)


def load_model(folder: str | Path, *, device: torch.device | str = "cpu") -> TrainedModel:
    """Load a model folder. Raises CheckpointError naming what is missing or wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a model folder (train one with `anodiff train`)")
    for name in (CONFIG, WEIGHTS, META):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name}; training did not finish (use `anodiff train --resume`)")
    try:
        raw = yaml.safe_load((folder / CONFIG).read_text())
        config = build(RunConfig, raw, source=str(folder / CONFIG), base_dir=folder)
        meta = json.loads((folder / META).read_text())
    except (yaml.YAMLError, UnicodeDecodeError, json.JSONDecodeError, ConfigError) as err:
        raise CheckpointError(f"{folder}: unreadable {CONFIG} or {META} ({' '.join(str(err).split())})") from err
    channels = len(meta["modalities"])
    space: Space = PixelSpace()
    if config.model.kind == "ldm":
        autoencoder = build_autoencoder(config.autoencoder, spatial_dims=config.model.spatial_dims,
                                        in_channels=channels)
        load_weights(autoencoder, folder / AUTOENCODER)
        space = LatentSpace(autoencoder.to(device), meta["latent_scale_factor"], config.autoencoder.kind)
        channels = config.autoencoder.latent_channels
    reference = None
    if config.model.kind == "segdiff":
        regions = len(config.segmentation.regions)
        network = build_network(config.model, in_channels=regions + channels, out_channels=regions)
        if (folder / REFERENCE).is_file():
            reference = build_reference_unet(config.model, config.segmentation.reference_channels,
                                             in_channels=channels, out_channels=regions)
            load_weights(reference, folder / REFERENCE)
            reference = reference.to(device).eval()
    else:
        network = build_network(config.model, in_channels=channels)
    load_weights(network, folder / WEIGHTS)
    return TrainedModel(config=config, network=network.to(device).eval(), meta=meta, folder=folder, space=space,
                        reference=reference)


def load_weights(network: nn.Module, path: Path) -> None:
    """Load a safetensors state dict into ``network``; CheckpointError naming the file when it does not fit."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; training did not finish (use `anodiff train --resume`)")
    try:
        network.load_state_dict(load_file(str(path)))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: weights do not load ({str(err).splitlines()[0]})") from err
