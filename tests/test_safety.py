"""Nothing in a file is ever executed: every loader is handed a planted pickle.

The payload, when unpickled, creates a marker file. Each loader must refuse the
file with one clear anodiff error (or, for MONAI's disk cache, recompute), and
the marker must never appear.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.config import DataConfig, load_config
from anodiff.data.cases import discover
from anodiff.data.cohort import read_cohort_info
from anodiff.data.datasets import volume_dataset
from anodiff.errors import AnodiffError
from anodiff.io import read_volume
from anodiff.methods import load_model
from tests.conftest import TINY

runner = CliRunner()


class Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def planted(tmp_path):
    """(marker path, pickle bytes that create it when loaded)."""
    marker = tmp_path / "PWNED"
    return marker, pickle.dumps(Payload(marker))


def torch_saved(marker: Path, path: Path) -> bytes:
    """A torch.save zip archive carrying the payload: what a .pt 'checkpoint' could hide."""
    torch.save({"weights": torch.zeros(2), "hook": Payload(marker)}, path)
    return path.read_bytes()


def refuses(call, marker: Path) -> str:
    with pytest.raises(AnodiffError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and not marker.exists()
    return message


def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    return folder


@pytest.mark.parametrize("target", ["model.safetensors", "config.yaml", "meta.json"])
def test_model_folder_with_a_pickle_in_it(tiny_model, tmp_path, planted, target):
    marker, payload = planted
    folder = model_copy(tiny_model, tmp_path)
    (folder / target).write_bytes(payload)
    assert target in refuses(lambda: load_model(folder), marker)


def test_model_weights_saved_by_torch_save(tiny_model, tmp_path, planted):
    marker, _ = planted
    folder = model_copy(tiny_model, tmp_path)
    torch_saved(marker, folder / "model.safetensors")
    refuses(lambda: load_model(folder), marker)


def test_yaml_with_a_python_tag_is_not_constructed(tiny_model, tmp_path, planted):
    marker, _ = planted
    tag = f"!!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n"
    folder = model_copy(tiny_model, tmp_path)
    (folder / "config.yaml").write_text(f"model: {tag}", encoding="utf-8")
    refuses(lambda: load_model(folder), marker)
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"train: {tag}", encoding="utf-8")
    refuses(lambda: load_config(recipe), marker)
    refuses(lambda: load_config(None, [f"train.lr={tag.strip()}"]), marker)


def test_recipe_that_is_a_pickle(tmp_path, planted):
    marker, payload = planted
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(payload)
    refuses(lambda: load_config(recipe), marker)


def test_resume_from_a_planted_checkpoint(tiny_cohort, tiny_model, tmp_path, planted):
    marker, _ = planted
    folder = model_copy(tiny_model, tmp_path)
    torch_saved(marker, folder / "checkpoint.safetensors")
    result = runner.invoke(app, ["train", "--data", str(tiny_cohort), "--config", TINY, "--out", str(folder),
                                 "--resume"])
    assert result.exit_code == 2 and "unreadable checkpoint" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.output and not marker.exists()


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz", "scan.mha", "scan.nrrd"])
def test_image_that_is_a_pickle(tmp_path, planted, name):
    marker, payload = planted
    path = tmp_path / name
    path.write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    assert name in refuses(lambda: read_volume(path), marker)


def test_datalist_and_cohort_file_that_are_pickles(tmp_path, planted):
    marker, payload = planted
    datalist = tmp_path / "datalist.json"
    datalist.write_bytes(payload)
    refuses(lambda: discover(datalist), marker)
    (tmp_path / "cohort.json").write_bytes(payload)
    refuses(lambda: read_cohort_info(tmp_path), marker)


def test_planted_disk_cache_is_recomputed_not_run(tiny_cohort, tmp_path, planted):
    marker, _ = planted
    cases = [c for c in discover(tiny_cohort).cases][:1]
    cfg = DataConfig(image_size=16, cache_dir=tmp_path / "cache")
    first = volume_dataset(cases, ("flair",), cfg, with_label=False)[0]["image"]
    [cached] = list((tmp_path / "cache").glob("*.pt"))
    os.replace(cached, tmp_path / "good.pt")
    torch_saved(marker, cached)
    with pytest.warns(UserWarning, match="Corrupt cache file"):
        again = volume_dataset(cases, ("flair",), cfg, with_label=False)[0]["image"]
    assert torch.equal(torch.as_tensor(first), torch.as_tensor(again)) and not marker.exists()
