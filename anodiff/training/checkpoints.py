"""Training checkpoints: network, EMA and optimizer in one safetensors file, replaced atomically.

The step, the optimizer's hyper-parameters and the config travel as JSON
metadata, so a checkpoint made with another config is refused on resume.
Nothing here unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from anodiff.errors import CheckpointError
from anodiff.weights import read_safetensors, read_safetensors_metadata, state_tensors, write_safetensors

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(path: Path, network: nn.Module, ema, optimizer, *, step: int, config_text: str) -> None:
    """Network, EMA and optimizer in one safetensors file, replaced atomically."""
    tensors = state_tensors(network, "network.") | state_tensors(ema, "ema.")
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    metadata = {"step": str(step), "param_groups": json.dumps(state["param_groups"]), "config": config_text}
    write_safetensors(tensors, path, metadata)


def load_checkpoint(path: Path, network: nn.Module, ema, optimizer, *, config_text: str = "") -> int:
    """Restore a checkpoint into the given objects; returns the step it was taken at."""
    metadata = read_safetensors_metadata(path, what="checkpoint")
    tensors = read_safetensors(path, what="checkpoint")
    if config_text and metadata.get("config") and metadata["config"] != config_text:
        raise CheckpointError(f"{path}: checkpoint was made with another config; use a new --out or drop --resume")

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        network.load_state_dict(part("network."))
        ema.load_state_dict(part("ema."))
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the network ({str(err).splitlines()[0]})") from err
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in part("optimizer.").items():
        index, name = key.split(".", 1)
        optim_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": optim_state, "param_groups": json.loads(metadata["param_groups"])})
    return int(metadata["step"])
