"""Tiny end-to-end runs through the CLI: train -> detect -> evaluate, resume, geometry, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.formats import FORMAT_VERSION
from tests.conftest import OBLIQUE_AFFINE, TINY

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_model_folder_contract(tiny_model):
    assert {"config.yaml", "model.safetensors", "meta.json", "checkpoint.safetensors", "log.csv"} <= {
        p.name for p in tiny_model.iterdir()}
    meta = json.loads((tiny_model / "meta.json").read_text(encoding="utf-8"))
    assert meta["modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert meta["threshold"] > 0 and meta["format_version"] == FORMAT_VERSION
    assert list(meta["baseline_thresholds"]) == ["flair"] and meta["baseline_thresholds"]["flair"] > 0
    assert set(meta["sensitivity"]) == {"kinds", "sizes", "all", "healthy_voxels"}
    assert set(meta["versions"]) == {"anodiff", "torch", "monai"}
    assert meta["training_data"]["calibration_cases"]
    assert meta["training"]["samples_per_s"] > 0 and 0 <= meta["training"]["data_wait_fraction"] < 1
    assert list((tiny_model / "samples").glob("*.png"))
    assert (tiny_model / "loss.png").is_file()  # the loss curve, redrawn at each sample interval


def test_training_writes_tensorboard_scalars_and_images(tiny_model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_model / "tensorboard"))
    events.Reload()
    logged = [float(row.split(",")[1]) for row in (tiny_model / "log.csv").read_text(encoding="utf-8").splitlines()[1:]]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(logged, rel=1e-5)
    assert "samples/reconstruction" in events.Tags()["images"]


def test_train_refuses_an_existing_folder(tiny_model, tiny_cohort):
    result = invoke("train", "--data", tiny_cohort, "--config", TINY, "--out", tiny_model)
    assert result.exit_code == 2 and "--resume" in result.stderr


def test_resume_continues_and_matches_an_uninterrupted_run(tiny_cohort, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert invoke("train", "--data", tiny_cohort, "--config", TINY, "--out", whole, "--steps", "20").exit_code == 0
    assert invoke("train", "--data", tiny_cohort, "--config", TINY, "--out", split, "--steps", "10").exit_code == 0
    result = invoke("train", "--data", tiny_cohort, "--config", TINY, "--out", split, "--steps", "20", "--resume")
    assert result.exit_code == 0, result.output
    steps = [int(line.split(",")[0]) for line in (split / "log.csv").read_text(encoding="utf-8").splitlines()[1:]]
    assert steps == [5, 10, 15, 20]  # continued from step 10, not from 0
    thresholds = [json.loads((run / "meta.json").read_text(encoding="utf-8"))["threshold"] for run in (whole, split)]
    assert thresholds[0] == thresholds[1]  # calibration is seeded too
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-6)


def test_detect_keeps_an_oblique_input_grid(tiny_model, tiny_cohort, tmp_path):
    case = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0]
    oblique = tmp_path / "obl"
    oblique.mkdir()
    for path in case.glob("*.nii.gz"):
        img = nib.load(path)
        target = oblique / path.name.replace(case.name, "obl")
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), OBLIQUE_AFFINE), target)
    result = invoke("detect", oblique, "--model", tiny_model, "--out", tmp_path / "mask.nii.gz",
                    "--map", tmp_path / "map.nii.gz")
    assert result.exit_code == 0, result.output
    source = nib.load(oblique / "obl_flair.nii.gz")
    for name, dtype in (("mask.nii.gz", np.uint8), ("map.nii.gz", np.float32)):
        out = nib.load(tmp_path / name)
        assert out.shape == source.shape and out.get_data_dtype() == dtype
        np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)
    assert set(np.unique(np.asarray(nib.load(tmp_path / "mask.nii.gz").dataobj))) <= {0, 1}
    again = invoke("detect", oblique, "--model", tiny_model, "--out", tmp_path / "mask.nii.gz")
    assert again.exit_code == 2 and "--overwrite" in again.stderr


def test_detect_folder_with_a_corrupt_case_writes_the_rest(tiny_model, tiny_cohort, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    broken = sorted(data.glob("*/*_t2.nii.gz"))[1]
    broken.write_bytes(broken.read_bytes()[:300])
    result = invoke("detect", data, "--model", tiny_model, "--out", tmp_path / "out")
    assert result.exit_code == 2  # bad input; the others written
    assert len(list((tmp_path / "out").glob("*_mask.nii.gz"))) == 5
    assert "1 of 6 case(s) failed" in result.stderr and broken.name in result.stderr
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_detect_refuses_missing_modalities(tiny_model, tiny_cohort, tmp_path):
    flair = sorted(tiny_cohort.glob("*/*_flair.nii.gz"))[0]
    result = invoke("detect", "--flair", flair, "--model", tiny_model, "--out", tmp_path / "m.nii.gz")
    assert result.exit_code == 2 and "trained on ['flair', 't1', 't1ce', 't2']" in result.stderr
    assert not (tmp_path / "m.nii.gz").exists()


def test_evaluate_writes_the_report(tiny_model, tiny_cohort, tmp_path):
    result = invoke("evaluate", "--model", tiny_model, "--data", tiny_cohort, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))
    assert set(report["methods"]) == {"anodiff", "flair threshold"}
    for method in report["methods"].values():
        assert 0 <= method["auroc_pooled"] <= 1
        assert method["dice_best_possible_pooled"] >= method["dice_validation_best_pooled"] - 1e-9
    assert set(report["breakdown"]["kind"]) == {"glioma", "wm_lesions", "t1_hypo", "mass"}
    assert len(list((tmp_path / "report" / "overlays").glob("*_montage.png"))) == 6  # and a three-view figure each
    assert len(list((tmp_path / "report" / "overlays").glob("*.png"))) == 12
    summary = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    assert "flair threshold" in summary and "![ROC curves](figures/roc.png)" in summary
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert page.count("<img src='data:image/png;base64,") == 16
    assert "AUROC pooled" in result.stdout


def test_model_load_errors_are_one_line(tmp_path):
    result = invoke("detect", tmp_path, "--model", tmp_path / "nomodel", "--out", tmp_path / "x.nii.gz")
    assert result.exit_code == 2 and "not a model folder" in result.stderr


def test_evaluate_with_new_anomaly_settings_recalibrates(tiny_model, tiny_cohort, tmp_path):
    base = json.loads((tiny_model / "meta.json").read_text(encoding="utf-8"))["threshold"]
    result = invoke("evaluate", "--model", tiny_model, "--data", tiny_cohort, "--out", tmp_path / "r",
                    "anomaly.t0=60", "sampler.num_inference_steps=2")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert report["anomaly"]["t0"] == 60 and report["network_evals_per_slice"] == 2
    assert report["methods"]["anodiff"]["threshold_calibrated"] != pytest.approx(base)
    refused = invoke("evaluate", "--model", tiny_model, "--data", tiny_cohort, "--out", tmp_path / "r2",
                     "model.channels=[8,8,8]")
    assert refused.exit_code == 2 and "only anomaly.* and sampler.* settings" in refused.stderr


def test_same_seed_gives_a_bit_identical_mask(tiny_model, tiny_cohort, tmp_path):
    case = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[2]

    def run(name: str, seed: int, *, subprocess_run: bool = False) -> tuple[np.ndarray, np.ndarray]:
        args = ["detect", str(case), "--model", str(tiny_model), "--out", str(tmp_path / name / "mask.nii.gz"),
                "--map", str(tmp_path / name / "map.nii.gz"), "--seed", str(seed), "--device", "cpu"]
        if subprocess_run:  # a fresh process: no state carried over from earlier calls
            subprocess.run([sys.executable, "-m", "anodiff.cli", *args], check=True, capture_output=True)
        else:
            assert invoke(*args).exit_code == 0
        return tuple(np.asarray(nib.load(tmp_path / name / f).dataobj) for f in ("mask.nii.gz", "map.nii.gz"))

    first, again, other_seed = run("a", 0), run("b", 0, subprocess_run=True), run("c", 1)
    for x, y in zip(first, again):
        assert x.tobytes() == y.tobytes()
    assert first[0].any()
    assert first[1].tobytes() != other_seed[1].tobytes()  # the seed does reach the noise draws


def test_output_equal_to_an_input_is_refused(tiny_model, tiny_cohort, tmp_path):
    case = tmp_path / "case"
    shutil.copytree(sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0], case)
    flair = next(case.glob("*_flair.nii.gz"))
    before = flair.read_bytes()
    result = invoke("detect", case, "--model", tiny_model, "--out", flair, "--overwrite")
    assert result.exit_code == 2 and "output path equals an input" in result.stderr
    assert flair.read_bytes() == before


def test_a_failing_case_leaves_no_half_output_and_the_batch_goes_on(tiny_model, tiny_cohort, tmp_path, monkeypatch):
    import anodiff.jobs as jobs
    import anodiff.methods.anomaly.method as anomaly
    from anodiff.errors import DataError

    real_write, real_detect = jobs.write_volume, anomaly.detect
    victims = sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[:2]

    def write_volume(data, path, **kwargs):  # the map of the first case cannot be written
        if path.name == f"{victims[0]}_map.nii.gz":
            raise DataError(f"{path}: disk full")
        return real_write(data, path, **kwargs)

    def detect(network, config, case, *args, **kwargs):  # the second case hits a bug
        if case.id == victims[1]:
            raise RuntimeError("boom")
        return real_detect(network, config, case, *args, **kwargs)

    monkeypatch.setattr(jobs, "write_volume", write_volume)
    monkeypatch.setattr(anomaly, "detect", detect)
    out = tmp_path / "out"
    result = invoke("detect", tiny_cohort, "--model", tiny_model, "--out", out)
    assert result.exit_code == 1 and "2 of 6 case(s) failed" in result.stderr  # 1: one of them is a bug
    assert "disk full" in result.stderr and "unexpected RuntimeError: boom" in result.stderr
    names = {p.name for p in out.iterdir()}
    assert not {n for n in names if n.startswith(tuple(victims))}  # no mask left without its map
    assert len(names) == 8  # the four other cases, mask and map each
