"""Devices, and multi-process training on torch.distributed, as ``torchrun`` starts it.

``torchrun --nproc-per-node N -m anodiff.cli train ...`` sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; :func:`init_from_env` then joins the process group
(NCCL on GPUs, gloo on the CPU). Each rank trains on its own cases
(:func:`partition`), DistributedDataParallel averages the gradients, and only
rank 0 logs, writes checkpoints and the model folder. ``detect`` under torchrun
takes every N-th case per rank (:func:`shard`); each rank writes its cases' files,
and rank 0 the summary. Without ``torchrun`` every
function here is a no-op for a single process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from monai.data import partition_dataset

from anodiff.errors import ConfigError, DataError

log = logging.getLogger(__name__)

T = TypeVar("T")


def pick_device(name: str) -> torch.device:
    """The device ``--device`` names: ``auto`` (CUDA when torch sees it), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name!r}: not a device torch knows (auto, cpu, cuda or cuda:N)") from err


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes; returns this rank's device.

    ``device`` is the one asked for; on CUDA each rank takes the GPU of its ``LOCAL_RANK``.
    """
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        log.info("rank %d of %d on %s", rank(), world_size(), device)
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum of ``values`` over ranks (a copy; ``values`` itself is untouched)."""
    total = values.detach().clone()
    if dist.is_initialized():
        if dist.get_backend() == "nccl":
            total = total.cuda()
        dist.all_reduce(total)
    return total.cpu()


def partition(items: Sequence[T], seed: int) -> list[T]:
    """This rank's share of ``items`` (disjoint across ranks, seeded; everything when single)."""
    if world_size() == 1:
        return list(items)
    if len(items) < world_size():
        raise DataError(f"{len(items)} training case(s) for {world_size()} processes; each needs at least one")
    return list(partition_dataset(list(items), num_partitions=world_size(), shuffle=True, seed=seed,
                                  even_divisible=False)[rank()])


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items`` for inference: every ``world_size``-th one from its rank on.

    Unlike :func:`partition` nothing is shuffled and a rank may get none: a case is
    detected the same way whichever rank takes it.
    """
    return list(items[rank()::world_size()])


def gather(value: T) -> list[T]:
    """``value`` from every rank, in rank order (``[value]`` when single)."""
    if not dist.is_initialized():
        return [value]
    values: list = [None] * world_size()
    dist.all_gather_object(values, value)
    return values
