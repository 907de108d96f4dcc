"""No path loses or mixes data: case ids stay inside the output, anodiff removes only folders it made, a
report starts clean, the disk cache never serves a stale volume, a scan with its skull on is refused, DICOM
series are capped like files, and bad input exits with status 2."""

from __future__ import annotations

import json
import locale
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

import anodiff.io as io_module
from anodiff.cli.main import app
from anodiff.config import DataConfig
from anodiff.data.cases import Case, discover
from anodiff.data.datasets import volume_dataset
from anodiff.errors import DataError
from anodiff.outputs import MARKER
from tests.conftest import TINY, brain_phantom, save_nifti

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    """The one error line a refusal prints (a progress bar may stand above it)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def first_case(cohort: Path) -> Path:
    return sorted(p for p in cohort.iterdir() if p.is_dir())[0]


# ---------------------------------------------------------------- case ids


@pytest.mark.parametrize("bad_id", ["..", ".", "/tmp/x", "a/b", "..\\up", " ", ".hidden"])
def test_a_datalist_id_that_is_not_a_plain_name_is_refused_naming_the_entry(bad_id, tmp_path):
    image, _ = brain_phantom()
    save_nifti(tmp_path / "a.nii.gz", image)
    datalist = tmp_path / "list.json"
    entries = [{"image": "a.nii.gz"}, {"image": "a.nii.gz", "id": bad_id}]
    datalist.write_text(json.dumps({"training": entries}), encoding="utf-8")
    with pytest.raises(DataError, match="entry 1") as err:
        discover(datalist)
    assert repr(bad_id) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError):
        Case(id=bad_id, images={"image": tmp_path / "a.nii.gz"})


def test_detect_over_a_datalist_never_writes_outside_its_output_folder(tiny_model, tiny_cohort, tmp_path):
    case = first_case(tiny_cohort)
    entry = {m: str(next(case.glob(f"*_{m}.nii.gz"))) for m in ("flair", "t1", "t1ce", "t2")}
    datalist = tmp_path / "data" / "list.json"
    datalist.parent.mkdir()
    for name, path in entry.items():
        shutil.copy(path, datalist.parent / Path(path).name)
        entry[name] = Path(path).name
    datalist.write_text(json.dumps({"test": [{**entry, "id": "../escaped"}]}), encoding="utf-8")
    out = tmp_path / "out"
    result = invoke("detect", datalist, "--model", tiny_model, "--out", out)
    assert result.exit_code == 2 and "entry 0" in one_line_error(result)
    assert not list(tmp_path.glob("escaped*")) and not out.exists()


def test_prepare_with_an_id_of_dot_dot_removes_nothing(tmp_path):
    image, _ = brain_phantom()
    data = tmp_path / "data"
    save_nifti(data / "a_t1.nii.gz", image)
    (data / "list.json").write_text(json.dumps({"training": [{"t1": "a_t1.nii.gz", "id": ".."}]}), encoding="utf-8")
    keep = tmp_path / "keep.txt"
    keep.write_text("a user's file beside the output folder", encoding="utf-8")
    result = invoke("prepare", data / "list.json", "--out", tmp_path / "out" / "sub", "--overwrite")
    assert result.exit_code == 2 and "'..'" in one_line_error(result)
    assert keep.read_text(encoding="utf-8").startswith("a user's file") and (data / "a_t1.nii.gz").is_file()


# ---------------------------------------------------------------- anodiff removes only what it made


def users_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work", encoding="utf-8")
    return path


def test_synth_overwrite_refuses_a_folder_anodiff_did_not_make(tmp_path):
    folder = users_folder(tmp_path / "mine")
    result = invoke("synth", "--out", folder, "--cases", "1", "--spacing", "6", "--overwrite")
    assert result.exit_code == 2 and "not a cohort folder anodiff made" in one_line_error(result)
    assert (folder / "thesis.tex").read_text(encoding="utf-8") == "years of work"


def test_synth_overwrite_replaces_its_own_cohort(tmp_path):
    folder = tmp_path / "cohort"
    assert invoke("synth", "--out", folder, "--cases", "1", "--spacing", "6").exit_code == 0
    assert (folder / MARKER).is_file()
    (folder / "stale.txt").write_text("from the first cohort", encoding="utf-8")
    assert invoke("synth", "--out", folder, "--cases", "1", "--spacing", "6", "--overwrite").exit_code == 0
    assert not (folder / "stale.txt").exists() and (folder / "cohort.json").is_file()


def test_train_overwrite_refuses_a_folder_that_is_not_a_model(tiny_cohort, tmp_path):
    folder = users_folder(tmp_path / "mine")
    (folder / "config.yaml").write_text("a user's own config\n", encoding="utf-8")
    result = invoke("train", "--data", tiny_cohort, "--config", TINY, "--out", folder, "--overwrite")
    assert result.exit_code == 2 and "not a model folder anodiff made" in one_line_error(result)
    assert (folder / "config.yaml").read_text(encoding="utf-8") == "a user's own config\n"
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "thesis.tex"]


def test_prepare_overwrite_refuses_a_case_folder_anodiff_did_not_make(tiny_cohort, tmp_path):
    case = first_case(tiny_cohort)
    out = tmp_path / "prepared"
    users_folder(out / case.name)
    result = invoke("prepare", case, "--out", out, "--overwrite", "--no-bias")
    assert result.exit_code == 2 and "not a prepared case folder anodiff made" in result.output
    assert (out / case.name / "thesis.tex").read_text(encoding="utf-8") == "years of work"


# ---------------------------------------------------------------- evaluate starts clean


def test_evaluate_refuses_an_existing_report_and_starts_clean_with_overwrite(tiny_model, tiny_cohort, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / first_case(tiny_cohort).name).symlink_to(first_case(tiny_cohort), target_is_directory=True)
    out = tmp_path / "report"
    assert invoke("evaluate", "--model", tiny_model, "--data", data, "--out", out).exit_code == 0
    stale = out / "overlays" / "case_of_an_earlier_run.png"
    shutil.copy(next((out / "overlays").glob("*_montage.png")), stale)
    again = invoke("evaluate", "--model", tiny_model, "--data", data, "--out", out)
    assert again.exit_code == 2 and "--overwrite" in one_line_error(again) and stale.exists()
    assert invoke("evaluate", "--model", tiny_model, "--data", data, "--out", out, "--overwrite").exit_code == 0
    assert not stale.exists()
    assert "case_of_an_earlier_run" not in (out / "report.html").read_text(encoding="utf-8")
    mine = users_folder(tmp_path / "mine")
    refused = invoke("evaluate", "--model", tiny_model, "--data", data, "--out", mine, "--overwrite")
    assert refused.exit_code == 2 and (mine / "thesis.tex").exists()


# ---------------------------------------------------------------- the disk cache


def test_the_disk_cache_follows_the_chain_and_the_file(tiny_cohort, tmp_path):
    case = discover(tiny_cohort).cases[0]
    copy = tmp_path / "flair.nii.gz"
    shutil.copy(case.images["flair"], copy)
    cases = [Case(id="c", images={"flair": copy})]

    def cached(size: int) -> torch.Tensor:
        cfg = DataConfig(image_size=size, cache_dir=tmp_path / "cache")
        return torch.as_tensor(volume_dataset(cases, ("flair",), cfg, with_label=False)[0]["image"])

    assert cached(16).shape[1:3] == (16, 16)
    assert cached(24).shape[1:3] == (24, 24)  # a changed setting is not served from the cache
    first = cached(16)
    img = nib.load(copy)
    replaced = np.asarray(img.dataobj).astype(np.float32)
    replaced[replaced > 0] = replaced.max() - replaced[replaced > 0] + 1  # another image on the same grid
    nib.save(nib.Nifti1Image(replaced, img.affine), copy)
    assert not torch.equal(cached(16), first)  # nor is a replaced file


# ---------------------------------------------------------------- a scan with its skull on


def test_detect_refuses_a_scan_with_its_skull_on_when_the_model_cannot_prepare_it(tiny_model, tiny_cohort,
                                                                                 tmp_path):
    case = first_case(tiny_cohort)
    head = tmp_path / "head"
    head.mkdir()
    rng = np.random.default_rng(0)
    for path in case.glob("*.nii.gz"):
        img = nib.load(path)
        data = np.asarray(img.dataobj).astype(np.float32)
        if "_seg" not in path.name:  # scalp, skull and noise around the brain: nothing is 0 any more
            data = np.where(data == 0, rng.uniform(5, 400, data.shape), data)
        nib.save(nib.Nifti1Image(data, img.affine), head / path.name.replace(case.name, "head"))
    result = invoke("detect", head, "--model", tiny_model, "--out", tmp_path / "mask.nii.gz")
    assert result.exit_code == 2 and "anodiff prepare" in result.stderr
    assert not (tmp_path / "mask.nii.gz").exists()


# ---------------------------------------------------------------- DICOM and exit status


def keeping_locale(writer_class):
    """``writer_class`` whose ``Execute`` restores the locale GDCM sets to "C" (reading does it in anodiff.io)."""

    class Writer(writer_class):
        def Execute(self, *args):  # noqa: N802 (SimpleITK's name)
            saved = locale.setlocale(locale.LC_ALL)
            try:
                return super().Execute(*args)
            finally:
                locale.setlocale(locale.LC_ALL, saved)

    return Writer


def test_a_dicom_series_is_capped_like_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sitk, "ImageFileWriter", keeping_locale(sitk.ImageFileWriter))
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(4):
        sl = sitk.GetImageFromArray(np.full((1, 8, 8), 100 + z, np.int16))
        sl.SetSpacing((1.0, 1.0, 1.0))
        for tag, value in [("0020|000e", "1.2.3.4"), ("0020|0013", str(z + 1)), ("0008|0060", "MR"),
                           ("0020|0032", f"0\\0\\{z}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0008|0018", f"1.2.3.4.{z + 1}")]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z}.dcm"))
        writer.Execute(sl)
    before = locale.setlocale(locale.LC_ALL)
    assert io_module.read_volume(folder).shape == (8, 8, 4)
    assert locale.setlocale(locale.LC_ALL) == before  # GDCM's "C" locale does not outlive the read
    monkeypatch.setattr(io_module, "MAX_VOXELS", 8 * 8 * 4 - 1)
    with pytest.raises(DataError, match="voxel limit"):
        io_module.read_volume(folder)


def test_detect_on_a_corrupt_scan_exits_with_status_2(tiny_model, tmp_path):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"not a scan")
    modalities = [arg for m in ("flair", "t1", "t1ce", "t2") for arg in (f"--{m}", scan)]
    result = invoke("detect", *modalities, "--model", tiny_model, "--out", tmp_path / "mask.nii.gz")
    assert result.exit_code == 2 and "scan.nii.gz" in one_line_error(result)
    assert not (tmp_path / "mask.nii.gz").exists()
