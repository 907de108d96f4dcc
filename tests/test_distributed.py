"""torchrun with two CPU processes (gloo): disjoint data, one writer, resume, and a model as good as one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from anodiff.cli.main import app
from tests.conftest import TINY


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "anodiff.cli", "train", *args, "--config", TINY, "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace",
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def two_process_model(tiny_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "model"
    result = torchrun("--data", str(tiny_cohort), "--out", str(out))
    return out, result


def test_two_processes_train_on_disjoint_cases_and_rank_zero_writes(two_process_model, tiny_model):
    out, result = two_process_model
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    first, second = meta["training_data"]["cases_per_process"]
    assert first and second and not set(first) & set(second)
    assert sorted(first + second) == sorted(meta["training_data"]["train_cases"])
    assert meta["training"]["processes"] == 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["checkpoint.safetensors", "model.safetensors"]
    steps = [int(line.split(",")[0]) for line in (out / "log.csv").read_text(encoding="utf-8").splitlines()[1:]]
    assert steps == [5, 10, 15, 20]  # one log, written once
    assert result.stdout.count("model written to") == 1


def test_two_process_model_detects_as_well_as_one_process(two_process_model, tiny_model, tiny_cohort, tmp_path):
    aurocs = {}
    for name, model in (("one", tiny_model), ("two", two_process_model[0])):
        result = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--data", str(tiny_cohort),
                                          "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / name / "report.json").read_text(encoding="utf-8"))
        aurocs[name] = report["methods"]["anodiff"]["auroc_pooled"]
    assert aurocs["two"] >= aurocs["one"] - 0.03, aurocs


def test_two_process_resume_matches_an_uninterrupted_run(two_process_model, tiny_cohort, tmp_path):
    split = tmp_path / "split"
    torchrun("--data", str(tiny_cohort), "--out", str(split), "--steps", "10")
    torchrun("--data", str(tiny_cohort), "--out", str(split), "--steps", "20", "--resume")
    whole = load_file(str(two_process_model[0] / "model.safetensors"))
    parts = load_file(str(split / "model.safetensors"))
    for key in whole:
        np.testing.assert_allclose(parts[key].numpy(), whole[key].numpy(), atol=1e-5)


def test_two_process_detect_writes_what_one_process_writes(tiny_model, tiny_cohort, tmp_path):
    """Sharded detection: each rank takes every other case; masks and maps equal one process's bit for bit,
    and rank 0's summary names every case once."""
    import nibabel as nib

    def detect(nproc: int, out) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                   "-m", "anodiff.cli", "detect", str(tiny_cohort), "--model", str(tiny_model), "--out", str(out),
                   "--device", "cpu"]
        # One thread per process in both runs, as torchrun gives each of several processes.
        result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8",
                                errors="replace", timeout=600,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    detect(1, tmp_path / "one")
    sharded = detect(2, tmp_path / "two")
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    cases = sorted({n.rsplit("_", 1)[0] for n in names})
    assert len(names) == 2 * len(cases) == 12  # a mask and a map per case
    for name in names:
        one, two = nib.load(tmp_path / "one" / name), nib.load(tmp_path / "two" / name)
        assert np.array_equal(np.asarray(one.dataobj), np.asarray(two.dataobj)), name
        assert np.array_equal(one.affine, two.affine) and one.get_data_dtype() == two.get_data_dtype()
    assert [sum(line.startswith(f"{case}:") for line in sharded.stdout.splitlines()) for case in cases] == \
        [1] * len(cases)
