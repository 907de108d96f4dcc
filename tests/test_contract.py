"""The contract every entry of the method table keeps, through the CLI: its recipe validates and trains (the
session's tiny models) with a model card that `inspect` prints, the folder loads, `detect` writes a mask on the
input's grid, `evaluate` writes a report that names the method, and `report` re-renders that report from its
report.json alone."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.methods import METHODS, load_model, load_recipe
from tests.conftest import SEGDIFF_TINY, TINY, TINY_LDM

# Each method of the table: its tiny recipe (config, overrides) and the session fixture trained from it.
TINY_RECIPES = {"ddpm": (TINY, [], "tiny_model"), "ldm": (TINY, TINY_LDM, "ldm_model"),
                "segdiff": (SEGDIFF_TINY, [], "segdiff_model")}


def test_every_method_of_the_table_has_a_tiny_recipe():
    assert set(TINY_RECIPES) == set(METHODS)


@pytest.mark.parametrize("kind", sorted(METHODS))
def test_a_method_trains_detects_evaluates_and_reports_through_the_cli(kind, tiny_cohort, tmp_path, request):
    config, overrides, fixture = TINY_RECIPES[kind]
    assert load_recipe(config, overrides).model.kind == kind  # validated by its method
    folder = request.getfixturevalue(fixture)  # `anodiff train` of that recipe
    model = load_model(folder)
    assert model.method is METHODS[kind] and model.meta["kind"] == kind
    card = (folder / "README.md").read_text(encoding="utf-8")  # the model card, written at training
    assert card.startswith(f"# anodiff model: {METHODS[kind].title}")
    assert model.meta["training_data"]["train_cases"][0] in card and "MNI152" in card  # the cases, the licence
    assert card.count("## ") >= 5 and "## Limits" in card
    result = CliRunner().invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    assert [line.rstrip() for line in result.output.splitlines()] == card.rstrip().splitlines()

    case = tiny_cohort / "synth_000_0000"
    mask_path = tmp_path / "mask.nii.gz"
    result = CliRunner().invoke(app, ["detect", str(case), "--model", str(folder), "--out", str(mask_path)])
    assert result.exit_code == 0, result.output
    flair, mask = nib.load(case / "synth_000_0000_flair.nii.gz"), nib.load(mask_path)
    assert mask.shape == flair.shape and np.allclose(mask.affine, flair.affine, atol=1e-5)
    assert mask.get_data_dtype() == np.uint8

    data = tmp_path / "data"  # two cases keep the evaluation short
    data.mkdir()
    for name in ("synth_000_0000", "synth_000_0001"):
        (data / name).symlink_to(tiny_cohort / name)
    report = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(folder), "--data", str(data), "--out", str(report)])
    assert result.exit_code == 0, result.output
    assert json.loads((report / "report.json").read_text(encoding="utf-8"))["kind"] == kind
    summary = (report / "summary.md").read_text(encoding="utf-8")

    for name in ("summary.md", "report.html", "per_case.csv"):
        (report / name).unlink()
    result = CliRunner().invoke(app, ["report", str(report)])
    assert result.exit_code == 0, result.output
    assert (report / "summary.md").read_text(encoding="utf-8") == summary
    assert (report / "report.html").is_file() and (report / "per_case.csv").is_file()
