"""One training loop for every method, with EMA, mixed precision, checkpoints and resume.

A method contributes its objective: an ``nn.Module`` holding the networks it
trains, whose ``forward(batch, generator=..., step=...)`` returns the loss (the
step lets a loss change with training, e.g. an adversary that joins after a
warm-up). Being a module, it can be wrapped in DistributedDataParallel under torchrun.
Every random draw of step ``s`` (batch indices, noise, timesteps) comes from a
generator seeded with ``(seed, s)``, so a resumed run continues exactly where
the interrupted one would have gone, with no RNG state to restore.

Rank 0 logs each window's mean loss to ``log.csv``, redraws ``loss.png`` at every
sample interval and, when the ``tensorboard`` package is installed (the optional
extra), writes the same scalars and the sample grids to ``tensorboard/``.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from anodiff import distributed
from anodiff.config import TrainConfig
from anodiff.errors import TrainingError
from anodiff.figures import save_loss_curve
from anodiff.progress import Progress
from anodiff.training.checkpoints import CHECKPOINT, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

BatchFn = Callable[[torch.Generator], dict]
HookFn = Callable[[int, nn.Module], None]


@dataclass(frozen=True)
class FitResult:
    steps_done: int
    final_loss: float
    seconds: float
    samples_per_s: float = 0.0  # over all ranks
    data_fraction: float = 0.0  # share of the time spent drawing batches and moving them to the device

    def summary(self, steps: int, device: torch.device) -> dict:
        """What meta.json records of a training stage."""
        return {"steps": steps, "seconds_this_run": round(self.seconds, 1),
                "samples_per_s": round(self.samples_per_s, 2), "data_wait_fraction": round(self.data_fraction, 4),
                "final_loss": self.final_loss, "device": str(device), "processes": distributed.world_size()}


@dataclass
class _Meter:
    """Running figures of a fit: losses since the last log row, time spent on data, samples seen."""

    began: float = field(default_factory=time.perf_counter)
    window_start: float = field(default_factory=time.perf_counter)
    losses: list[float] = field(default_factory=list)
    data_seconds: float = 0.0
    samples: int = 0


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator for all random draws of one training step (of one rank, under torchrun)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + rank * 7_919_000_003)


def fit(
    objective: nn.Module,
    sample_batch: BatchFn,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    device: torch.device,
    resume: bool = False,
    config_text: str = "",
    progress: Progress | None = None,
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
    ema = torch.optim.swa_utils.AveragedModel(objective,
                                              multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay))
    optimizer = torch.optim.AdamW(objective.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    checkpoint = out_dir / CHECKPOINT
    start = _resume(checkpoint, objective, ema, optimizer, resume=resume, config_text=config_text)
    trained = _parallel(objective, device)
    use_amp = cfg.mixed_precision and device.type == "cuda"
    log_path = out_dir / "log.csv"
    if main:
        start_log(log_path, start)
    meter, loss = _Meter(), math.nan
    board = _board(out_dir) if main and cfg.sample_every else None  # closed after the last sample interval
    objective.train()
    for step in range(start, cfg.num_steps):
        set_learning_rate(optimizer, cfg, step)
        loss = _train_step(trained, objective, optimizer, sample_batch, cfg, step, device, use_amp, meter)
        ema.update_parameters(objective)
        done = step + 1
        if not main:
            continue
        _log_row(log_path, meter, done, cfg, board)
        if progress is not None:
            rate = (done - start) / max(time.perf_counter() - meter.began, 1e-9)
            progress(done, cfg.num_steps, f"loss {loss:.4f}  {rate:.2f} steps/s")
        if done % cfg.checkpoint_every == 0 or done == cfg.num_steps:
            save_checkpoint(checkpoint, objective, ema, optimizer, step=done, config_text=config_text)
        if cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.num_steps):
            if on_sample is not None:
                on_sample(done, ema.module)
                objective.train()
            _draw_progress(out_dir, board, done, last=done == cfg.num_steps)
    seconds = time.perf_counter() - meter.began
    result = FitResult(steps_done=cfg.num_steps - start, final_loss=loss, seconds=seconds,
                       samples_per_s=meter.samples * distributed.world_size() / max(seconds, 1e-9),
                       data_fraction=meter.data_seconds / max(seconds, 1e-9))
    distributed.barrier()  # the last checkpoint is on disk before any rank goes on
    return ema.module.eval(), result


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The rate of ``step`` (0-based): ``cfg.lr``, or with ``lr_schedule: cosine`` decayed from it to 0
    along half a cosine over ``num_steps``. A function of the step alone, so a resumed run continues it."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.num_steps))


def set_learning_rate(optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(cfg, step)


def _resume(checkpoint: Path, objective: nn.Module, ema, optimizer, *, resume: bool, config_text: str) -> int:
    """The step to start from: the checkpoint's with ``resume`` (state restored into the objects), else 0."""
    if resume and checkpoint.exists():
        start = load_checkpoint(checkpoint, objective, ema, optimizer, config_text=config_text)
        log.info("resumed from %s at step %d", checkpoint, start)
        return start
    if resume:
        log.warning("--resume: no checkpoint in %s, starting from step 0", checkpoint.parent)
    return 0


def _parallel(objective: nn.Module, device: torch.device) -> nn.Module:
    """The objective, wrapped in DistributedDataParallel under torchrun."""
    if distributed.world_size() == 1:
        return objective
    return nn.parallel.DistributedDataParallel(
        objective, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=getattr(objective, "find_unused_parameters", False))


def _train_step(trained: nn.Module, objective: nn.Module, optimizer, sample_batch: BatchFn, cfg: TrainConfig,
                step: int, device: torch.device, use_amp: bool, meter: _Meter) -> float:
    """One optimisation step; returns the loss, averaged over ranks."""
    generator = step_generator(cfg.seed, step, distributed.rank())
    clock = time.perf_counter()
    batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
             for k, v in sample_batch(generator).items()}
    meter.data_seconds += time.perf_counter() - clock
    meter.samples += next(len(v) for v in batch.values() if torch.is_tensor(v))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        loss_tensor = trained(batch, generator=generator, step=step)
    # The mean over ranks: every rank then agrees on divergence and logs the same value.
    mean_loss = float(distributed.all_reduce_sum(loss_tensor.float()[None])[0]) / distributed.world_size()
    if not math.isfinite(mean_loss):
        raise TrainingError(f"training diverged at step {step} (loss {mean_loss}); lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss_tensor.backward()
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
    optimizer.step()
    meter.losses.append(mean_loss)
    return mean_loss


def _log_row(path: Path, meter: _Meter, done: int, cfg: TrainConfig, board=None) -> None:
    """Append the mean loss since the last row to log.csv (and TensorBoard), every ``log_every`` steps and
    at the end."""
    if not (done % cfg.log_every == 0 or done == cfg.num_steps):
        return
    rate = len(meter.losses) / max(time.perf_counter() - meter.window_start, 1e-9)
    mean = sum(meter.losses) / len(meter.losses)
    with path.open("a", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerow([done, f"{mean:.6f}", f"{learning_rate(cfg, done - 1):.4g}", f"{rate:.3f}"])
    if board is not None:
        board.add_scalar("train/loss", mean, done)
        board.add_scalar("train/steps_per_s", rate, done)
    meter.losses, meter.window_start = [], time.perf_counter()


def _board(out_dir: Path):
    """A TensorBoard writer on ``out_dir/tensorboard`` when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _draw_progress(out_dir: Path, board, step: int, *, last: bool) -> None:
    """At a sample interval: redraw ``loss.png``; add the sample grids the method drew at ``step``
    (``samples/{step:07d}*.png``) to TensorBoard, closing it after the ``last`` step."""
    save_loss_curve(out_dir / "log.csv", out_dir / "loss.png")
    if board is None:
        return
    for png in sorted((out_dir / "samples").glob(f"{step:07d}*.png")):
        board.add_image(f"samples/{png.stem[8:] or 'reconstruction'}", np.asarray(Image.open(png).convert("RGB")),
                        step, dataformats="HWC")
    board.flush()
    if last:
        board.close()


def start_log(path: Path, start: int) -> None:
    """A fresh log.csv, or on resume the rows up to the checkpoint (later ones belong to steps redone)."""
    if start == 0 or not path.exists():
        path.write_text("step,loss,lr,steps_per_s\n", encoding="utf-8")
        return
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    kept = [r for r in rows if r.split(",")[0].isdigit() and int(r.split(",")[0]) <= start]
    path.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
