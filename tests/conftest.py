"""Shared fixtures: tiny NIfTI volumes with non-identity affines, and a tiny synthetic cohort."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

# Under pytest-xdist (`make test`) the workers share the cores: each runs torch, and the commands it starts, on
# its share of them, so that workers do not oversubscribe the cores (several times slower on two).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _threads
    torch.set_num_threads(int(_threads))

# An oblique affine: rotated about z and x, anisotropic voxels, a flipped axis.
TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
SEGDIFF_TINY = str(Path(__file__).resolve().parents[1] / "configs" / "segdiff_tiny.yaml")
# The tiny latent diffusion model: configs/tiny.yaml with these overrides.
TINY_LDM = ["model.kind=ldm", "model.channels=[16,16]", "model.attention_levels=[false,false]",
            "autoencoder.channels=[8,16]", "autoencoder.norm_num_groups=8", "autoencoder.num_steps=20",
            "autoencoder.batch_size=8", "autoencoder.lr=1e-3", "autoencoder.adversarial_start=10",
            "autoencoder.discriminator_layers=1", "autoencoder.discriminator_channels=8"]

_c, _s = np.cos(0.3), np.sin(0.3)
OBLIQUE_AFFINE = np.array(
    [[-1.2 * _c, -0.9 * _s, 0.0, 40.0],
     [1.2 * _s, -0.9 * _c * 0.98, 0.2, -30.0],
     [0.0, 0.18, 2.5, 12.0],
     [0.0, 0.0, 0.0, 1.0]]
)


def brain_phantom(shape=(20, 24, 16), *, seed: int = 0, lesion: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoidal 'brain' (positive inside, 0 outside) and, optionally, a bright blob label."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    radius = np.array(shape) * 0.4
    rho = np.sqrt((((grid - centre[:, None, None, None]) / radius[:, None, None, None]) ** 2).sum(0))
    brain = rho < 1
    image = np.where(brain, 100 + 20 * rng.random(shape), 0)
    label = np.zeros(shape, np.uint8)
    if lesion:
        blob = np.sqrt(((grid - (centre + [2, 2, 1])[:, None, None, None]) ** 2).sum(0)) < 3
        label[blob & brain] = 1
        image[blob & brain] += 150
    return image.astype(np.float32), label


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = OBLIQUE_AFFINE, dtype=None) -> Path:
    img = nib.Nifti1Image(data if dtype is None else data.astype(dtype), affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A 6-case synthetic cohort at 4 mm (two healthy, one of each lesion kind)."""
    from anodiff.data.cohort import write_cohort

    out = tmp_path_factory.mktemp("cohort") / "synth"
    write_cohort(out, 6, seed=0, spacing_mm=4.0)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The four real BraTS cases beside the project (../shared/data), skipped where absent."""
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats2015-sample"
    if not root.is_dir():
        pytest.skip("../shared/data/brats2015-sample is not beside this checkout")
    return root


def trained_by_cli(data: Path, out: Path, config: str, *overrides: str) -> Path:
    """``anodiff train`` of ``config`` (with ``overrides``) on ``data`` into ``out``, on the CPU."""
    from typer.testing import CliRunner

    from anodiff.cli.main import app

    result = CliRunner().invoke(app, ["train", "--data", str(data), "--config", config, "--out", str(out),
                                      "--device", "cpu", *overrides])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_cohort, tmp_path_factory) -> Path:
    """A ddpm model folder trained with configs/tiny.yaml on the tiny cohort (seconds)."""
    return trained_by_cli(tiny_cohort, tmp_path_factory.mktemp("runs") / "tiny", TINY)


@pytest.fixture(scope="session")
def ldm_model(tiny_cohort, tmp_path_factory) -> Path:
    """A latent diffusion model folder: configs/tiny.yaml with :data:`TINY_LDM`."""
    return trained_by_cli(tiny_cohort, tmp_path_factory.mktemp("ldm") / "ldm", TINY, *TINY_LDM)


@pytest.fixture(scope="session")
def segdiff_model(tiny_cohort, tmp_path_factory) -> Path:
    """A segdiff model folder (with its UNet reference) trained with configs/segdiff_tiny.yaml."""
    return trained_by_cli(tiny_cohort, tmp_path_factory.mktemp("runs") / "segdiff", SEGDIFF_TINY)
