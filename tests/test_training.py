"""The one training loop: its learning-rate schedule, continued exactly by a resumed run."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch
from torch import nn

from anodiff.config import TrainConfig
from anodiff.errors import TrainingError
from anodiff.training.loop import fit


class Line(nn.Module):
    """A one-parameter objective: the squared distance of ``w`` to the batch's target."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, batch: dict, *, generator=None, step: int = 0) -> torch.Tensor:
        return ((self.w - batch["x0"]) ** 2).mean()


def target(generator: torch.Generator) -> dict:
    return {"x0": 1 + 0.1 * torch.randn(1, generator=generator)}


CONFIG = TrainConfig(num_steps=10, batch_size=1, lr=0.1, lr_schedule="cosine", ema_decay=0.0, log_every=1,
                     checkpoint_every=5, sample_every=0)


def test_cosine_schedule_decays_the_rate_to_zero_and_resumes_where_it_stopped(tmp_path):
    uninterrupted, _ = fit(Line(), target, CONFIG, tmp_path / "whole", device=torch.device("cpu"))
    with (tmp_path / "whole" / "log.csv").open(encoding="utf-8") as handle:
        rates = [float(row["lr"]) for row in csv.DictReader(handle)]
    assert rates[0] == pytest.approx(0.1) and rates[-1] < 0.01
    assert all(later < earlier for earlier, later in zip(rates, rates[1:]))

    def dies_after_the_checkpoint(generator: torch.Generator) -> dict:
        if dies_after_the_checkpoint.calls == 7:
            raise KeyboardInterrupt
        dies_after_the_checkpoint.calls += 1
        return target(generator)

    dies_after_the_checkpoint.calls = 0
    with pytest.raises(KeyboardInterrupt):
        fit(Line(), dies_after_the_checkpoint, CONFIG, tmp_path / "resumed", device=torch.device("cpu"))
    resumed, _ = fit(Line(), target, CONFIG, tmp_path / "resumed", device=torch.device("cpu"), resume=True)
    assert torch.equal(resumed.w, uninterrupted.w)
    constant, _ = fit(Line(), target, replace(CONFIG, lr_schedule="constant"),
                      tmp_path / "constant", device=torch.device("cpu"))
    assert not torch.equal(constant.w, uninterrupted.w)  # the schedule changed the steps taken


def test_a_diverging_loss_stops_training_with_a_training_error(tmp_path):
    def blows_up(generator: torch.Generator) -> dict:
        return {"x0": torch.tensor([float("inf")])}

    with pytest.raises(TrainingError, match="diverged at step 0"):
        fit(Line(), blows_up, CONFIG, tmp_path / "diverged", device=torch.device("cpu"))
