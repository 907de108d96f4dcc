"""Calibration slabs (``train.holdout: slabs``): every case trains and lends an axial slab to calibration,
and no calibration slice has a training neighbour."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.config import DataConfig
from anodiff.data.cases import discover
from anodiff.data.datasets import select_slices
from anodiff.data.slabs import GUARD, axial_positions, guarded, held_out_slabs, in_slab, slab_region
from anodiff.data.transforms import BRAIN
from anodiff.errors import ConfigError
from anodiff.methods import load_model, load_recipe
from anodiff.methods.anomaly.calibration import calibrate
from anodiff.methods.anomaly.method import with_anomaly_settings
from tests.conftest import TINY, brain_phantom


def test_the_slabs_of_successive_cases_spread_from_the_bottom_of_the_brain_to_its_top():
    slabs = held_out_slabs(["a", "b", "c", "d"], 1 / 3)
    assert slabs["a"] == pytest.approx((0, 1 / 3)) and slabs["c"] == pytest.approx((2 / 3, 1))
    assert slabs["d"] == slabs["a"]  # a fourth case starts the round again
    positions = np.linspace(0.001, 0.999, 500)
    assert (sum(in_slab(positions, slabs[c]).astype(int) for c in "abc") == 1).all()  # the brain, once
    few = held_out_slabs(["a", "b", "c"], 0.2)  # three narrow slabs: the bottom, the middle and the top
    assert [v for c in "abc" for v in few[c]] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert held_out_slabs(["a"], 0.2)["a"] == pytest.approx((0.4, 0.6))
    assert guarded(few["b"]) == pytest.approx((0.4 - GUARD, 0.6 + GUARD))


def test_a_slab_is_the_same_anatomy_on_a_grid_stored_top_first_or_axial_first():
    image, _ = brain_phantom((20, 24, 16))
    brain = image > 0
    ras = np.diag([2.0, 2.0, 3.0, 1.0])
    slab = (0.25, 0.5)
    region = np.broadcast_to(slab_region(brain, ras, slab), brain.shape)
    assert 0 < region[..., :].any(axis=(0, 1)).sum() < brain.shape[2]

    top_first = ras.copy()
    top_first[2, 2] = -3.0  # index grows downwards
    flipped = np.broadcast_to(slab_region(brain[..., ::-1], top_first, slab), brain.shape)
    assert np.array_equal(flipped[..., ::-1], region)

    axial_first = np.array([[0, 2.0, 0, 0], [0, 0, 2.0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])  # voxel axis 0 is z
    moved = np.moveaxis(brain, 2, 0)
    assert np.array_equal(np.broadcast_to(slab_region(moved, axial_first, slab), moved.shape),
                          np.moveaxis(region, 2, 0))


def test_training_slices_keep_clear_of_the_dropped_slab():
    image, _ = brain_phantom((20, 24, 30))
    volume = {BRAIN: torch.from_numpy(image > 0)[None].float()}
    cfg = DataConfig(min_brain_fraction=0.0)
    every = select_slices(volume, cfg, healthy_only=True)
    drop = guarded((0.5, 1.0))
    kept = select_slices(volume, cfg, healthy_only=True, drop=drop)
    positions = axial_positions(image > 0, 2)
    assert kept and set(kept) < set(every)
    assert positions[kept].max() < drop[0] and positions[every].max() > 0.9


def test_training_with_slabs_trains_on_every_case_and_calibrates_on_their_slabs(tiny_cohort, tmp_path):
    out = tmp_path / "slabs"
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_cohort), "--config", TINY, "--out", str(out),
                                      "--device", "cpu", "train.holdout=slabs"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    cases = [c.id for c in discover(tiny_cohort).cases]
    used = meta["training_data"]
    assert used["train_cases"] == cases and used["calibration_cases"] == cases
    assert sorted(used["calibration_slabs"]) == sorted(cases)
    assert used["calibration_slabs"] == {c: list(s) for c, s in held_out_slabs(cases, 0.34).items()}

    # The calibration voxels are the slabs' share of what the same cases give whole, and recalibrating for
    # new settings keeps to the slabs.
    model = load_model(out)
    whole = calibrate(model, discover(tiny_cohort).cases)["calibration"]["voxels"]
    assert 0.15 * whole < meta["calibration"]["voxels"] < 0.55 * whole
    recalibrated = with_anomaly_settings(model, ["anomaly.t0=60"]).meta
    assert recalibrated["calibration"]["voxels"] == meta["calibration"]["voxels"]
    assert recalibrated["threshold"] != pytest.approx(meta["threshold"])


@pytest.mark.parametrize("setting", ["model.kind=ldm", "model.spatial_dims=3"])
def test_slabs_are_refused_where_a_slice_is_not_the_diffused_sample(setting):
    with pytest.raises(ConfigError, match="train.holdout: slabs"):
        load_recipe(TINY, [setting, "train.holdout=slabs"])
