"""The levers of the anomaly map: a normalisation lesions cannot move, residuals standardised by healthy
tissue like them, modalities combined without diluting a lesion."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from anodiff.config import AnomalyConfig, ModelConfig, RunConfig, load_config
from anodiff.data.datasets import brain_patches, mirrored
from anodiff.data.transforms import BRAIN, IMAGE, NormalizeInsideBraind
from anodiff.errors import ConfigError, DataError
from anodiff.inference.standardise import ResidualStats, combine, edge_strength
from anodiff.methods import validate
from anodiff.methods.anomaly.scoring import anomaly_grid, passes_per_input, reconstruct_slices

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def normalised(image: np.ndarray, brain: np.ndarray, how: str) -> np.ndarray:
    item = {IMAGE: MetaTensor(torch.from_numpy(image[None])), BRAIN: MetaTensor(torch.from_numpy(brain[None] * 1.0))}
    return NormalizeInsideBraind((0.5, 99.5), how)(item)[IMAGE][0].numpy()


def tissue(with_lesion: bool, lesion_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 'brain' of three tissues (fluid 40, grey 100, white 130, + noise) and, optionally, a bright lesion (300)
    filling a share of it."""
    rng = np.random.default_rng(0)
    image = np.select([rng.random((40, 40, 20)) < p for p in (0.2, 0.55)], [40.0, 100.0], 130.0)
    image += rng.normal(0, 5, image.shape)
    brain = np.ones(image.shape, bool)
    brain[:2] = False
    lesion = np.zeros(image.shape, bool)
    if with_lesion:
        lesion[2:2 + int(38 * lesion_fraction)] = True
        image[lesion] = 300.0
    return np.where(brain, image, 0).astype(np.float32), brain, lesion


def test_median_normalisation_keeps_healthy_tissue_and_a_bright_lesions_contrast():
    healthy_image, brain, _ = tissue(False)
    lesion_image, _, lesion = tissue(True)
    rest = brain & ~lesion
    for how, moved in (("percentiles", True), ("median", False)):
        before = normalised(healthy_image, brain, how)[rest].mean()
        after = normalised(lesion_image, brain, how)
        # A lesion filling a tenth of the brain darkens the rest of its scan under percentiles, not under the median.
        assert (abs(after[rest].mean() - before) > 0.1) == moved, how
        if how == "median":
            assert after[lesion].mean() - after[rest].mean() > 0.3  # the lesion stands out, not clipped onto its tissue
            assert np.percentile(after[rest], 99) < 0.8


def edge_phantom() -> tuple[torch.Tensor, torch.Tensor]:
    """A reconstruction (1, 32, 32, 4) of flat tissue at 0.4 with a bright stripe (0.9) across it, and healthy
    residuals that are large on the stripe's edges (sharp anatomy, reconstructed loosely) and small elsewhere."""
    recon = torch.full((1, 32, 32, 4), 0.4)
    recon[:, 14:18] = 0.9
    edges = edge_strength(recon, 2)
    noise = torch.from_numpy(np.random.default_rng(1).normal(size=recon.shape).astype(np.float32))
    residual = noise * torch.where(edges > 0.5, 0.2, 0.02)
    return recon, residual


def test_zscore_ranks_a_residual_in_flat_tissue_above_the_same_at_a_bright_edge():
    recon, residual = edge_phantom()
    edges = edge_strength(recon, 2)
    stats = ResidualStats.fit(residual.flatten(1).numpy(), recon.flatten(1).numpy(), edges.flatten(1).numpy())
    test = torch.zeros_like(residual)
    test[0, 13, 5, 1] = 0.3  # at the stripe's edge, where healthy residuals reach 0.2
    test[0, 5, 5, 1] = 0.3  # the same residual in flat tissue, where they reach 0.02
    z = stats.zscores(test, recon, edges)[0].abs()
    assert z[5, 5, 1] > 4 * z[13, 5, 1]
    assert z[5, 5, 1] > 5 > z[13, 5, 1]  # well above flat tissue's spread; within the edge's
    assert ResidualStats.from_dict(stats.to_dict()).zscores(test, recon, edges).equal(stats.zscores(test, recon, edges))


def test_a_zscore_does_not_jump_where_the_reconstruction_crosses_a_band_edge():
    recon, residual = edge_phantom()
    recon = recon + 0.1 * torch.from_numpy(np.random.default_rng(2).random(recon.shape).astype(np.float32))
    edges = edge_strength(recon, 2)
    stats = ResidualStats.fit(residual.flatten(1).numpy(), recon.flatten(1).numpy(), edges.flatten(1).numpy())
    test = torch.full_like(residual, 0.3)
    for edge in stats.intensity_edges[0]:
        below, above = recon.clone(), recon.clone()  # one voxel just either side of a band's edge
        below[0, 5, 5, 1], above[0, 5, 5, 1] = edge - 1e-6, edge + 1e-6
        z_below, z_above = (stats.zscores(test, x, edges)[0, 5, 5, 1] for x in (below, above))
        assert abs(z_above - z_below) < 1e-3 * abs(z_below)


def test_max_over_modalities_keeps_a_lesion_seen_in_one_contrast():
    per_modality = torch.zeros(4, 8, 8, 2)
    per_modality[2, 4, 4, 1] = 1.0  # visible in one contrast of four
    assert combine(per_modality, "max")[0, 4, 4, 1] == 1.0
    assert combine(per_modality, "mean")[0, 4, 4, 1] == 0.25


def test_a_zscore_map_needs_healthy_statistics():
    config = RunConfig(model=ModelConfig(), anomaly=AnomalyConfig(score="zscore", median_size=1, brain_erosion=0))
    grid = {"residual": torch.zeros(2, 8, 8, 3), "reconstruction": torch.zeros(2, 8, 8, 3)}
    with pytest.raises(DataError, match="healthy residual statistics"):
        anomaly_grid(grid, torch.ones(1, 8, 8, 3), config, None)


def test_zscore_map_is_zero_outside_the_brain_and_finds_the_outlier():
    recon, residual = edge_phantom()
    recon, residual = recon.repeat(2, 1, 1, 1), residual.repeat(2, 1, 1, 1)
    edges = edge_strength(recon, 2)
    stats = ResidualStats.fit(residual.flatten(1).numpy(), recon.flatten(1).numpy(), edges.flatten(1).numpy())
    lesion = residual.clone()
    lesion[1, 4:7, 4:7, 1:3] += 0.3  # in the second modality only
    brain = torch.ones(1, 32, 32, 4)
    brain[0, :, 28:] = 0
    config = RunConfig(anomaly=AnomalyConfig(score="zscore", combine="max", median_size=3, brain_erosion=0))
    score = anomaly_grid({"residual": lesion, "reconstruction": recon}, brain, config, stats)[0]
    assert float(score[:, 28:].abs().max()) == 0
    top = np.unravel_index(int(score.argmax()), score.shape)
    assert 4 <= top[0] <= 6 and 4 <= top[1] <= 6 and 1 <= top[2] <= 2


def test_centring_removes_a_whole_scan_offset_and_keeps_the_lesion():
    recon, residual = edge_phantom()
    edges = edge_strength(recon, 2)
    stats = ResidualStats.fit(residual.flatten(1).numpy(), recon.flatten(1).numpy(), edges.flatten(1).numpy())
    scan = residual - 0.03  # a scan darker than the calibration scans everywhere: flat tissue at z ~ -1.5
    scan[0, 4:7, 4:7, 1:3] += 0.15  # and a lesion
    brain = torch.ones(1, 32, 32, 4)
    flat = (edges[0] < 0.5) & (brain[0] > 0)
    flat[4:7, 4:7, 1:3] = False
    maps = {centre: anomaly_grid({"residual": scan, "reconstruction": recon}, brain, RunConfig(
        anomaly=AnomalyConfig(score="zscore", centre=centre, scale=False, median_size=1, brain_erosion=0)), stats)[0]
        for centre in (False, True)}
    assert float(maps[False][flat].median()) > 1.0  # the offset alone scores
    assert float(maps[True][flat].median()) < 0.6 * float(maps[False][flat].median())
    assert float(maps[True][4:7, 4:7, 1:3].min()) > 4 * float(maps[True][flat].median())


def test_scaling_keeps_a_loosely_reconstructed_scan_at_the_calibration_level_and_its_lesion_above():
    recon, residual = edge_phantom()
    edges = edge_strength(recon, 2)
    stats = ResidualStats.fit(residual.flatten(1).numpy(), recon.flatten(1).numpy(), edges.flatten(1).numpy())
    noise = torch.from_numpy(np.random.default_rng(2).normal(size=recon.shape).astype(np.float32))
    loose = noise * torch.where(edges > 0.5, 0.4, 0.04)  # another subject: every residual twice as large
    loose[0, 4:7, 4:7, 1:3] += 0.3  # and a lesion in flat tissue
    brain = torch.ones(1, 32, 32, 4)
    healthy = torch.ones(32, 32, 4, dtype=torch.bool)
    healthy[4:7, 4:7, 1:3] = False
    maps = {scale: anomaly_grid({"residual": loose, "reconstruction": recon}, brain, RunConfig(
        anomaly=AnomalyConfig(score="zscore", scale=scale, median_size=1, brain_erosion=0)), stats)[0]
        for scale in (False, True)}
    threshold = float(np.quantile(np.abs(np.random.default_rng(3).normal(size=100_000)), 0.99))  # 1 % of |N(0,1)|
    flagged = {scale: float((m[healthy] > threshold).float().mean()) for scale, m in maps.items()}
    assert flagged[False] > 0.1  # unscaled, a tenth of the healthy scan crosses a 1 % threshold
    assert flagged[True] < 0.02
    assert float(maps[True][4:7, 4:7, 1:3].median()) > 2 * threshold


def test_calibration_fits_the_healthy_statistics_a_zscore_model_detects_with(tiny_model, tiny_cohort):
    import json

    from anodiff.data.cases import discover
    from anodiff.methods import load_model, method_for
    from anodiff.methods.anomaly.method import residual_stats

    meta = json.loads((tiny_model / "meta.json").read_text(encoding="utf-8"))
    stats = ResidualStats.from_dict(meta["residual_stats"])
    assert stats.std.shape[0] == len(meta["modalities"]) and (stats.std > 0).all()
    model = load_model(tiny_model)
    assert model.config.anomaly.score == "zscore" and residual_stats(model) is not None
    case = next(c for c in discover(tiny_cohort).cases if c.label is not None)
    result = method_for(model.config.model.kind).predict(model, case, threshold=meta["threshold"],
                                                         generator=torch.Generator().manual_seed(0))
    assert result.maps["score"].max() > meta["threshold"] and result.maps["score"][~result.brain].max() == 0


def test_training_patches_lie_on_the_brain_and_repeat_with_the_seed():
    images = torch.rand(6, 2, 40, 40)
    brains = torch.zeros(6, 1, 40, 40)
    brains[:, :, 30:38, 2:9] = 1  # a small brain in a corner: a patch must reach into it
    draw = lambda seed: brain_patches(images, brains, 16, torch.Generator().manual_seed(seed))  # noqa: E731
    patches = draw(0)
    assert patches.shape == (6, 2, 16, 16)
    assert torch.equal(patches, draw(0)) and not torch.equal(patches, draw(1))
    for image, patch in zip(images, patches):  # each patch is a window of its own slice that holds brain
        windows = image.unfold(1, 16, 1).unfold(2, 16, 1)  # (C, 25, 25, 16, 16)
        top, left = (windows[0] == patch[0]).all(-1).all(-1).nonzero()[0].tolist()
        assert brains[0, 0, top:top + 16, left:left + 16].any()


def test_mirroring_flips_left_to_right_the_same_samples_of_every_batch():
    images, masks = torch.rand(64, 2, 8, 6), (torch.rand(64, 1, 8, 6) > 0.5).float()
    flipped_images, flipped_masks = mirrored(torch.Generator().manual_seed(0), images, masks)
    flipped = [i for i in range(64) if not torch.equal(flipped_images[i], images[i])]
    assert 16 < len(flipped) < 48  # about half
    for i in range(64):
        image_was, mask_was = (images[i].flip(1), masks[i].flip(1)) if i in flipped else (images[i], masks[i])
        assert torch.equal(flipped_images[i], image_was) and torch.equal(flipped_masks[i], mask_was)
    assert torch.equal(mirrored(torch.Generator().manual_seed(0), images)[0], flipped_images)
    volumes = torch.rand(4, 1, 5, 6, 7)  # (B, C, X, Y, Z): X, the first spatial axis, is the one mirrored
    assert all(torch.equal(v, w) or torch.equal(v, w.flip(1))
               for v, w in zip(mirrored(torch.Generator().manual_seed(1), volumes)[0], volumes))
    with pytest.raises(ConfigError, match="mirrored latent"):
        validate(load_config(CONFIGS / "ldm2d.yaml", ("train.mirror=true",)))


def test_patch_size_is_checked_against_the_model():
    with pytest.raises(ConfigError, match="at most data.image_size"):
        validate(load_config(CONFIGS / "brats_cpu.yaml", ("train.patch_size=56",)))
    with pytest.raises(ConfigError, match="2D pixel-space"):
        validate(load_config(CONFIGS / "ldm2d.yaml", ("train.patch_size=32",)))
    assert validate(load_config(CONFIGS / "brats_cpu.yaml", ("data.image_size=96", "train.patch_size=48")))


class SeesNoNoise(torch.nn.Module):
    """A denoiser that predicts no noise: its one-step x_0 estimate is x_t / sqrt(alpha_bar), x_0 plus
    noise that follows eps linearly."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x_t)


def test_antithetic_draws_cancel_the_noise_that_a_reconstruction_follows_linearly():
    slices = 0.4 + 0.2 * torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    config = load_config(CONFIGS / "brats_cpu.yaml", ("anomaly.t0=50", "anomaly.antithetic=false"))  # no clipping
    paired = replace(config, anomaly=replace(config.anomaly, antithetic=True))
    error = {name: (reconstruct_slices(SeesNoNoise(), slices, c, generator=torch.Generator().manual_seed(1))
                    - slices).abs().max().item() for name, c in (("single", config), ("antithetic", paired))}
    assert error["single"] > 0.05 and error["antithetic"] < 1e-5, error
    assert passes_per_input(paired) == 2 * passes_per_input(config) == 2
