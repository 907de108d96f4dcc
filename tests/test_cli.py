"""The command line: results on stdout, one clear line and exit status 2 on bad input."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from anodiff.cli.main import app
from tests.conftest import brain_phantom, save_nifti

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("anodiff ")


def test_inspect_lists_healthy_and_lesion_cases(tiny_cohort):
    result = runner.invoke(app, ["inspect", str(tiny_cohort)])
    assert result.exit_code == 0, result.output
    assert "6 case(s)" in result.stdout and "brats2021" in result.stdout
    assert "2 healthy, 4 lesion, 0 no label, 0 unreadable" in result.stdout


def test_inspect_reports_a_truncated_file_and_carries_on(tiny_cohort, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    broken = sorted(data.glob("*/*_flair.nii.gz"))[0]
    broken.write_bytes(broken.read_bytes()[:400])
    result = runner.invoke(app, ["inspect", str(data)])
    assert result.exit_code == 0
    assert "5 lesion" in result.stdout or "1 unreadable" in result.stdout
    assert "1 unreadable" in result.stdout
    problem_lines = [ln for ln in result.stderr.splitlines() if "unusable case" in ln]
    assert len(problem_lines) == 1 and broken.name in problem_lines[0] and "truncated or corrupt" in problem_lines[0]


def test_inspect_missing_folder_is_one_line_and_status_2(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "absent")])
    assert result.exit_code == 2
    assert "no such file" in result.stderr and "Traceback" not in result.output


def test_inspect_folder_of_plain_nifti(tmp_path):
    image, _ = brain_phantom()
    save_nifti(tmp_path / "scan1.nii.gz", image)
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 0 and "scan1" in result.stdout and "no label" in result.stdout


def test_synth_refuses_to_overwrite(tiny_cohort):
    result = runner.invoke(app, ["synth", "--out", str(tiny_cohort), "--cases", "1"])
    assert result.exit_code == 2 and "--overwrite" in result.stderr
