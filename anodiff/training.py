"""One training loop for every mode, with EMA, mixed precision, checkpoints and resume.

A method contributes its objective: an ``nn.Module`` holding the networks it
trains, whose ``forward(batch, generator=..., step=...)`` returns the loss (the
step lets a loss change with training, e.g. an adversary that joins after a
warm-up). Being a module, it can be wrapped in DistributedDataParallel under torchrun.
Every random draw of step ``s`` (batch indices, noise, timesteps) comes from a
generator seeded with ``(seed, s)``, so a resumed run continues exactly where
the interrupted one would have gone, with no RNG state to restore.

Checkpoints are one safetensors file (network, EMA and optimizer tensors; step,
optimizer hyper-parameters and the config as JSON metadata), written to a
temporary name and renamed into place, so a kill mid-save leaves the last good one.
Nothing here unpickles.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from anodiff import distributed
from anodiff.config import TrainConfig
from anodiff.errors import CheckpointError
from anodiff.io import normal_file_mode, replaced_atomically

log = logging.getLogger(__name__)

BatchFn = Callable[[torch.Generator], dict]
# progress(step, total, info): the CLI draws a bar from it.
ProgressFn = Callable[[int, int, str], None]
HookFn = Callable[[int, nn.Module], None]

CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class FitResult:
    steps_done: int
    final_loss: float
    seconds: float
    samples_per_s: float = 0.0  # over all ranks
    data_fraction: float = 0.0  # share of the time spent drawing batches and moving them to the device


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator for all random draws of one training step (of one rank, under torchrun)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + rank * 7_919_000_003)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def fit(
    objective: nn.Module,
    sample_batch: BatchFn,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    device: torch.device,
    resume: bool = False,
    config_text: str = "",
    progress: ProgressFn | None = None,
    on_sample: HookFn | None = None,
) -> tuple[nn.Module, FitResult]:
    """Optimise ``objective``'s parameters for ``cfg.num_steps`` steps; returns its EMA copy.

    ``objective(batch, generator=, step=)`` returns the loss and holds the networks
    it trains; ``sample_batch(generator)`` returns a batch dict on the CPU. Under
    torchrun the objective is wrapped in DistributedDataParallel and only rank 0
    logs and writes. With ``resume``, training continues from ``out_dir/checkpoint.safetensors``.
    """
    main = distributed.is_main()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    objective.to(device)
    ema = torch.optim.swa_utils.AveragedModel(
        objective, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay)
    )
    optimizer = torch.optim.AdamW(objective.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    checkpoint = out_dir / CHECKPOINT
    if resume and checkpoint.exists():
        start = load_checkpoint(checkpoint, objective, ema, optimizer, config_text=config_text)
        log.info("resumed from %s at step %d", checkpoint, start)
    elif resume:
        log.warning("--resume: no checkpoint in %s, starting from step 0", out_dir)
    trained = objective
    if distributed.world_size() > 1:
        trained = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=getattr(objective, "find_unused_parameters", False))
    use_amp = cfg.mixed_precision and device.type == "cuda"
    log_path = out_dir / "log.csv"
    if main:
        start_log(log_path, start)
    began, window_start, losses, loss = time.perf_counter(), time.perf_counter(), [], math.nan
    data_seconds, samples = 0.0, 0
    objective.train()
    for step in range(start, cfg.num_steps):
        generator = step_generator(cfg.seed, step, distributed.rank())
        clock = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                 for k, v in sample_batch(generator).items()}
        data_seconds += time.perf_counter() - clock
        samples += next(len(v) for v in batch.values() if torch.is_tensor(v))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss_tensor = trained(batch, generator=generator, step=step)
        # The mean over ranks: every rank then agrees on divergence and logs the same value.
        mean_loss = float(distributed.all_reduce_sum(loss_tensor.float()[None])[0]) / distributed.world_size()
        if not math.isfinite(mean_loss):
            raise CheckpointError(f"training diverged at step {step} (loss {mean_loss}); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss_tensor.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
        optimizer.step()
        ema.update_parameters(objective)
        loss = mean_loss
        losses.append(loss)
        done = step + 1
        if main and (done % cfg.log_every == 0 or done == cfg.num_steps):
            rate = len(losses) / max(time.perf_counter() - window_start, 1e-9)
            with log_path.open("a", newline="") as handle:
                csv.writer(handle).writerow([done, f"{sum(losses) / len(losses):.6f}", cfg.lr, f"{rate:.3f}"])
            losses, window_start = [], time.perf_counter()
        if main and progress is not None:
            rate = (done - start) / max(time.perf_counter() - began, 1e-9)
            progress(done, cfg.num_steps, f"loss {loss:.4f}  {rate:.2f} steps/s")
        if main and (done % cfg.checkpoint_every == 0 or done == cfg.num_steps):
            save_checkpoint(checkpoint, objective, ema, optimizer, step=done, config_text=config_text)
        if main and on_sample is not None and cfg.sample_every and (
                done % cfg.sample_every == 0 or done == cfg.num_steps):
            on_sample(done, ema.module)
            objective.train()
    seconds = time.perf_counter() - began
    result = FitResult(steps_done=cfg.num_steps - start, final_loss=loss, seconds=seconds,
                       samples_per_s=samples * distributed.world_size() / max(seconds, 1e-9),
                       data_fraction=data_seconds / max(seconds, 1e-9))
    distributed.barrier()  # the last checkpoint is on disk before any rank goes on
    return ema.module.eval(), result


def start_log(path: Path, start: int) -> None:
    """A fresh log.csv, or on resume the rows up to the checkpoint (later ones belong to steps redone)."""
    if start == 0 or not path.exists():
        path.write_text("step,loss,lr,steps_per_s\n")
        return
    header, *rows = path.read_text().splitlines()
    kept = [r for r in rows if r.split(",")[0].isdigit() and int(r.split(",")[0]) <= start]
    path.write_text("\n".join([header, *kept]) + "\n")


def save_checkpoint(path: Path, network: nn.Module, ema, optimizer, *, step: int, config_text: str) -> None:
    """Network, EMA and optimizer in one safetensors file, replaced atomically."""
    tensors = state_tensors(network, "network.") | state_tensors(ema, "ema.")
    state = optimizer.state_dict()
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    metadata = {"step": str(step), "param_groups": json.dumps(state["param_groups"]), "config": config_text}
    write_safetensors(tensors, path, metadata)


def state_tensors(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A module's state as contiguous CPU tensors, keys optionally prefixed: what safetensors stores."""
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """save_file to a temporary name in the same folder, then rename into place."""
    with replaced_atomically(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, normal_file_mode())  # safetensors creates 0600 files


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files a killed write left behind (``.<name>.<8 hex>.tmp``)."""
    for path in folder.glob(".*.tmp"):
        if re.fullmatch(r"\..+\.[0-9a-f]{8}\.tmp", path.name):
            path.unlink(missing_ok=True)


def read_safetensors_metadata(path: Path, *, what: str = "weights file") -> dict[str, str]:
    """The JSON-string metadata of a safetensors file (no tensors read)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as err:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: unreadable {what} ({err})") from err


def load_checkpoint(path: Path, network: nn.Module, ema, optimizer, *, config_text: str = "") -> int:
    """Restore a checkpoint into the given objects; returns the step it was taken at."""
    metadata = read_safetensors_metadata(path, what="checkpoint")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from err
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
