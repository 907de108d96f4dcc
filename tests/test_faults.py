"""Faults and hostile input beyond training: SIGKILL at eleven moments of ``prepare``, batch ``detect`` and
``evaluate``, and odd or hostile files given to ``prepare``.

A killed run is followed by a rerun (the same command; ``detect`` with ``--resume``),
which must complete, leave nothing half-written (no temporary, staging or stale
folder) and give what an uninterrupted run gives. Each hostile input either
prepares, or ends in one error line naming the file, exit status 2 and no output.
"""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.outputs import MARKER

KILLER = Path(__file__).with_name("killed_command.py")
PREPARE_OPTIONS = ("--grid", "reference", "--spacing", "4")  # skull-stripped input, its own grid: seconds a case


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def killed(point: str, n: int, *args) -> None:
    """Run ``anodiff ARGS`` until it SIGKILLs itself at ``point`` (tests/killed_command.py)."""
    result = subprocess.run([sys.executable, str(KILLER), point, str(n), *map(str, args)], capture_output=True,
                            text=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def leftovers(folder: Path) -> list[str]:
    """What a killed run may leave: hidden temporaries, staging and stale folders (anything hidden but markers)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name != MARKER)


def images(folder: Path) -> dict[str, np.ndarray]:
    """Every NIfTI under ``folder`` by relative path: what two runs must agree on."""
    return {str(p.relative_to(folder)): np.asarray(nib.load(p).dataobj) for p in sorted(folder.rglob("*.nii.gz"))}


def assert_same_images(folder: Path, reference: Path) -> None:
    got, expected = images(folder), images(reference)
    assert sorted(got) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-5, atol=1e-5, err_msg=name)


def linked_cases(cohort: Path, folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for case in sorted(p for p in cohort.iterdir() if p.is_dir())[:count]:
        (folder / case.name).symlink_to(case, target_is_directory=True)
    return folder


# ---------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def raw_t1(tiny_cohort, tmp_path_factory) -> Path:
    """Two cases with a t1 and a label each."""
    folder = tmp_path_factory.mktemp("raw") / "raw"
    for case in sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[:2]:
        (folder / case.name).mkdir(parents=True)
        for part in ("t1", "seg"):
            shutil.copy(case / f"{case.name}_{part}.nii.gz", folder / case.name)
    return folder


@pytest.fixture(scope="module")
def prepared_once(raw_t1, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    assert invoke("prepare", raw_t1, "--out", out, *PREPARE_OPTIONS).exit_code == 0
    return out


PREPARE_KILLS = [
    ("bias", 1, False),  # the first case, nothing written
    ("write-volume", 2, False),  # the first case half-way through its files (in its staging folder)
    ("bias", 2, False),  # the second case; the first complete
    ("staging-rename", 1, True),  # --overwrite: the old case moved aside, the new one not yet in place
]


@pytest.mark.parametrize(("point", "n", "over_existing"), PREPARE_KILLS, ids=[f"{p}-{n}" for p, n, _ in PREPARE_KILLS])
def test_killed_prepare_reruns_to_the_uninterrupted_result(point, n, over_existing, raw_t1, prepared_once, tmp_path):
    out = tmp_path / "prepared"
    args = ["prepare", raw_t1, "--out", out, *PREPARE_OPTIONS]
    if over_existing:
        shutil.copytree(prepared_once, out)
        args.append("--overwrite")
    killed(point, n, *args)
    rerun = invoke(*args)
    assert rerun.exit_code == 0, rerun.output
    assert not leftovers(out)
    assert_same_images(out, prepared_once)


# ---------------------------------------------------------------- batch detect


@pytest.fixture(scope="module")
def three_cases(tiny_cohort, tmp_path_factory) -> Path:
    return linked_cases(tiny_cohort, tmp_path_factory.mktemp("three") / "data", 3)


@pytest.fixture(scope="module")
def detected_once(tiny_model, three_cases, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("detected") / "out"
    assert invoke("detect", three_cases, "--model", tiny_model, "--out", out, "--device", "cpu").exit_code == 0
    return out


DETECT_KILLS = [
    ("network", 2),  # the second case in the network, the first written
    ("write-volume", 3),  # the second case's mask half-written (a temporary)
    ("replace", 1),  # the first case's mask in place, its map not yet
]


@pytest.mark.parametrize(("point", "n"), DETECT_KILLS, ids=[f"{p}-{n}" for p, n in DETECT_KILLS])
def test_killed_batch_detect_resumes_to_the_uninterrupted_result(point, n, tiny_model, three_cases, detected_once,
                                                                 tmp_path):
    out = tmp_path / "out"
    args = ["detect", three_cases, "--model", tiny_model, "--out", out, "--device", "cpu"]
    killed(point, n, *args)
    rerun = invoke(*args, "--resume")
    assert rerun.exit_code == 0, rerun.output
    assert "kept, its outputs exist" in rerun.stdout or point == "replace"
    assert not leftovers(out)
    assert_same_images(out, detected_once)


# ---------------------------------------------------------------- evaluate


def figures_of(report: Path) -> dict:
    """report.json less its timings."""
    figures = json.loads((report / "report.json").read_text(encoding="utf-8"))
    return {k: v for k, v in figures.items() if k not in ("seconds_per_volume", "cases", "model", "data")}


EVALUATE_KILLS = [
    ("network", 2, ()),  # the second case in the network
    ("figure", 1, ()),  # the first overlay PNG half-written
    ("report-json", 1, ()),  # every figure written, report.json not yet in place
    ("calibrate", 1, ("anomaly.t0=20",)),  # recalibrating for new settings
]


@pytest.fixture(scope="module")
def evaluated_once(tiny_model, three_cases, tmp_path_factory):
    """The uninterrupted report for a tuple of overrides, made once."""
    reports: dict[tuple[str, ...], Path] = {}

    def report(overrides: tuple[str, ...]) -> Path:
        if overrides not in reports:
            out = tmp_path_factory.mktemp("evaluated") / "report"
            assert invoke("evaluate", "--model", tiny_model, "--data", three_cases, "--device", "cpu", "--out", out,
                          *overrides).exit_code == 0
            reports[overrides] = out
        return reports[overrides]

    return report


@pytest.mark.parametrize(("point", "n", "overrides"), EVALUATE_KILLS, ids=[f"{p}-{n}" for p, n, _ in EVALUATE_KILLS])
def test_killed_evaluate_reruns_to_the_uninterrupted_report(point, n, overrides, tiny_model, three_cases,
                                                            evaluated_once, tmp_path):
    args = ["evaluate", "--model", tiny_model, "--data", three_cases, "--device", "cpu"]
    reference = evaluated_once(overrides)
    out = tmp_path / "report"
    killed(point, n, *args, "--out", out, *overrides)
    assert not (out / "report.json").exists()
    rerun = invoke(*args, "--out", out, *overrides)  # the same command: an unfinished report starts again
    assert rerun.exit_code == 0, rerun.output
    assert not leftovers(out)
    assert figures_of(out) == figures_of(reference)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(
        p.name for p in (reference / "overlays").iterdir())


# ---------------------------------------------------------------- hostile input to prepare


def t1_of(tiny_cohort: Path) -> tuple[nib.Nifti1Image, Path]:
    case = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0]
    return nib.load(case / f"{case.name}_t1.nii.gz"), case


def write_variant(name: str, tiny_cohort: Path, folder: Path) -> None:
    """One hostile or odd case ``folder/x_*`` built from a real t1."""
    img, case = t1_of(tiny_cohort)
    data, affine = np.asarray(img.dataobj).astype(np.float32), img.affine
    folder.mkdir(parents=True)
    target = folder / "x_t1.nii.gz"
    shifted = affine.copy()
    shifted[:3, 3] += [6.0, -4.0, 8.0]
    if name == "truncated":
        target.write_bytes(gzip.compress(img.to_bytes())[:4000])
    elif name == "broken header":
        raw = bytearray(img.to_bytes())
        raw[40:56] = b"\xff" * 16  # dim[] overwritten
        target.write_bytes(gzip.compress(bytes(raw)))
    elif name == "4D":
        nib.save(nib.Nifti1Image(np.stack([data] * 3, axis=-1), affine), target)
    elif name == "NIfTI-2":
        nib.save(nib.Nifti2Image(data, affine), target)
    elif name == "big-endian":
        stored = nib.Nifti1Image(data.astype(">f4"), affine)
        stored.set_data_dtype(">f4")
        nib.save(stored, target)
    elif name == "qform and sform disagree":
        stored = nib.Nifti1Image(data, affine)
        stored.set_qform(shifted, code=1)
        stored.set_sform(affine, code=2)
        nib.save(stored, target)
    elif name == "modalities on different grids":
        nib.save(nib.Nifti1Image(data, affine), target)
        flair = np.asarray(nib.load(case / f"{case.name}_flair.nii.gz").dataobj).astype(np.float32)
        nib.save(nib.Nifti1Image(np.flip(flair, 0)[2:-2], shifted @ np.diag([-1.0, 1, 1, 1])),
                 folder / "x_flair.nii.gz")
    elif name == "label on another grid":
        nib.save(nib.Nifti1Image(data, affine), target)
        label = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
        nib.save(nib.Nifti1Image(label[::2, ::2, ::2].astype(np.uint8), affine @ np.diag([2.0, 2, 2, 1])),
                 folder / "x_seg.nii.gz")
    else:
        raise ValueError(name)


HOSTILE = ["truncated", "broken header", "4D", "NIfTI-2", "big-endian", "qform and sform disagree",
           "modalities on different grids", "label on another grid"]


@pytest.mark.parametrize("name", HOSTILE)
def test_prepare_on_an_odd_case_prepares_it_or_fails_in_one_line(name, tiny_cohort, tmp_path):
    write_variant(name, tiny_cohort, tmp_path / "raw" / "x")
    out = tmp_path / "out"
    result = invoke("prepare", tmp_path / "raw", "--out", out, "--grid", "reference", "--no-bias")
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert (out / "x" / "x_t1.nii.gz").is_file() and (out / "x" / "x_brain.nii.gz").is_file()
        assert (out / "x" / "x_seg.nii.gz").is_file() == (name == "label on another grid")
    else:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1 and "x_t1.nii.gz" in errors[0], result.output
        assert not (out / "x").exists()
    assert not out.exists() or not leftovers(out)
