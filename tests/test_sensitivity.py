"""The label-free sensitivity check, healthy tissue by margin, noise levels scored apart, and the baselines a
model of another contrast stands beside."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.config import DataConfig, load_config
from anodiff.data.anomalies import KINDS, SIZE_STRATA_ML, changed, insert, plan
from anodiff.data.cases import discover
from anodiff.data.cohort import read_cohort_info
from anodiff.data.datasets import SliceDataset, away_from_label
from anodiff.diffusion.noise import checkerboard
from anodiff.diffusion.sampler import build_scheduler, reconstruct
from anodiff.errors import ConfigError
from anodiff.evaluation.metrics import SIZE_BINS_ML, auroc
from anodiff.inference.standardise import ResidualStats, edge_strength
from anodiff.methods import validate
from anodiff.methods.anomaly.scoring import anomaly_grid, cell_groups, passes_per_input, reconstruct_slices
from anodiff.methods.anomaly.sensitivity import auroc_interval, summarise
from anodiff.training.objectives import DenoisingObjective, random_cells
from tests.conftest import TINY

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def textured_brain(shape=(64, 64, 40)) -> tuple[np.ndarray, np.ndarray]:
    """Two modalities (C, H, W, D) of sharply striped 'tissue' inside an ellipsoid brain (H, W, D)."""
    g = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    brain = ((((g - centre[:, None, None, None]) / (np.array(shape) * 0.45)[:, None, None, None]) ** 2).sum(0)) < 1
    image = np.stack([0.5 + 0.15 * np.sign(np.sin(g[0] / 1.5) * np.cos(g[1] / 2)),
                      0.4 + 0.1 * np.sign(np.cos(g[2] / 1.5))])
    return (image * brain).astype(np.float32), brain


def test_every_kind_and_size_stratum_is_drawn():
    draws = plan(len(KINDS) * len(SIZE_STRATA_ML), np.random.default_rng(0))
    assert {(kind, next(i for i, (lo, hi) in enumerate(SIZE_STRATA_ML) if lo <= ml < hi)) for kind, ml in draws} \
        == {(kind, i) for kind in KINDS for i in range(len(SIZE_STRATA_ML))}


def test_inserted_anomalies_stay_where_they_are_allowed_and_change_only_their_surroundings():
    image, brain = textured_brain()
    allowed = brain.copy()
    allowed[:, :, :12] = False  # e.g. near a lesion
    rng = np.random.default_rng(1)
    out, inserted = insert(image, brain, (2.0, 2.0, 2.0), [(k, 1.5) for k in KINDS], rng, allowed=allowed)
    assert [i.kind for i in inserted] == list(KINDS)
    union = np.any([i.touched for i in inserted], axis=0)
    assert not (np.any([i.mask for i in inserted], axis=0) & ~allowed).any()
    for i in inserted:
        assert 0.2 < i.ml < 12 and i.mask.sum() > 0 and not (i.mask & ~i.touched).any()
    changed_at_all = np.abs(out - image).max(axis=0) > 1e-6
    assert not changed_at_all[:, :, :10].any()  # nothing reaches what is not allowed
    assert not (changed_at_all & ~union).any()  # and every change is some anomaly's


def test_an_anomaly_is_labelled_where_it_changed_the_image_visibly():
    image, brain = textured_brain()
    flat = np.where(brain, 0.5, 0).astype(np.float32)[None]
    blurred = ndimage.gaussian_filter(flat, (0, 2, 2, 2)) * brain
    inner = ndimage.binary_erosion(brain, iterations=6)
    assert not changed(flat, np.where(inner, blurred, flat), brain)[1].any()  # flat tissue blurred: nothing seen
    noisy = flat + np.random.default_rng(0).normal(0, 0.1, flat.shape).astype(np.float32) * inner
    touched, visible = changed(flat, noisy, brain)
    assert visible[inner].mean() > 0.9 and touched[inner].all()  # noise: seen nearly everywhere it was added

    rng = np.random.default_rng(3)
    out, (mass,) = insert(image, brain, (2.0, 2.0, 2.0), [("mass", 8.0)], rng)
    centre = np.argwhere(mass.mask).mean(axis=0)
    reach = np.linalg.norm(np.argwhere(mass.mask) - centre, axis=1).max() * 2.0  # mm
    radius = (3 * 8000 / (4 * np.pi)) ** (1 / 3)
    assert reach > 1.2 * radius  # the tissue it pushed aside is part of it, beyond its iso-intense core


def test_summary_ranks_what_stands_out_and_sees_what_does_not():
    rng = np.random.default_rng(0)
    healthy = [rng.normal(0, 1, 5000).astype(np.float32)]
    found = [("brighter", 2.0, rng.normal(5, 1, 50)), ("mass", 20.0, rng.normal(0, 1, 400)),
             ("darker", 0.2, rng.normal(5, 1, 10))]
    check = summarise(healthy, found, seed=0)
    assert check["kinds"]["brighter"]["auroc"] > 0.99 and abs(check["kinds"]["mass"]["auroc"] - 0.5) < 0.1
    assert check["kinds"]["texture"] == {"count": 0, "auroc": None, "auprc": None}
    assert list(check["sizes"]) == [name for _, _, name in SIZE_BINS_ML]
    assert check["sizes"]["large (>10 ml)"]["count"] == 1 and check["all"]["count"] == 3


def test_the_interval_is_wide_for_a_few_unlike_anomalies_and_narrow_for_many_alike():
    """The bootstrap is over anomalies: its centre is the voxel AUROC itself (same ranks), a kind of three
    anomalies, one missed, is uncertain, and forty found alike are not."""
    rng = np.random.default_rng(1)
    negatives = rng.normal(0, 1, 20_000)
    few = [rng.normal(4, 1, 30), rng.normal(4, 1, 30), rng.normal(0, 1, 30)]
    many = [rng.normal(4, 1, 30) for _ in range(40)]
    truth = np.r_[np.zeros(negatives.size, bool), np.ones(90, bool)]
    (low, high), point = auroc_interval(negatives, few, seed=0), auroc(np.concatenate([negatives, *few]), truth)
    assert low < point < high and high - low > 0.3
    low, high = auroc_interval(negatives, many, seed=0)
    assert low > 0.99 and high - low < 0.01
    alone = auroc(np.r_[negatives, few[0]], truth[:-60])
    assert auroc_interval(negatives, [few[0]], seed=0) == [pytest.approx(alone)] * 2  # one anomaly: no spread


def test_a_trained_model_carries_its_sensitivity_check_into_every_report(tiny_model, tiny_cohort, tmp_path):
    check = json.loads((tiny_model / "meta.json").read_text(encoding="utf-8"))["sensitivity"]
    assert set(check["kinds"]) == set(KINDS) and check["all"]["count"] >= 6
    assert 0 <= check["all"]["auroc"] <= 1 and check["healthy_voxels"] > 500
    low, high = check["all"]["auroc_interval"]
    assert low <= check["all"]["auroc"] <= high
    result = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_model), "--data", str(tiny_cohort), "--out",
                                      str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    summary = (tmp_path / "r" / "summary.md").read_text(encoding="utf-8")
    assert "Sensitivity check" in summary and f"{low:.3f}-{high:.3f}" in summary


# ---------------------------------------------------------------- healthy tissue by margin


def test_tissue_by_margin_keeps_lesion_slices_and_hides_the_tissue_near_the_label(tiny_cohort):
    kinds = read_cohort_info(tiny_cohort)
    glioma = [c for c in discover(tiny_cohort).cases if kinds[c.id].kind == "glioma"]
    cfg = DataConfig(image_size=16)
    slices = SliceDataset(glioma, ("flair", "t1"), cfg, healthy_only=True)
    margin = SliceDataset(glioma, ("flair", "t1"), cfg, healthy_only=True, margin_mm=8.0)
    assert len(margin) > len(slices)  # the lesion's slices, less the tissue near it, are learned from too
    lesion_slices = [margin[i] for i in range(len(margin)) if margin[i]["label"].any()]
    assert lesion_slices
    for item in lesion_slices:
        assert (item["hidden"] >= item["label"] * item["brain"]).all()  # the label is always hidden
        assert 0 < item["hidden"].sum() < item["brain"].sum()


def test_away_from_label_measures_its_margin_in_millimetres():
    brain = torch.ones(1, 20, 20, 20)
    label = torch.zeros(1, 20, 20, 20)
    label[0, 10, 10, 10] = 1
    near = ~away_from_label(brain, label, (1.0, 1.0, 4.0), 6.0)[0]
    assert near[10, 16, 10] and not near[10, 17, 10]  # 6 mm in-plane: 6 voxels of 1 mm
    assert near[10, 10, 11] and not near[10, 10, 12]  # along z: 1 voxel of 4 mm, not 2


class Echo(torch.nn.Module):
    """A 'denoiser' that returns its input: enough for a loss to be computed."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x_t


def test_what_is_hidden_is_neither_seen_nor_learned():
    config = load_config(TINY)
    shown = []

    class Shows(Echo):
        def forward(self, x_t, t):
            shown.append(x_t.clone())
            return x_t

    objective = DenoisingObjective(Shows(), build_scheduler(config.scheduler, "ddpm"), config.scheduler)
    x0 = torch.rand(2, 4, 8, 8) * 2 - 1
    hidden = torch.zeros(2, 1, 8, 8)
    hidden[..., 4:] = 1
    changed = x0.clone()
    changed[..., 4:] = 5.0  # a 'lesion', only where hidden
    loss = lambda batch: objective(batch, generator=torch.Generator().manual_seed(0)).item()  # noqa: E731
    assert loss({"x0": x0, "hidden": hidden}) == pytest.approx(loss({"x0": changed, "hidden": hidden}))
    assert torch.equal(shown[0], shown[1])  # the network was shown the same input: the lesion never reached it
    assert loss({"x0": x0}) != pytest.approx(loss({"x0": changed}))


def test_tissue_by_margin_is_for_2d_pixel_models():
    assert validate(load_config(CONFIGS / "brats_cpu.yaml", ("train.healthy_tissue=margin",)))
    with pytest.raises(ConfigError, match="margin"):
        validate(load_config(CONFIGS / "ldm2d.yaml", ("train.healthy_tissue=margin",)))


# ---------------------------------------------------------------- noise levels scored apart


def test_levels_scored_apart_keep_the_low_levels_sharpness_and_the_high_levels_healing():
    """Two levels, two modalities. The low level keeps healthy anatomy tight (residual 0.01) and heals a small
    lesion but copies a large one; the high level heals both, loosely (0.08). Averaged, the small lesion's residual
    stands on the loose floor; scored apart, on the tight one, and the large lesion is still found."""
    rng = np.random.default_rng(0)
    shape = (2, 32, 32, 8)
    clean = torch.from_numpy(rng.uniform(0.3, 0.7, shape).astype(np.float32))
    small, large = torch.zeros(shape[1:], dtype=torch.bool), torch.zeros(shape[1:], dtype=torch.bool)
    small[4:6, 4:6, 3:5] = True
    large[12:26, 12:26, 1:7] = True
    image = clean.clone()
    image[:, small | large] += 0.3
    low = clean + torch.from_numpy(rng.normal(0, 0.01, shape).astype(np.float32))
    low[:, large] = image[:, large]  # copied
    high = clean + torch.from_numpy(rng.normal(0, 0.08, shape).astype(np.float32))
    config = load_config(CONFIGS / "brats_cpu.yaml", ("anomaly.extra_t0=[300]", "anomaly.centre=false",
                                                      "anomaly.scale=false", "anomaly.median_size=0",
                                                      "anomaly.brain_erosion=0"))
    brain = torch.ones(1, *shape[1:])
    levels = torch.stack([low, high])
    grid = {"residual": image - levels.mean(0), "reconstruction": levels.mean(0),
            "levels_residual": (image[None] - levels).flatten(0, 1), "levels_reconstruction": levels.flatten(0, 1)}
    healthy = ~(small | large).numpy()

    def separation(cfg, residual, reconstruction, lesion):
        flat = lambda v: v.flatten(1).numpy()[:, healthy.ravel()]  # noqa: E731
        stats = ResidualStats.fit(flat(residual), flat(reconstruction), flat(edge_strength(reconstruction, 2)))
        score = anomaly_grid(grid, brain, cfg, stats)[0].numpy()
        return score[lesion.numpy()].mean() / score[healthy].mean()

    apart = replace(config, anomaly=replace(config.anomaly, combine_levels="max"))
    together = {name: separation(config, grid["residual"], grid["reconstruction"], lesion)
                for name, lesion in (("small", small), ("large", large))}
    scored_apart = {name: separation(apart, grid["levels_residual"], grid["levels_reconstruction"], lesion)
                    for name, lesion in (("small", small), ("large", large))}
    assert scored_apart["small"] > 2 * together["small"], (scored_apart, together)
    assert scored_apart["large"] > 2, scored_apart


# ---------------------------------------------------------------- baselines


def test_a_t2_model_stands_beside_the_flair_and_the_t2_thresholds(tiny_cohort, tmp_path):
    model = tmp_path / "t2"
    trained = CliRunner().invoke(app, ["train", "--data", str(tiny_cohort), "--config", TINY, "--out", str(model),
                                       "--device", "cpu", "data.modalities=[t2]", "train.num_steps=5"])
    assert trained.exit_code == 0, trained.output
    assert set(json.loads((model / "meta.json").read_text(encoding="utf-8"))["baseline_thresholds"]) == {"flair", "t2"}
    result = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--data", str(tiny_cohort), "--out",
                                      str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    methods = json.loads((tmp_path / "r" / "report.json").read_text(encoding="utf-8"))["methods"]
    assert set(methods) == {"anodiff", "flair threshold", "t2 threshold"}


# ---------------------------------------------------------------- masked noising


def test_two_checkerboard_groups_tile_the_image():
    shape = (3, 1, 12, 10)
    group = torch.tensor([0, 1, 0])
    offset = torch.tensor([[0, 0], [1, 2], [3, 3]])
    one = checkerboard(shape, 4, group, offset)
    other = checkerboard(shape, 4, 1 - group, offset)
    assert torch.equal(one + other, torch.ones(shape)) and 0.3 < one.mean() < 0.7


def test_masked_noising_fills_each_group_from_the_clean_other_and_costs_twice_the_passes():
    config = load_config(CONFIGS / "brats_cpu.yaml", ("scheduler.noise_cell_px=4", "anomaly.antithetic=false",
                                                      "anomaly.masked_levels=[300]"))
    seen = []

    class Records(torch.nn.Module):  # predicts no noise, and keeps what it was shown
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x_t, t):
            seen.append(x_t.clone())
            return torch.zeros_like(x_t)

    x_0 = torch.rand(1, 2, 8, 8) * 2 - 1
    region = cell_groups(x_0, 4)[0]
    out = reconstruct(Records(), x_0, config.scheduler, config.sampler, t0=100, region=region,
                      generator=torch.Generator().manual_seed(0))
    assert torch.equal(out * (1 - region), x_0 * (1 - region))  # the context is kept exactly
    assert torch.equal(seen[0] * (1 - region), x_0 * (1 - region))  # and shown clean to the network
    assert not torch.equal(out * region, x_0 * region)  # the region was noised
    recon = reconstruct_slices(Records(), (x_0 + 1) / 2, config, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x_0.shape and len(seen) == 1 + 1 + 2  # t0 whole, then the masked level once per group
    plain = replace(config, anomaly=replace(config.anomaly, masked_levels=()))
    assert passes_per_input(config) == 3 * passes_per_input(plain) == 3
    with pytest.raises(ConfigError, match="masked noising"):
        validate(load_config(CONFIGS / "brats_cpu.yaml", ("anomaly.masked_levels=[300]",)))


def test_masked_noising_learns_only_the_noised_group():
    config = load_config(TINY, ("scheduler.noise_cell_px=4",))
    objective = DenoisingObjective(Echo(), build_scheduler(config.scheduler, "ddpm"), config.scheduler)
    x0 = torch.rand(4, 4, 8, 8) * 2 - 1
    replay = torch.Generator().manual_seed(3)  # the draws of forward(): noise, t, then the cells
    torch.randn(x0.shape, generator=replay)
    torch.randint(0, config.scheduler.num_train_timesteps, (4,), generator=replay)
    cells = random_cells(x0, 4, replay)
    elsewhere = torch.where(cells > 0, x0, torch.full_like(x0, 0.9))  # changed only in the clean group
    loss = lambda x: objective({"x0": x}, generator=torch.Generator().manual_seed(3)).item()  # noqa: E731
    assert loss(elsewhere) == pytest.approx(loss(x0))
    assert loss(torch.where(cells > 0, torch.full_like(x0, 0.9), x0)) != pytest.approx(loss(x0))
    for check in ("ldm2d.yaml", "segdiff2d.yaml"):
        with pytest.raises(ConfigError, match="noise_cell_px"):
            validate(load_config(CONFIGS / check, ("scheduler.noise_cell_px=8",)))
