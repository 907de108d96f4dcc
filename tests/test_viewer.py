"""The report's 3D viewer: each case's volumes embedded in report.html with NiiVue, nothing fetched; and, where a
Chromium is installed, the page drawn headless shows the map's colours over the scan."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.evaluation.viewer import VIEWER_SIZE

CHROMIUM = next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


@pytest.fixture(scope="module")
def report(tiny_model, tiny_cohort, tmp_path_factory):
    """``anodiff evaluate`` of the tiny model on two lesion cases: the report folder."""
    root = tmp_path_factory.mktemp("viewer")
    data = root / "data"
    data.mkdir()
    for name in ("synth_000_0000", "synth_000_0004"):
        (data / name).symlink_to(tiny_cohort / name)
    result = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_model), "--data", str(data), "--out",
                                      str(root / "report")])
    assert result.exit_code == 0, result.output
    return root / "report"


def layers(page: str) -> list[list[dict]]:
    return [json.loads(block) for block in re.findall(r"<script type='application/json' id='layers-\d+'>(.*?)"
                                                       r"</script>", page, re.S)]


def test_every_case_gets_its_volumes_inline_and_nothing_is_fetched(report):
    page = (report / "report.html").read_text(encoding="utf-8")
    found = layers(page)
    assert len(found) == 2 and "niivue" in page and "anodiffOpen" in page
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # opens offline
    methods = json.loads((report / "report.json").read_text(encoding="utf-8"))["methods"]
    threshold = methods["anodiff"]["threshold_calibrated"]
    assert found[0][1]["threshold"] == pytest.approx(min(threshold, found[0][1]["top"]))  # starts as the mask
    names = [layer["label"] for layer in found[0]]
    assert names == ["scan", "anomaly map", "truth", "anodiff", "flair threshold"]
    for layer in found[0]:
        volume = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(layer["url"].split(",", 1)[1])))
        assert volume.get_data_dtype() == np.uint8 and max(volume.shape) <= VIEWER_SIZE
    truth = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(found[0][2]["url"].split(",", 1)[1])))
    assert np.asanyarray(truth.dataobj).any()  # the lesion is there to be seen

    result = CliRunner().invoke(app, ["report", str(report)])  # redrawn from the kept volumes
    assert result.exit_code == 0, result.output
    assert layers((report / "report.html").read_text(encoding="utf-8")) == found


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to draw the page (Debian: apt install chromium)")
def test_the_viewer_draws_the_map_over_the_scan_in_a_headless_browser(report, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--use-angle=swiftshader",
                    "--enable-unsafe-swiftshader", "--window-size=1200,5000", "--virtual-time-budget=20000",
                    f"--screenshot={shot}", (report / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=180)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    black = np.flatnonzero((pixels.sum(2) < 30).mean(1) > 0.9)  # rows of the open viewer's black background
    assert black.size and black.max() - black.min() > 300, "no viewer canvas on the page"
    canvas = pixels[black.min():black.max()]
    red, green, blue = canvas[..., 0], canvas[..., 1], canvas[..., 2]
    grey = np.abs(red - green) + np.abs(green - blue) < 20
    coloured = (red > 150) & (blue < 100) & ~grey  # the map's warm colours (and the masks') over the scan
    assert coloured.sum() > 500, f"{coloured.sum()} coloured pixels: the overlay was not drawn"
