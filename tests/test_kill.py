"""SIGKILL at any moment of training loses at most the steps since the last checkpoint.

Each case kills a real ``anodiff train`` process (tests/killed_train.py) at one
moment, then checks that the checkpoint on disk loads at the expected step, that
the half-made folder is not mistaken for a model, and that ``--resume`` ends in
the same weights and threshold as the uninterrupted run (every random draw of a
step is seeded by the step, so restoring the step restores the RNG).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.config import load_config
from anodiff.diffusion.sampler import build_scheduler
from anodiff.errors import CheckpointError
from anodiff.methods import load_model
from anodiff.models import build_network
from anodiff.training.checkpoints import CHECKPOINT, load_checkpoint
from anodiff.training.objectives import DenoisingObjective
from tests.conftest import TINY

KILLER = Path(__file__).with_name("killed_train.py")

# (moment, n, step of the checkpoint left on disk); configs/tiny.yaml checkpoints at 10 and 20 of 20 steps.
KILL_POINTS = [
    ("step", 3, None),
    ("step", 13, 10),
    ("checkpoint-write", 2, 10),
    ("checkpoint-rename", 2, 10),
    ("calibration", 1, 20),
    ("model-folder", 1, 20),
]


def checkpoint_step(path: Path) -> int:
    """Load a checkpoint into a fresh network, EMA and optimizer, as --resume does; its step."""
    config = load_config(TINY)
    objective = DenoisingObjective(build_network(config.model, in_channels=4),
                                   build_scheduler(config.scheduler, "ddpm"), config.scheduler)
    ema = torch.optim.swa_utils.AveragedModel(objective)
    optimizer = torch.optim.AdamW(objective.parameters())
    return load_checkpoint(path, objective, ema, optimizer)


@pytest.mark.parametrize(("point", "n", "saved_step"), KILL_POINTS, ids=[f"{p}-{n}" for p, n, _ in KILL_POINTS])
def test_killed_training_resumes_to_the_uninterrupted_model(point, n, saved_step, tiny_cohort, tiny_model, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_cohort), "--config", TINY, "--out", str(out), "--device", "cpu"]
    killed = subprocess.run([sys.executable, str(KILLER), point, str(n), *args], capture_output=True, text=True,
                            encoding="utf-8", errors="replace", timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    if saved_step is None:
        assert not (out / CHECKPOINT).exists()
    else:
        assert checkpoint_step(out / CHECKPOINT) == saved_step
    with pytest.raises(CheckpointError, match="did not finish"):
        load_model(out)

    resumed = CliRunner().invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    steps = [int(line.split(",")[0]) for line in (out / "log.csv").read_text(encoding="utf-8").splitlines()[1:]]
    assert steps == [5, 10, 15, 20]
    assert not list(out.glob(".*.tmp"))
    reference, weights = load_file(str(tiny_model / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for key in reference:
        np.testing.assert_allclose(weights[key].numpy(), reference[key].numpy(), atol=1e-6)
    thresholds = [json.loads((run / "meta.json").read_text(encoding="utf-8"))["threshold"] for run in (tiny_model, out)]
    assert thresholds[0] == pytest.approx(thresholds[1], rel=1e-5)
