"""Adding a method is one module and one table entry: a toy method, registered here, is trained, loaded and
run by the unchanged CLI, which learns what it writes from the table."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.data.cases import discover
from anodiff.inference.cases import preprocess
from anodiff.inference.masks import min_voxels, remove_small_components
from anodiff.inference.prediction import Prediction
from anodiff.methods import METHODS
from anodiff.methods.base import Method
from anodiff.modelfolder import TrainedModel, begin, save_model
from tests.conftest import TINY


class BrightestVoxels(Method):
    """Flags the brightest voxels of the first modality: a method with no network worth the name."""

    kind = "brightest"
    outputs = {"map": "intensity"}

    def train(self, data, config, out, *, device, resume=False, progress=None):
        begin(out)
        modalities = discover(data).cases[0].modalities
        save_model(out, config, torch.nn.Linear(1, 1), {"kind": self.kind, "modalities": list(modalities)})

    def load(self, folder, config, meta, device):
        return TrainedModel(config=config, network=torch.nn.Identity(), meta=meta, folder=folder)

    def threshold(self, model, given):
        return 0.9 if given is None else given

    def predict(self, model, case, *, threshold, generator=None, samples=None, detail=False, preprocessed=None,
                progress=None):
        preprocessed = preprocess(case, model.modalities, model.config.data)
        intensity = preprocessed.on_input_grid(preprocessed.image[:1] * preprocessed.brain_grid)[0]
        mask = remove_small_components(intensity > threshold, min_voxels(0, preprocessed.reference.spacing_mm))
        return Prediction(mask=mask, maps={"intensity": intensity}, reference=preprocessed.reference,
                          brain=preprocessed.brain, threshold=threshold)


def test_a_new_method_runs_through_the_cli(tiny_cohort, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "brightest", BrightestVoxels())
    runner = CliRunner()
    model = tmp_path / "model"
    result = runner.invoke(app, ["train", "--data", str(tiny_cohort), "--config", TINY, "--out", str(model),
                                 "model.kind=brightest"])
    assert result.exit_code == 0, result.output
    assert json.loads((model / "meta.json").read_text(encoding="utf-8"))["kind"] == "brightest"
    out = tmp_path / "masks"
    result = runner.invoke(app, ["detect", str(tiny_cohort), "--model", str(model), "--out", str(out)])
    assert result.exit_code == 0, result.output
    masks = sorted(out.glob("*_mask.nii.gz"))
    assert len(masks) == 6 and len(list(out.glob("*_map.nii.gz"))) == 6  # the maps the method declares
    assert any(np.asarray(nib.load(m).dataobj).any() for m in masks)
    refused = runner.invoke(app, ["detect", str(tiny_cohort / "synth_000_0000"), "--model", str(model), "--out",
                                  str(tmp_path / "m.nii.gz"), "--uncertainty", str(tmp_path / "u.nii.gz")])
    assert refused.exit_code != 0 and "--uncertainty is for segdiff models" in refused.output


def test_an_unknown_kind_is_refused_with_the_table():
    from anodiff.errors import ConfigError
    from anodiff.methods import load_recipe

    with pytest.raises(ConfigError, match="choose one of"):
        load_recipe(None, ["model.kind=brightest"])
