"""BIDS in and out: a BIDS copy of the synthetic cohort (two sessions of one subject) is discovered, trains,
detects into a derivatives dataset that follows the naming rules, and evaluates against its derivatives' masks."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.data.cases import discover
from tests.conftest import TINY, trained_by_cli

SUFFIXES = {"flair": "FLAIR", "t1": "T1w", "t1ce": "ce-gadolinium_T1w", "t2": "T2w"}


def bids_copy(cohort: Path, root: Path) -> Path:
    """``cohort`` as BIDS (scans linked, not copied): its first two cases the sessions 1 and 2 of sub-01, each
    other case a subject of its own (sub-02, ...); each label a lesion mask of ``derivatives/manual``."""
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "synthetic", "BIDSVersion": "1.10.0",
                                                               "License": "CC0"}), encoding="utf-8")
    for index, case in enumerate(sorted(p for p in cohort.iterdir() if p.is_dir())):
        entities = ["sub-01", f"ses-{index + 1}"] if index < 2 else [f"sub-{index:02d}"]
        stem = "_".join(entities)
        for modality, suffix in SUFFIXES.items():
            link(root.joinpath(*entities, "anat", f"{stem}_{suffix}.nii.gz"), case / f"{case.name}_{modality}.nii.gz")
        link(root.joinpath("derivatives", "manual", *entities, "anat", f"{stem}_label-lesion_mask.nii.gz"),
             case / f"{case.name}_seg.nii.gz")
    return root


def derivative_rules() -> list[dict]:
    """The file-name rules of BIDS derivatives (and of every dataset) from the BIDS schema's Python package."""
    rules = pytest.importorskip("bidsschematools.rules")
    schema = pytest.importorskip("bidsschematools.schema").load_schema()
    return [rule for group in (schema.rules.files.deriv, schema.rules.files.common)
            for rule in rules.regexify_filename_rules(group, schema, level=2)]


def link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def test_a_bids_dataset_gives_a_case_per_session_with_its_lesion_mask_and_says_what_it_skips(tiny_cohort,
                                                                                             tmp_path):
    root = bids_copy(tiny_cohort, tmp_path / "bids")
    flair = root / "sub-02" / "anat" / "sub-02_FLAIR.nii.gz"
    link(root / "sub-02" / "anat" / "sub-02_T2starw.nii.gz", flair)  # a suffix anodiff does not read
    link(root / "sub-02" / "anat" / "notes.nii.gz", flair)  # not a BIDS name
    link(root / "sub-03" / "anat" / "sub-03_acq-fast_T2w.nii.gz", flair)  # a second T2w: which one?
    link(root / "derivatives" / "anodiff" / "sub-02" / "anat" / "sub-02_desc-anomaly_mask.nii.gz", flair)

    found = discover(root)
    cases = {case.id: case for case in found.cases}
    assert list(cases) == ["sub-01_ses-1", "sub-01_ses-2", "sub-02", "sub-04", "sub-05"]
    session = cases["sub-01_ses-2"]
    assert session.layout == "bids" and session.entities == (("sub", "01"), ("ses", "2"))
    assert set(session.images) == set(SUFFIXES)
    assert session.images["t1ce"].name == "sub-01_ses-2_ce-gadolinium_T1w.nii.gz"
    assert session.label.parts[-5:] == ("manual", "sub-01", "ses-2", "anat", "sub-01_ses-2_label-lesion_mask.nii.gz")
    reasons = {skipped.path.name: skipped.reason for skipped in found.skipped}
    assert "not a modality" in reasons["sub-02_T2starw.nii.gz"] and "BIDS rules" in reasons["notes.nii.gz"]
    assert "2 files for modality 't2'" in reasons["anat"]  # sub-03 is left out, and why


def test_bids_trains_detects_into_derivatives_and_evaluates(tiny_cohort, tmp_path):
    root = bids_copy(tiny_cohort, tmp_path / "bids")
    model = trained_by_cli(root, tmp_path / "model", TINY)
    card = (model / "README.md").read_text(encoding="utf-8")
    assert "CC0 (from `dataset_description.json`)" in card  # the card's licence

    derivatives = root / "derivatives" / "anodiff"
    result = CliRunner().invoke(app, ["detect", str(root), "--model", str(model), "--out", str(derivatives)])
    assert result.exit_code == 0, result.output
    anat = derivatives / "sub-01" / "ses-2" / "anat"
    for suffix in ("mask", "map"):
        assert (anat / f"sub-01_ses-2_desc-anomaly_{suffix}.nii.gz").is_file()
        sidecar = json.loads((anat / f"sub-01_ses-2_desc-anomaly_{suffix}.json").read_text(encoding="utf-8"))
        assert "bids:raw:sub-01/ses-2/anat/sub-01_ses-2_FLAIR.nii.gz" in sidecar["Sources"]
        assert sidecar["Model"] == str(model.resolve()) and isinstance(sidecar["Threshold"], float)
    description = json.loads((derivatives / "dataset_description.json").read_text(encoding="utf-8"))
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "anodiff"
    written = sorted(p.relative_to(derivatives).as_posix() for p in derivatives.rglob("*") if p.is_file())
    assert len(written) == 2 + 6 * 4  # description, .bidsignore; a mask and a map, each with a sidecar, per case
    ignored = (derivatives / ".bidsignore").read_text(encoding="utf-8").split()
    named = [p for p in written if not any(fnmatch(Path(p).name, pattern) for pattern in ignored + [".*"])]
    assert len(named) == 1 + 6 * 2  # the masks and their sidecars are BIDS files; the maps are declared ignored
    unmatched = [p for p in named if not any(re.match(rule["regex"], p) for rule in derivative_rules())]
    assert not unmatched, f"not named by the BIDS derivatives rules: {unmatched}"

    again = discover(root).cases  # its own outputs are not read as scans or lesion masks
    assert len(again) == 6 and all("manual" in case.label.parts for case in again)
    report_dir = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--data", str(root), "--out",
                                      str(report_dir)])
    assert result.exit_code == 0, result.output
    figures = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    assert {row["case"] for row in figures["cases"]} >= {"sub-01_ses-1", "sub-01_ses-2"}


def test_prepare_writes_a_bids_input_as_a_derivatives_dataset_that_reads_back(tiny_cohort, tmp_path):
    root = bids_copy(tiny_cohort, tmp_path / "bids")
    out = root / "derivatives" / "prepared"
    result = CliRunner().invoke(app, ["prepare", str(root), "--out", str(out), "--grid", "reference",
                                      "--spacing", "4"])  # skull-stripped input on its own grid: seconds a case
    assert result.exit_code == 0, result.output
    anat = out / "sub-01" / "ses-2" / "anat"
    for name in ("sub-01_ses-2_desc-preproc_FLAIR", "sub-01_ses-2_ce-gadolinium_desc-preproc_T1w",
                 "sub-01_ses-2_desc-brain_mask", "sub-01_ses-2_desc-lesion_mask"):
        assert (anat / f"{name}.nii.gz").is_file(), name
    assert (anat / "prepare" / "prepare.json").is_file()
    description = json.loads((out / "dataset_description.json").read_text(encoding="utf-8"))
    assert description["DatasetType"] == "derivative" and "prepared" in description["GeneratedBy"][0]["Description"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    ignored = (out / ".bidsignore").read_text(encoding="utf-8").split()
    named = [p for p in written if not any(fnmatch(part, pattern.rstrip("/")) for part in Path(p).parts
                                           for pattern in ignored + [".*"])]
    assert len(named) == 1 + 6 * 6  # the description; four scans, a brain and a lesion mask per case
    unmatched = [p for p in named if not any(re.match(rule["regex"], p) for rule in derivative_rules())]
    assert not unmatched, f"not named by the BIDS derivatives rules: {unmatched}"

    prepared = {case.id: case for case in discover(out).cases}  # read back as the same cases, masks found
    assert list(prepared) == sorted(case.id for case in discover(root).cases)
    session = prepared["sub-01_ses-2"]
    assert set(session.images) == set(SUFFIXES) and session.brain.parent == anat and session.label.parent == anat
    again = CliRunner().invoke(app, ["prepare", str(root), "--out", str(out), "--grid", "reference", "--spacing", "4"])
    assert again.exit_code == 0 and again.output.count("kept (prepared before)") == 6  # a rerun keeps them
