"""Latent diffusion: stage-1 losses, the latent space and its scale factor, both stages end to end, resume, 3D."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.config import AutoencoderConfig
from anodiff.data.cohort import write_cohort
from anodiff.diffusion.spaces import LatentSpace, latent_scale_factor
from anodiff.methods import load_model
from anodiff.models import build_autoencoder, build_discriminator
from anodiff.training.objectives import AutoencoderObjective
from tests.conftest import TINY, TINY_LDM

runner = CliRunner()

SMALL_AE = AutoencoderConfig(channels=(8, 16), norm_num_groups=8, discriminator_layers=1, discriminator_channels=8,
                             adversarial_start=5)


def train(data, out, *extra: str):
    result = runner.invoke(app, ["train", "--data", str(data), "--config", TINY, "--out", str(out), "--device", "cpu",
                                 *extra])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("kind", ["kl", "vq"])
@pytest.mark.parametrize("dims", [2, 3])
def test_stage_one_loss_trains_autoencoder_and_discriminator_after_warm_up(kind, dims):
    cfg = AutoencoderConfig(**{**SMALL_AE.__dict__, "kind": kind})
    torch.manual_seed(0)
    pair = AutoencoderObjective(build_autoencoder(cfg, spatial_dims=dims, in_channels=2),
                                build_discriminator(cfg, spatial_dims=dims, in_channels=2), cfg)
    loss_fn = pair
    batch = {"x0": torch.rand(2, 2, *[16] * dims)}
    for step, adversary_on in ((0, False), (cfg.adversarial_start, True)):
        pair.zero_grad(set_to_none=True)
        loss = loss_fn(batch, generator=torch.Generator().manual_seed(step), step=step)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None for p in pair.autoencoder.encoder.parameters())
        discriminator_grads = [p.grad for p in pair.discriminator.parameters()]
        assert all(g is not None for g in discriminator_grads) == adversary_on
        assert all(g is None for g in discriminator_grads) != adversary_on


def test_generator_term_does_not_train_the_discriminator():
    """The adversary's weights get only the discriminator's own loss: the same as training it alone."""
    torch.manual_seed(0)
    ae = build_autoencoder(SMALL_AE, spatial_dims=2, in_channels=1)
    disc = build_discriminator(SMALL_AE, spatial_dims=2, in_channels=1)
    pair = AutoencoderObjective(ae, disc, SMALL_AE)
    batch = {"x0": torch.rand(2, 1, 16, 16)}
    loss = pair(batch, generator=torch.Generator().manual_seed(0), step=99)
    loss.backward()
    combined = [p.grad.clone() for p in disc.parameters()]

    from monai.losses import PatchAdversarialLoss

    disc.zero_grad(set_to_none=True)
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    with torch.no_grad():
        z_mu, z_sigma = ae.encode(batch["x0"])
        eps = torch.randn(z_mu.shape, generator=torch.Generator().manual_seed(0))
        recon = ae.decode(z_mu + z_sigma * eps)
    alone = SMALL_AE.adversarial_weight * 0.5 * (
        adversarial(disc(recon)[-1], target_is_real=False, for_discriminator=True)
        + adversarial(disc(batch["x0"])[-1], target_is_real=True, for_discriminator=True))
    alone.backward()
    for a, b in zip(combined, (p.grad for p in disc.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_latent_scale_factor_gives_unit_variance():
    latents = torch.randn(64, 3, 4, 4) * 4.0 + 1.0
    scale = latent_scale_factor(latents)
    assert scale == pytest.approx(0.25, rel=0.05)
    assert float((latents * scale).std()) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="zero variance"):
        latent_scale_factor(torch.ones(4, 3, 2, 2))


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_latent_space_shapes_and_determinism(kind):
    cfg = AutoencoderConfig(**{**SMALL_AE.__dict__, "kind": kind})
    space = LatentSpace(build_autoencoder(cfg, spatial_dims=2, in_channels=4), 2.0, kind)
    images = torch.rand(3, 4, 16, 16)
    z = space.encode(images)
    assert z.shape == (3, cfg.latent_channels, 8, 8)
    assert torch.equal(z, space.encode(images))  # the posterior mean, not a sample
    decoded = space.decode(z)
    assert decoded.shape == images.shape and 0 <= float(decoded.min()) <= float(decoded.max()) <= 1


def test_ldm_model_folder_holds_both_stages(ldm_model):
    names = {p.name for p in ldm_model.iterdir()}
    assert {"model.safetensors", "autoencoder.safetensors", "meta.json", "config.yaml"} <= names
    meta = json.loads((ldm_model / "meta.json").read_text(encoding="utf-8"))
    assert meta["kind"] == "ldm" and meta["latent_scale_factor"] > 0
    assert 0 < meta["autoencoder"]["heldout_l1_brain"] < 1
    assert meta["autoencoder"]["training"]["steps"] == 20 and meta["autoencoder"]["training"]["samples_per_s"] > 0
    assert (ldm_model / "autoencoder" / "reconstructions.png").is_file()
    assert {p.name for p in (ldm_model / "samples").glob("*.png")} >= {"0000020.png", "0000020_generated.png"}
    model = load_model(ldm_model)
    assert isinstance(model.space, LatentSpace) and model.space.scale_factor == meta["latent_scale_factor"]


def test_both_stages_resume_to_the_uninterrupted_model(ldm_model, tiny_cohort, tmp_path):
    """Stage 1 stopped at 10 of 20 steps, then both stages resumed: the same autoencoder and denoiser."""
    split = tmp_path / "split"
    train(tiny_cohort, split, *TINY_LDM, "--steps", "10")
    resumed = train(tiny_cohort, split, *TINY_LDM, "--steps", "20", "--resume")
    assert "training on" in resumed.output
    for name in ("autoencoder.safetensors", "model.safetensors"):
        whole, parts = load_file(str(ldm_model / name)), load_file(str(split / name))
        for key in whole:
            np.testing.assert_allclose(parts[key].numpy(), whole[key].numpy(), atol=1e-5, err_msg=f"{name} {key}")
    meta = [json.loads((run / "meta.json").read_text(encoding="utf-8")) for run in (ldm_model, split)]
    assert meta[0]["latent_scale_factor"] == pytest.approx(meta[1]["latent_scale_factor"], rel=1e-5)


def test_finished_stage_one_is_skipped(ldm_model, tiny_cohort, tmp_path):
    import shutil

    again = tmp_path / "again"
    shutil.copytree(ldm_model, again)
    for name in ("model.safetensors", "checkpoint.safetensors", "meta.json"):
        (again / name).unlink()
    stamp = (again / "autoencoder.safetensors").stat().st_mtime_ns
    result = train(tiny_cohort, again, *TINY_LDM, "--resume")
    assert "not trained again" in " ".join(result.output.split())  # a long path may wrap the log line
    assert (again / "autoencoder.safetensors").stat().st_mtime_ns == stamp
    refused = runner.invoke(app, ["train", "--data", str(tiny_cohort), "--config", TINY, "--out", str(again),
                                  "--resume", *TINY_LDM, "autoencoder.latent_channels=4"])
    assert refused.exit_code == 2 and "other autoencoder or data settings" in refused.stderr


@pytest.mark.parametrize("kind", ["ldm", "ddpm"])
def test_tiny_3d_model_detects_on_the_input_grid(kind, tiny_cohort, tmp_path):
    healthy = tmp_path / "healthy"
    write_cohort(healthy, 4, seed=1, healthy_only=True, spacing_mm=4.0)
    settings = (TINY_LDM if kind == "ldm" else ["model.channels=[16,16]", "model.attention_levels=[false,false]"])
    out = tmp_path / "model3d"
    train(healthy, out, *settings, "model.spatial_dims=3", "train.val_fraction=0.25", "train.batch_size=2",
          "autoencoder.batch_size=2")
    case = sorted(p for p in tiny_cohort.iterdir() if p.is_dir())[0]
    result = runner.invoke(app, ["detect", str(case), "--model", str(out), "--out", str(tmp_path / "m.nii.gz"),
                                 "--map", str(tmp_path / "map.nii.gz")])
    assert result.exit_code == 0, result.output
    source = nib.load(next(case.glob("*_flair.nii.gz")))
    score = nib.load(tmp_path / "map.nii.gz")
    assert score.shape == source.shape and np.asarray(score.dataobj).max() > 0
