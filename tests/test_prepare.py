"""anodiff prepare on raw synthetic scans: brain extraction, the geometry round trip back onto the raw grid,
skull-stripped input kept, and a model trained on prepared scans detecting on a raw one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.data.cases import discover
from anodiff.io import read_volume
from anodiff.prepare import Options, prepare_cases, read_record, to_raw_grid
from tests.conftest import TINY

SPACING = 3.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def raw_cohort(tmp_path_factory) -> Path:
    """Three raw synthetic cases at 3 mm: a glioma, white-matter lesions, a healthy subject."""
    from anodiff.data.cohort import write_cohort

    out = tmp_path_factory.mktemp("raw") / "raw"
    write_cohort(out, 3, seed=1, spacing_mm=SPACING, raw=True, healthy_fraction=1 / 3,
                 kinds=("glioma", "wm_lesions"))
    return out


@pytest.fixture(scope="module")
def prepared(raw_cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    outcomes = prepare_cases(discover(raw_cohort).cases, out, Options(spacing_mm=SPACING))
    assert [o.error for o in outcomes] == [None] * 3
    return out


def test_raw_scans_have_a_head_their_own_grids_and_the_truth_on_the_t1_grid(raw_cohort):
    case = discover(raw_cohort).cases[0]
    assert set(case.images) == {"t1", "t2", "flair"} and case.brain is not None and case.label is not None
    t1, flair = read_volume(case.images["t1"]), read_volume(case.images["flair"])
    brain = read_volume(case.brain, allow_constant=True)
    assert t1.orientation == "PSR" and flair.orientation == "RAS" and t1.shape != flair.shape
    assert np.allclose(brain.affine, t1.affine) and brain.shape == t1.shape
    head = t1.data > 0.1 * t1.data.max()
    assert head.sum() > 1.8 * (brain.data > 0).sum()  # scalp, skull and neck around the brain
    assert (t1.data[brain.data == 0] > 0).mean() > 0.9  # noise everywhere, not a zero background


def test_brain_extraction_matches_the_true_brain(prepared):
    for folder in sorted(p for p in prepared.iterdir() if p.is_dir()):
        record = read_record(folder)
        assert record["skull_stripped"] is False
        assert record["brain"]["dice_vs_given"] >= 0.95, (folder.name, record["brain"])


def test_prepared_cases_read_as_brats_and_keep_their_transforms(prepared):
    found = discover(prepared)
    assert len(found.cases) == 3 and not found.skipped
    case = found.cases[0]
    assert set(case.images) == {"t1", "t2", "flair"} and case.brain is not None
    images = [read_volume(p) for p in case.images.values()]
    assert all(np.allclose(v.affine, images[0].affine) and v.shape == images[0].shape for v in images)
    brain = read_volume(case.brain).data > 0
    assert all((v.data[~brain] == 0).all() for v in images)  # skull-stripped
    folder = prepared / case.id
    for name in ("grid_to_t1.tfm", "t2_to_t1.tfm", "flair_to_t1.tfm", "qc.png", "brain_on_raw_t1.nii.gz"):
        assert (folder / "prepare" / name).is_file(), name
    assert "Transform" in (folder / "prepare" / "grid_to_t1.tfm").read_text(encoding="utf-8")
    assert json.loads((prepared / "prepare.json").read_text(encoding="utf-8"))["options"]["spacing_mm"] == SPACING


def test_a_mask_on_the_prepared_grid_returns_onto_the_raw_grid(raw_cohort, prepared):
    """The geometry round trip: the truth carried onto the prepared grid (the detector's place) and back."""
    for raw_case in discover(raw_cohort).cases:
        if not read_volume(raw_case.label, allow_constant=True).data.any():
            continue
        folder = prepared / raw_case.id
        on_grid = read_volume(folder / f"{raw_case.id}_seg.nii.gz", allow_constant=True).data > 0
        back = to_raw_grid(on_grid.astype(np.float32), folder, label=True)
        truth = read_volume(raw_case.label, allow_constant=True)
        assert back.shape == truth.shape and np.allclose(back.affine, truth.affine)
        assert dice(back.data, truth.data > 0) >= 0.9, raw_case.id


def test_the_reference_grid_keeps_the_raw_field_of_view_and_still_finds_the_brain(raw_cohort, tmp_path):
    case = discover(raw_cohort).cases[-1]
    [outcome] = prepare_cases([case], tmp_path, Options(spacing_mm=SPACING, grid="reference"))
    record = read_record(outcome.folder)
    assert record["brain"]["dice_vs_given"] >= 0.95 and record["template"] == "mni152_2009a"
    prepared = read_volume(outcome.folder / f"{case.id}_t1.nii.gz")
    assert prepared.orientation == read_volume(case.images["t1"]).orientation == "PSR"


def test_a_skull_stripped_scan_is_recognised_and_its_brain_kept(tiny_cohort, tmp_path):
    case = discover(tiny_cohort).cases[0]
    [outcome] = prepare_cases([case], tmp_path, Options(spacing_mm=4.0, grid="reference"))
    record = read_record(outcome.folder)
    assert record["skull_stripped"] is True
    raw = read_volume(case.images["t1"]).data > 0
    kept = read_volume(outcome.folder / "prepare" / "brain_on_raw_t1.nii.gz").data > 0
    assert dice(kept, raw) > 0.98


def test_prepare_refuses_to_overwrite_and_reports_a_bad_case(raw_cohort, prepared, tmp_path):
    runner = CliRunner()
    again = runner.invoke(app, ["prepare", str(raw_cohort), "--out", str(prepared), "--spacing", str(SPACING)])
    assert again.exit_code == 0 and again.output.count("kept (prepared before)") == 3  # a rerun keeps them
    other = runner.invoke(app, ["prepare", str(raw_cohort), "--out", str(prepared), "--spacing", "4"])
    assert other.exit_code == 2 and "with other options" in other.output
    broken = tmp_path / "raw" / "case_t1.nii.gz"
    broken.parent.mkdir()
    broken.write_bytes(b"not a nifti")
    bad = runner.invoke(app, ["prepare", str(broken.parent), "--out", str(tmp_path / "out")])
    assert bad.exit_code == 2 and "not prepared" in bad.output


@pytest.fixture(scope="module")
def prepared_model(prepared, tmp_path_factory) -> Path:
    """A tiny t1 model trained on the prepared cases."""
    model = tmp_path_factory.mktemp("model") / "model"
    trained = CliRunner().invoke(app, ["train", "--data", str(prepared), "--config", TINY, "--out", str(model),
                                       "--device", "cpu", "data.modalities=[t1]"])
    assert trained.exit_code == 0, trained.output
    return model


def test_a_model_trained_on_prepared_scans_detects_on_a_raw_scan(raw_cohort, prepared_model, tmp_path):
    meta = json.loads((prepared_model / "meta.json").read_text(encoding="utf-8"))
    assert meta["preparation"]["options"]["spacing_mm"] == SPACING
    case = discover(raw_cohort).cases[0]
    mask, anomaly_map = tmp_path / "mask.nii.gz", tmp_path / "map.nii.gz"
    detected = CliRunner().invoke(app, ["detect", str(case.images["t1"]), "--model", str(prepared_model),
                                        "--out", str(mask), "--map", str(anomaly_map), "--device", "cpu"])
    assert detected.exit_code == 0, detected.output
    raw = read_volume(case.images["t1"])
    written = read_volume(mask, allow_constant=True)
    assert written.shape == raw.shape and np.allclose(written.affine, raw.affine)
    values = read_volume(anomaly_map, allow_constant=True).data
    brain = read_volume(case.brain).data > 0
    assert values[brain].mean() > 0 and (values[~brain] == 0).mean() > 0.9  # scored inside the brain only


def test_evaluate_prepares_raw_labelled_cases_as_the_model_was_trained(raw_cohort, prepared_model, tmp_path):
    glioma = next(c for c in discover(raw_cohort).cases if read_volume(c.label, allow_constant=True).data.any())
    data = tmp_path / "raw"
    data.mkdir()
    (data / glioma.id).symlink_to(raw_cohort / glioma.id, target_is_directory=True)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(prepared_model), "--data", str(data),
                                      "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (out / "prepared" / glioma.id / f"{glioma.id}_seg.nii.gz").is_file()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["num_cases"] == 1
