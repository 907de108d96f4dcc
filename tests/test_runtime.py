"""ONNX export and detection through ONNX Runtime: the same masks and maps as the torch path, for every method,
and a stale export refused."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.weights import read_safetensors, write_safetensors

pytest.importorskip("onnxruntime")

FIXTURES = ("tiny_model", "ldm_model", "segdiff_model")
# The largest map difference allowed: an anomaly map is one partial reverse pass from the scan, continuous in the
# network's output; a segdiff map ends a reverse chain from pure noise, which carries each step's ~1e-6 on.
MAP_TOLERANCE = {"tiny_model": 1e-5, "ldm_model": 1e-5, "segdiff_model": 5e-4}


def copied(model, folder):
    """A model folder's files copied, so an export can sit beside them."""
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns("*.onnx", "checkpoint*", "samples", "tensorboard"))
    return folder


def detected(case, model, out, *extra):
    result = CliRunner().invoke(app, ["detect", str(case), "--model", str(model), "--out", str(out / "mask.nii.gz"),
                                      "--map", str(out / "map.nii.gz"), *extra])
    assert result.exit_code == 0, result.output
    return (np.asarray(nib.load(out / name).dataobj) for name in ("mask.nii.gz", "map.nii.gz"))


@pytest.mark.parametrize("fixture", FIXTURES)
def test_the_onnx_runtime_gives_the_masks_and_maps_of_torch(fixture, tiny_cohort, tmp_path, request):
    model = copied(request.getfixturevalue(fixture), tmp_path / "model")
    result = CliRunner().invoke(app, ["export", "--model", str(model)])
    assert result.exit_code == 0, result.output
    assert (model / "model.onnx").is_file() and "of the torch network" in result.output

    case = tiny_cohort / "synth_000_0000"
    torch_mask, torch_map = detected(case, model, tmp_path / "torch")
    onnx_mask, onnx_map = detected(case, model, tmp_path / "onnx", "--runtime", "onnx")
    assert np.array_equal(torch_mask, onnx_mask)
    # The network agrees to ~1e-6, and the map is continuous in the network's output (its healthy statistics
    # are interpolated between bands, not looked up in one).
    difference = np.abs(torch_map - onnx_map).max()
    assert difference <= MAP_TOLERANCE[fixture], f"map voxels differ by up to {difference:.2e}"


def test_an_export_of_other_weights_is_refused_and_an_existing_one_kept(tiny_model, tiny_cohort, tmp_path):
    model = copied(tiny_model, tmp_path / "model")
    case, out = tiny_cohort / "synth_000_0000", str(tmp_path / "mask.nii.gz")
    result = CliRunner().invoke(app, ["detect", str(case), "--model", str(model), "--out", out, "--runtime", "onnx"])
    assert result.exit_code != 0 and "anodiff export" in result.output  # none yet: says how to make one

    assert CliRunner().invoke(app, ["export", "--model", str(model)]).exit_code == 0
    again = CliRunner().invoke(app, ["export", "--model", str(model)])
    assert again.exit_code != 0 and "--overwrite" in again.output

    tensors = read_safetensors(model / "model.safetensors")  # retrained, as it were, after the export
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    write_safetensors(tensors, model / "model.safetensors")
    result = CliRunner().invoke(app, ["detect", str(case), "--model", str(model), "--out", out, "--runtime", "onnx"])
    assert result.exit_code != 0 and "other weights" in result.output
