"""Case discovery for every supported layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anodiff.data.cases import discover, select_modalities
from anodiff.errors import DataError
from tests.conftest import brain_phantom, save_nifti


def _write(root, names):
    image, label = brain_phantom(lesion=True)
    for name in names:
        save_nifti(root / name, label if "seg" in name else image)


def test_brats2021_layout(tmp_path):
    _write(tmp_path, [f"B_001/B_001_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2", "seg")]
           + [f"B_002/B_002_{m}.nii.gz" for m in ("flair", "t1ce", "seg")])
    found = discover(tmp_path)
    assert [c.id for c in found.cases] == ["B_001", "B_002"]
    assert found.cases[0].modalities == ("flair", "t1", "t1ce", "t2")
    assert found.cases[0].label.name == "B_001_seg.nii.gz"
    assert found.layouts == ("brats2021",)
    assert select_modalities(found.cases, None) == ("flair", "t1ce")  # what both cases have


def test_brats2023_layout_maps_modality_names(tmp_path):
    _write(tmp_path, [f"BraTS-GLI-00001-000/BraTS-GLI-00001-000-{m}.nii.gz"
                      for m in ("t2f", "t1n", "t1c", "t2w", "seg")])
    (case,) = discover(tmp_path).cases
    assert case.id == "BraTS-GLI-00001-000"
    assert set(case.modalities) == {"flair", "t1", "t1ce", "t2"}
    assert case.layout == "brats2023" and case.label is not None


def test_ixi_layout(tmp_path):
    _write(tmp_path, ["IXI002-Guys-0828-T1.nii.gz", "IXI002-Guys-0828-T2.nii.gz", "IXI012-HH-1211-T1.nii.gz"])
    found = discover(tmp_path)
    assert [(c.id, c.modalities) for c in found.cases] == [
        ("IXI002-Guys-0828", ("t1", "t2")), ("IXI012-HH-1211", ("t1",))]
    assert all(c.label is None and c.layout == "ixi" for c in found.cases)


def test_any_folder_of_images(tmp_path):
    _write(tmp_path, ["scanA.nii.gz", "sub/scanB.nii", "sub/scanC.nii.gz"])
    (tmp_path / "notes.csv").write_text("a,b\n", encoding="utf-8")
    found = discover(tmp_path, default_modality="flair")
    assert [c.id for c in found.cases] == ["scanA", "sub_scanB", "sub_scanC"]
    assert all(c.modalities == ("flair",) for c in found.cases)
    assert [s.path.name for s in found.skipped] == ["notes.csv"]


def test_label_without_images_and_duplicates_are_reported(tmp_path):
    _write(tmp_path, ["X/X_seg.nii.gz", "Y/Y_t1.nii.gz", "Y/Y_t1.nii", "Z/Z_t1.nii.gz"])
    found = discover(tmp_path)
    assert [c.id for c in found.cases] == ["Z"]
    reasons = " | ".join(s.reason for s in found.skipped)
    assert "label without any image" in reasons and "2 files for modality 't1'" in reasons


def test_datalist_json(tmp_path):
    _write(tmp_path, ["imgs/a_flair.nii.gz", "imgs/a_t1.nii.gz", "labels/a.nii.gz", "imgs/b.nii.gz"])
    datalist = {
        "training": [{"flair": "imgs/a_flair.nii.gz", "t1": "imgs/a_t1.nii.gz", "label": "labels/a.nii.gz"}],
        "test": [{"image": "imgs/b.nii.gz", "id": "bee"}, {"image": "../escape.nii.gz"}],
    }
    (tmp_path / "list.json").write_text(json.dumps(datalist), encoding="utf-8")
    found = discover(tmp_path / "list.json")
    assert [c.id for c in found.cases] == ["a_flair", "bee"]
    assert found.cases[0].modalities == ("flair", "t1") and found.cases[0].label.name == "a.nii.gz"
    assert len(found.skipped) == 1 and "outside the data root" in found.skipped[0].reason


def test_missing_modality_is_named(tmp_path):
    _write(tmp_path, ["A/A_flair.nii.gz", "A/A_t1.nii.gz", "B/B_flair.nii.gz"])
    with pytest.raises(DataError, match="lack one of the modalities"):
        select_modalities(discover(tmp_path).cases, ("flair", "t1"))


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        discover(tmp_path / "absent")


def test_real_brats2015_sample_when_present(shared_data):
    found = discover(shared_data)
    assert len(found.cases) == 4
    assert all(c.modalities == ("flair", "t1ce") and c.label is not None for c in found.cases)
    assert np.all([c.layout == "brats2021" for c in found.cases])
