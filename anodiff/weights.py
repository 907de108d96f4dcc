"""Network weights on disk: safetensors files, written atomically, read without unpickling.

Checkpoints (:mod:`anodiff.training.checkpoints`) and model folders
(:mod:`anodiff.modelfolder`) both store their tensors through these helpers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from anodiff.errors import CheckpointError
from anodiff.outputs import normal_file_mode, replaced_atomically


def state_tensors(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A module's state as contiguous CPU tensors, keys optionally prefixed: what safetensors stores."""
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """save_file to a temporary name in the same folder, then rename into place."""
    with replaced_atomically(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, normal_file_mode())  # safetensors creates 0600 files


def read_safetensors(path: Path, *, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; CheckpointError naming the file when it is damaged."""
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: unreadable {what} ({err})") from err


def read_safetensors_metadata(path: Path, *, what: str = "weights file") -> dict[str, str]:
    """The JSON-string metadata of a safetensors file (no tensors read)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as err:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: unreadable {what} ({err})") from err


def load_weights(network: nn.Module, path: Path) -> None:
    """Load a safetensors state dict into ``network``; CheckpointError naming the file when it does not fit."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; training did not finish (use `anodiff train --resume`)")
    try:
        network.load_state_dict(load_file(str(path)))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: weights do not load ({str(err).splitlines()[0]})") from err


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files a killed write left behind (``.<name>.<8 hex>.tmp``)."""
    for path in folder.glob(".*.tmp"):
        if re.fullmatch(r"\..+\.[0-9a-f]{8}\.tmp", path.name):
            path.unlink(missing_ok=True)
