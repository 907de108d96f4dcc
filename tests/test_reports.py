"""The report's figures: plotted curves whose areas are the reported AUROC and AUPRC, tiles of the promised
size, one HTML page that fetches nothing, and `anodiff report` from report.json alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.evaluation.anomaly import anomaly_report, summarize_method
from anodiff.evaluation.plots import _pr, _roc
from anodiff.figures import BLUE, GREEN, RED, case_views, save_case_figures

runner = CliRunner()


@pytest.fixture(scope="module")
def report():
    """An unsupervised report of three cases: anodiff's score separates lesion voxels better than the baseline's."""
    rng = np.random.default_rng(0)
    truths = [rng.random(40_000) < fraction for fraction in (0.02, 0.05, 0.1)]
    anodiff = [rng.normal(size=t.size) + 2.0 * t for t in truths]
    baseline = [rng.normal(size=t.size) + 0.8 * t for t in truths]
    methods = {"anodiff": summarize_method(anodiff, truths, calibrated=2.3),
               "flair threshold": summarize_method(baseline, truths, calibrated=2.3)}
    rows = [{"case": f"case_{i}", "kind": "glioma", "lesion_ml": 2.0, "size": "medium (1-10 ml)", "seconds": 1.0}
            for i in range(3)]
    figures = {"model": "runs/model", "data": "data/test", "num_cases": 3, "num_lesion_cases": 3,
               "network_evals_per_slice": 1, "seconds_per_volume": 2.5, "anomaly": {"score": "zscore", "t0": 250},
               "sampler": {"kind": "ddim_t0"}, "versions": {"anodiff": "0.1.0", "torch": "2.x"}}
    return anomaly_report(figures, methods, rows)


def plotted(figure, name: str) -> np.ndarray:
    """The (N, 2) points of the curve labelled ``name ...`` in ``figure``."""
    line = next(ln for ln in figure.axes[0].lines if ln.get_label().startswith(f"{name} ("))
    return np.asarray(line.get_xydata())


def test_areas_under_the_plotted_curves_are_the_reported_figures(report):
    roc_figure, pr_figure = _roc(report.figures), _pr(report.figures)
    for name, method in report.figures["methods"].items():
        fpr, tpr = plotted(roc_figure, name).T
        assert abs(np.trapezoid(tpr, fpr) - method["auroc_pooled"]) < 1e-3
        recall, precision = plotted(pr_figure, name).T
        assert abs(np.sum(np.diff(recall) * precision[1:]) - method["auprc_pooled"]) < 1e-3  # drawn as steps
    assert report.figures["methods"]["anodiff"]["auroc_pooled"] > report.figures["methods"]["flair threshold"][
        "auroc_pooled"] + 0.1


def test_operating_points_lie_where_the_masks_are(report):
    anodiff = report.figures["methods"]["anodiff"]
    point = anodiff["curves"]["operating_points"]["calibrated"]
    # 2.3 standard deviations: about 1 % of healthy voxels, and lesion voxels shifted by 2 sd above it ~38 %.
    assert point["fpr"] == pytest.approx(0.0107, abs=0.003) and point["tpr"] == pytest.approx(0.38, abs=0.04)
    assert set(anodiff["curves"]["operating_points"]) == {"calibrated", "validation_best"}


def phantom_views():
    """The views of a phantom case: a brain box, a bright lesion, a detection shifted by two voxels."""
    shape, spacing = (40, 52, 30), (1.0, 1.0, 1.5)
    brain = np.zeros(shape, bool)
    brain[4:36, 5:47, 3:27] = True
    image = np.where(brain, 0.4, 0.0).astype(np.float32)
    truth = np.zeros(shape, bool)
    truth[10:16, 20:27, 12:17] = True
    image[truth] = 0.9
    outlines = [("truth", truth, GREEN), ("anodiff", np.roll(truth, 2, axis=0), RED), ("baseline", truth, BLUE)]
    panels = [("reconstruction", image * 0.9, "gray", "", 1.0), ("anomaly map", image * truth, "inferno", "z", None)]
    return case_views("case", image, panels, outlines, brain, spacing)


def test_case_figures_have_tiles_of_at_least_256_pixels(tmp_path):
    figures = save_case_figures(tmp_path, "case", phantom_views())
    renderer = figures[0].canvas.get_renderer()
    tiles = [ax for figure in figures for ax in figure.axes if ax.images]
    assert len(tiles) == 3 * 4 + 5  # three views of four columns; the five slices that hold lesion
    for ax in tiles:
        box = ax.get_window_extent(renderer)
        assert min(box.width, box.height) >= 256, (ax.get_title(), box)
    assert {p.name for p in tmp_path.iterdir()} == {"case.png", "case_montage.png", "case.npz"}
    assert (tmp_path / "case.npz").stat().st_size < 50_000  # the views, not the volumes


def test_html_is_self_contained_and_holds_every_figure(report, tmp_path):
    save_case_figures(tmp_path / "overlays", "case_0", phantom_views())
    report.write(tmp_path)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    pngs = list((tmp_path / "figures").glob("*.png")) + list((tmp_path / "overlays").glob("*.png"))
    assert len(pngs) == 6
    assert page.count("<img src='data:image/png;base64,") == len(pngs)
    for remote in ("http://", "https://", "<script", "<link", "url("):
        assert remote not in page
    assert "Settings and versions" in page and "versions.torch" in page and "anomaly.t0" in page
    assert "![Precision-recall curves](figures/pr.png)" in (tmp_path / "summary.md").read_text(encoding="utf-8")


def test_report_command_renders_from_report_json_alone(report, tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(report.figures, default=float), encoding="utf-8")
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "overlays").exists()
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"roc.png", "pr.png", "dice_threshold.png",
                                                                  "histograms.png"}
    assert "| anodiff |" in (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert (tmp_path / "report.html").read_text(encoding="utf-8").count("<img src='data:image/png;base64,") == 4
    assert (tmp_path / "per_case.csv").read_text(encoding="utf-8").count("case_") == 3


def test_report_command_redraws_the_case_figures_from_their_views(report, tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(report.figures, default=float), encoding="utf-8")
    save_case_figures(tmp_path / "overlays", "case_0", phantom_views())
    drawn = (tmp_path / "overlays" / "case_0.png").read_bytes()
    for png in (tmp_path / "overlays").glob("*.png"):
        png.unlink()
    assert runner.invoke(app, ["report", str(tmp_path)]).exit_code == 0
    assert (tmp_path / "overlays" / "case_0.png").read_bytes() == drawn
    assert (tmp_path / "overlays" / "case_0_montage.png").is_file()
    assert (tmp_path / "report.html").read_text(encoding="utf-8").count("<img src='data:image/png;base64,") == 6


def test_report_command_refuses_a_folder_without_report_json(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "no report.json" in result.output + result.stderr
    assert not (tmp_path / "report.html").exists()
