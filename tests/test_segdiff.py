"""SegDiff: conditioning shapes, seeded sampling, learning a lesion from its image, and train -> detect -> evaluate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.config import RunConfig, load_config, region_labels
from anodiff.diffusion.sampler import build_scheduler
from anodiff.diffusion.spaces import to_model_range
from anodiff.errors import ConfigError
from anodiff.evaluation.segmentation import border_zones, region_masks
from anodiff.methods.segdiff.prediction import sample_slices
from anodiff.models import build_network
from anodiff.training.loop import fit
from anodiff.training.objectives import DenoisingObjective
from tests.conftest import SEGDIFF_TINY


def tiny_segdiff(**train) -> RunConfig:
    config = load_config(SEGDIFF_TINY, ["scheduler.prediction_type=sample"])
    return replace(config, train=replace(config.train, **train))


def disks(count: int, generator: torch.Generator, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 1, S, S): a dim textured square with a bright disk at a random place; masks (B, 1, S, S)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(4, size - 4, (count, 2), generator=generator)
    radii = 2 + 2 * torch.rand(count, generator=generator)
    masks = ((ys - centres[:, 0, None, None]) ** 2 + (xs - centres[:, 1, None, None]) ** 2
             <= radii[:, None, None] ** 2).float()[:, None]
    images = 0.3 + 0.1 * torch.rand((count, 1, size, size), generator=generator) + 0.5 * masks
    return images, masks


def test_conditioning_shapes():
    """The denoiser sees R mask channels joined with C image channels and predicts R; samples are (N, B, R, H, W)."""
    config = load_config(SEGDIFF_TINY, ["segmentation.regions=[whole, core]"])
    network = build_network(config.model, in_channels=2 + 3, out_channels=2)
    objective = DenoisingObjective(network, build_scheduler(config.scheduler, "ddpm"), config.scheduler)
    images = torch.rand(4, 3, 16, 16)
    masks = (torch.rand(4, 2, 16, 16) > 0.8).float()
    loss = objective({"x0": to_model_range(masks), "condition": to_model_range(images)},
                     generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(RuntimeError):  # an image with the wrong number of modalities does not fit
        objective({"x0": to_model_range(masks), "condition": torch.rand(4, 2, 16, 16)})
    drawn = sample_slices(network.eval(), images, config, samples=3, generator=torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 4, 2, 16, 16)
    assert 0 <= float(drawn.min()) and float(drawn.max()) <= 1


def test_sampling_is_fixed_by_the_seed():
    config = load_config(SEGDIFF_TINY, ["sampler.eta=1"])  # even with fresh noise at every step
    torch.manual_seed(0)
    network = build_network(config.model, in_channels=1 + 2, out_channels=1).eval()
    images = torch.rand(2, 2, 16, 16)

    def draw(seed: int) -> torch.Tensor:
        return sample_slices(network, images, config, samples=2, generator=torch.Generator().manual_seed(seed))

    first, again, other = draw(3), draw(3), draw(4)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first[0], first[1])  # the samples of one image differ from each other


def test_segdiff_learns_where_the_lesion_is(tmp_path):
    """A few hundred steps on disks: the sampled masks outline disks it never saw (Dice well above chance)."""
    config = tiny_segdiff(num_steps=250, batch_size=16, lr=2e-3, ema_decay=0.9, sample_every=0, checkpoint_every=1000)
    torch.manual_seed(0)
    network = build_network(config.model, in_channels=2, out_channels=1)
    objective = DenoisingObjective(network, build_scheduler(config.scheduler, "ddpm"), config.scheduler)

    def batch(generator: torch.Generator) -> dict:
        images, masks = disks(16, generator)
        return {"x0": to_model_range(masks), "condition": to_model_range(images)}

    trained, _ = fit(objective, batch, config.train, tmp_path, device=torch.device("cpu"))
    images, masks = disks(8, torch.Generator().manual_seed(999))
    drawn = sample_slices(trained.network, images, config, samples=3, generator=torch.Generator().manual_seed(0))
    fused = drawn.mean(0) > 0.5
    dice = 2 * (fused & (masks > 0)).sum() / (fused.sum() + masks.sum())
    assert dice > 0.7, f"Dice {float(dice):.3f}"


def test_regions_from_labels():
    assert region_labels("whole") == (1, 2, 3, 4) and region_labels("1+4") == (1, 4)
    with pytest.raises(ConfigError, match="neither"):
        region_labels("tumour")
    with pytest.raises(ConfigError, match="neither"):
        load_config(SEGDIFF_TINY, ["segmentation.regions=[whole, 0+1]"])
    label = np.array([0, 1, 2, 3, 4])
    masks = region_masks(label, tuple(region_labels(r) for r in ("whole", "core", "enhancing")))
    assert masks.astype(int).tolist() == [[0, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]]


def test_border_zones_split_the_brain():
    brain = np.ones((30, 30), bool)
    yy, xx = np.indices(brain.shape)
    truth = (yy - 15) ** 2 + (xx - 15) ** 2 <= 64
    zones = border_zones(truth, brain, width=2)
    assert sum(z.astype(int) for z in zones.values()).max() == 1  # disjoint
    assert (zones["border"] | zones["inside"] | zones["outside"]).all()  # and covering the brain
    assert zones["inside"].sum() > 0 and not (zones["inside"] & ~truth).any()
    assert not (zones["outside"] & truth).any()


def test_train_detect_evaluate(segdiff_model, tiny_cohort, tmp_path):
    meta = json.loads((segdiff_model / "meta.json").read_text(encoding="utf-8"))
    assert meta["kind"] == "segdiff" and meta["training_data"]["num_lesion_slices"] > 0
    assert (segdiff_model / "reference.safetensors").is_file()
    case = tiny_cohort / "synth_000_0000"
    flair = nib.load(case / "synth_000_0000_flair.nii.gz")
    result = CliRunner().invoke(app, ["detect", str(case), "--model", str(segdiff_model), "--out",
                                      str(tmp_path / "mask.nii.gz"), "--map", str(tmp_path / "p.nii.gz"),
                                      "--uncertainty", str(tmp_path / "u.nii.gz"), "--samples", "4"])
    assert result.exit_code == 0, result.output
    mask, prob, spread = (nib.load(tmp_path / n) for n in ("mask.nii.gz", "p.nii.gz", "u.nii.gz"))
    for image in (mask, prob, spread):
        assert image.shape == flair.shape and np.allclose(image.affine, flair.affine)
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(mask.get_fdata())) <= {0, 1}
    assert prob.get_data_dtype() == np.float32 and 0 <= prob.get_fdata().min() and prob.get_fdata().max() <= 1
    assert 0 <= spread.get_fdata().min() and spread.get_fdata().max() <= 0.5 + 1e-6  # std of values in [0, 1]
    assert ((mask.get_fdata() > 0) == (prob.get_fdata() > 0.5)).mean() > 0.99  # the mask is the fused probability

    report_dir = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(segdiff_model), "--data", str(tiny_cohort),
                                      "--out", str(report_dir), "--samples", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    assert list(report["methods"]) == ["SegDiff (3 samples)", "SegDiff (1 sample)", "UNet reference"]
    whole = report["methods"]["SegDiff (3 samples)"]["whole"]
    assert 0 <= whole["dice_pooled"] <= 1 and 0 <= whole["auroc_pooled"] <= 1
    assert len(report["dice_by_samples"]["dice_per_volume_mean"]) == 3
    assert set(report["uncertainty_by_zone"]["whole"]) == {"border", "inside", "outside"}
    assert (report_dir / "summary.md").read_text(encoding="utf-8").count("| SegDiff") == 2
    assert len(list((report_dir / "overlays").glob("*_montage.png"))) == report["num_cases"]
    assert len(list((report_dir / "overlays").glob("*.png"))) == 2 * report["num_cases"]
    assert (report_dir / "figures" / "dice_by_samples.png").is_file()


def test_evaluate_draws_masks_with_the_sampler_settings_it_is_given(segdiff_model, tiny_cohort, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", "--model", str(segdiff_model), "--data", str(tiny_cohort),
                                      "--out", str(tmp_path / "r"), "--samples", "1", "sampler.kind=ddim_t0",
                                      "sampler.num_inference_steps=1"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))
    assert report["network_evals_per_slice_and_sample"] == 1 and report["sampler"]["kind"] == "ddim_t0"
    refused = CliRunner().invoke(app, ["evaluate", "--model", str(segdiff_model), "--data", str(tiny_cohort),
                                       "--out", str(tmp_path / "r2"), "anomaly.t0=50"])
    assert refused.exit_code == 2 and "sampler.* settings" in refused.output


def test_detect_options_follow_the_model_kind(segdiff_model, tiny_model, tiny_cohort, tmp_path):
    case = str(tiny_cohort / "synth_000_0000")
    result = CliRunner().invoke(app, ["detect", case, "--model", str(tiny_model), "--out", str(tmp_path / "m.nii.gz"),
                                      "--samples", "3"])
    assert result.exit_code != 0 and "segdiff" in result.output
    result = CliRunner().invoke(app, ["detect", case, "--model", str(tiny_model), "--out", str(tmp_path / "m.nii.gz"),
                                      "--uncertainty", str(tmp_path / "u.nii.gz")])
    assert result.exit_code != 0 and "segdiff" in result.output and not (tmp_path / "m.nii.gz").exists()


def test_several_regions_write_a_label_map_and_one_map_per_region(tiny_cohort, tmp_path):
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_cohort), "--config", SEGDIFF_TINY, "--out",
                                      str(out), "--device", "cpu", "--steps", "4", "segmentation.reference=false",
                                      "segmentation.regions=[whole, core]"])
    assert result.exit_code == 0, result.output
    assert not (out / "reference.safetensors").exists()
    result = CliRunner().invoke(app, ["detect", str(tiny_cohort / "synth_000_0000"), "--model", str(out), "--out",
                                      str(tmp_path / "seg.nii.gz"), "--uncertainty", str(tmp_path / "u.nii.gz"),
                                      "--threshold", "0.2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "u_whole.nii.gz").is_file() and (tmp_path / "u_core.nii.gz").is_file()
    assert set(np.unique(nib.load(tmp_path / "seg.nii.gz").get_fdata())) <= {0, 1, 2}


def test_segdiff_needs_labels(tiny_cohort, tmp_path):
    data = tmp_path / "unlabelled"
    case = data / "synth_000_0000"
    case.mkdir(parents=True)
    for path in (tiny_cohort / "synth_000_0000").glob("*"):
        if "_seg" not in path.name:
            (case / path.name).symlink_to(path)
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--config", SEGDIFF_TINY, "--out",
                                      str(tmp_path / "m"), "--device", "cpu"])
    assert result.exit_code == 2 and "labelled" in result.output


def test_slice_dataset_gives_one_channel_per_region(tiny_cohort):
    from anodiff.config import DataConfig
    from anodiff.data.cases import discover
    from anodiff.data.datasets import SliceDataset

    glioma = [c for c in discover(tiny_cohort).cases if c.id == "synth_000_0000"]
    cfg = DataConfig(image_size=16)
    regions = tuple(region_labels(r) for r in ("whole", "core", "enhancing"))
    split = SliceDataset(glioma, ("flair", "t1"), cfg, healthy_only=False, regions=regions)
    plain = SliceDataset(glioma, ("flair", "t1"), cfg, healthy_only=False)
    lesion = split.lesion_indices()
    assert lesion and len(split) == len(plain)
    for index in lesion:
        whole, core, enhancing = split[index]["label"]
        assert torch.equal(whole, plain[index]["label"][0])
        assert bool((core <= whole).all()) and bool((enhancing <= core).all())
    assert sum(float(split[i]["label"][2].sum()) for i in lesion) > 0  # the enhancing ring is there


def test_resumed_training_equals_the_uninterrupted_run(tiny_cohort, tmp_path):
    """10 steps, then --resume to 20, gives the weights of 20 steps in one go, for SegDiff and its UNet."""
    from safetensors.torch import load_file

    def train(out: Path, steps: int, *extra: str) -> None:
        result = CliRunner().invoke(app, ["train", "--data", str(tiny_cohort), "--config", SEGDIFF_TINY, "--out",
                                          str(out), "--device", "cpu", "--steps", str(steps), *extra])
        assert result.exit_code == 0, result.output

    train(tmp_path / "once", 20)
    train(tmp_path / "twice", 10)
    train(tmp_path / "twice", 20, "--resume")
    for name in ("model.safetensors", "reference.safetensors"):
        once, twice = load_file(tmp_path / "once" / name), load_file(tmp_path / "twice" / name)
        assert once.keys() == twice.keys()
        for key in once:
            torch.testing.assert_close(once[key], twice[key], atol=1e-5, rtol=0)


def test_the_denoiser_trains_only_below_train_t_max():
    """Every timestep the objective draws is below scheduler.train_t_max; without it the whole range is drawn."""
    config = load_config(SEGDIFF_TINY)
    seen: list[torch.Tensor] = []

    def network(x_t, t):
        seen.append(t)
        return torch.zeros_like(x_t, requires_grad=True)

    for t_max in (None, 40):
        scheduler_cfg = replace(config.scheduler, train_t_max=t_max)
        objective = DenoisingObjective(network, build_scheduler(scheduler_cfg, "ddpm"), scheduler_cfg)
        seen.clear()
        for seed in range(20):
            objective({"x0": torch.rand(32, 1, 8, 8)}, generator=torch.Generator().manual_seed(seed))
        drawn = torch.cat(seen)
        limit = t_max or config.scheduler.num_train_timesteps
        assert int(drawn.max()) < limit and int(drawn.max()) >= 0.9 * limit  # the whole allowed range, no more
