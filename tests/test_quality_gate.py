"""The quality gate: a seeded end-to-end run that fails when the maps stop finding lesions.

A small DDPM (``configs/gate.yaml``) trains on healthy 3 mm synthetic subjects and
is evaluated on a test cohort with every lesion kind; its AUPRC must stand clearly
above the FLAIR threshold's and above an absolute floor. SegDiff
(``configs/segdiff_gate.yaml``) must likewise outrank the UNet reference trained on
the same batches. The margins sit well below what the recipes reach (seeds 0-2 of
training gave anodiff 0.83-0.86 against the threshold's 0.22, SegDiff 0.75-0.80
against the UNet's 0.52-0.66), and far above what a broken score gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.data.cohort import write_cohort

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPACING_MM = 3.0

ANODIFF_FLOOR, ANODIFF_MARGIN = 0.6, 0.3  # AUPRC: at least the floor, and the FLAIR threshold's plus the margin
SEGDIFF_FLOOR, SEGDIFF_MARGIN = 0.6, 0.05  # AUPRC: at least the floor, and the UNet reference's plus the margin


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    """Healthy training subjects, labelled training subjects and a test cohort with every lesion kind."""
    root = tmp_path_factory.mktemp("gate")
    plans = {"healthy": dict(num_cases=8, seed=1, healthy_only=True),
             "labelled": dict(num_cases=8, seed=3, healthy_fraction=0.17),
             "test": dict(num_cases=6, seed=2, healthy_fraction=0.17)}
    for name, plan in plans.items():
        write_cohort(root / name, spacing_mm=SPACING_MM, **plan)
    return {name: root / name for name in plans}


def trained_and_evaluated(config: str, data: Path, test: Path, out: Path) -> dict:
    """``anodiff train`` then ``anodiff evaluate``, in process; the report.json."""
    for args in (["train", "--data", data, "--config", CONFIGS / config, "--out", out / "model", "--device", "cpu"],
                 ["evaluate", "--model", out / "model", "--data", test, "--out", out / "report", "--device", "cpu"]):
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))


def test_anodiff_outranks_the_flair_threshold(cohorts, tmp_path):
    report = trained_and_evaluated("gate.yaml", cohorts["healthy"], cohorts["test"], tmp_path)
    ours, flair = (report["methods"][name]["auprc_pooled"] for name in ("anodiff", "flair threshold"))
    assert ours >= ANODIFF_FLOOR and ours >= flair + ANODIFF_MARGIN, (
        f"anodiff AUPRC {ours:.3f} against the FLAIR threshold's {flair:.3f}: the map no longer finds lesions")


def test_segdiff_outranks_its_unet_reference(cohorts, tmp_path):
    report = trained_and_evaluated("segdiff_gate.yaml", cohorts["labelled"], cohorts["test"], tmp_path)
    methods = report["methods"]
    segdiff = methods[f"SegDiff ({report['samples']} samples)"]["whole"]["auprc_pooled"]  # the fused masks
    unet = methods["UNet reference"]["whole"]["auprc_pooled"]
    assert segdiff >= SEGDIFF_FLOOR and segdiff >= unet + SEGDIFF_MARGIN, (
        f"SegDiff AUPRC {segdiff:.3f} against the UNet reference's {unet:.3f}")
