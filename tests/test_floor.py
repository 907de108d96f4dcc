"""The healthy floor: zones found from the scan itself, SSIM of a reconstruction, and the figures a model keeps."""

from __future__ import annotations

import json

import numpy as np

from anodiff.data.cases import discover
from anodiff.evaluation.floor import ZONES, floor_figures, floor_samples, ssim_map, tissue_zones
from anodiff.io import read_volume


def test_zones_follow_the_anatomy(tiny_cohort):
    case = discover(tiny_cohort).cases[0]
    t1 = read_volume(case.images["t1"])
    brain = t1.data > 0
    zones = tissue_zones(t1.data, brain, t1.spacing_mm, "t1", edge_mm=4.0)
    assert all(zones[name].any() for name in ZONES)
    assert not (zones["white_matter"] & zones["cortex"]).any() and not (zones["brain_edge"] & zones["cortex"]).any()
    assert all(not (mask & ~brain).any() for mask in zones.values())
    assert t1.data[zones["white_matter"]].mean() > t1.data[zones["cortex"]].mean()  # T1: white brighter than grey
    flair = read_volume(case.images["flair"]).data
    by_flair = tissue_zones(flair, brain, t1.spacing_mm, "flair", edge_mm=4.0)
    overlap = (by_flair["white_matter"] & zones["white_matter"]).sum() / zones["white_matter"].sum()
    assert overlap > 0.5  # the contrast's own tissue order finds the same white matter


def test_ssim_is_one_for_a_perfect_reconstruction_and_lower_for_a_noisy_one():
    rng = np.random.default_rng(0)
    image = rng.random((2, 12, 12, 12)).astype(np.float32)
    assert np.allclose(ssim_map(image, image), 1.0)
    noisy = np.clip(image + rng.normal(0, 0.2, image.shape), 0, 1).astype(np.float32)
    assert ssim_map(image, noisy).mean() < 0.9


def test_floor_figures_pool_the_cases():
    zones = {name: np.ones((4, 4, 4), bool) for name in ZONES}
    where = np.zeros((4, 4, 4), bool)
    where[:2] = True
    samples = [floor_samples(np.full((4, 4, 4), value, np.float32), np.ones((4, 4, 4), np.float32), zones, where)
               for value in (0.1, 0.3)]
    figures = floor_figures(samples)
    assert figures["overall"]["voxels"] == 64 and abs(figures["overall"]["score_mean"] - 0.2) < 1e-6
    assert abs(figures["cortex"]["ssim_mean"] - 1.0) < 1e-6


def test_a_trained_model_keeps_its_floor(tiny_model):
    meta = json.loads((tiny_model / "meta.json").read_text(encoding="utf-8"))
    floor = meta["healthy_floor"]["zones"]
    assert set(floor) == set(ZONES) and floor["overall"]["voxels"] == meta["calibration"]["voxels"]
    assert 0 < floor["overall"]["score_p99"] and -1 <= floor["overall"]["ssim_mean"] <= 1
    assert (tiny_model / "healthy_floor.png").is_file()
