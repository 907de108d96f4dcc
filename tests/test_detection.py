"""Scoring: network passes counted per setting, maps zero outside the brain, a blob found."""

from __future__ import annotations

import pytest
import torch

from anodiff.config import AnomalyConfig, ModelConfig, RunConfig, SamplerConfig, SchedulerConfig
from anodiff.inference.masks import restrict_to_brain
from anodiff.methods.anomaly.scoring import score_slices
from anodiff.models import build_network


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return build_network(ModelConfig(channels=(8, 8, 8), attention_levels=(False, False, False),
                                     num_head_channels=8, norm_num_groups=8), in_channels=2).eval()


@pytest.mark.parametrize("anomaly,sampler,evals", [
    (AnomalyConfig(t0=20), SamplerConfig(num_inference_steps=4), 4),
    (AnomalyConfig(t0=20), SamplerConfig(num_inference_steps=4, kind="ddpm"), 21),
    (AnomalyConfig(t0=20, extra_t0=(40,), num_draws=2), SamplerConfig(num_inference_steps=4), 16),
])
def test_network_evaluations_per_slice(tiny_net, anomaly, sampler, evals):
    config = RunConfig(scheduler=SchedulerConfig(num_train_timesteps=100), anomaly=anomaly, sampler=sampler)
    slices = torch.rand(3, 2, 16, 16)
    residual, recon, count = score_slices(tiny_net, slices, config, generator=torch.Generator().manual_seed(0))
    assert count == evals
    assert residual.shape == (3, 1, 16, 16) and recon.shape == slices.shape
    assert 0 <= float(residual.min()) and float(residual.max()) <= 1


def test_postprocess_keeps_a_blob_and_zeroes_outside_the_brain():
    score = torch.rand(1, 16, 16, 6) * 0.1
    score[0, 6:10, 6:10, 2:4] = 1.0
    brain = torch.zeros(1, 16, 16, 6)
    brain[0, 2:14, 2:14, :] = 1
    score[0, 0, 0, 0] = 5.0  # outside the brain
    out = restrict_to_brain(score, brain, median_size=3, erosion=1)
    assert out[0, 0, 0, 0] == 0 and out[0, 2, 2, 3] == 0  # outside, and on the eroded rim
    assert out[0, 7:9, 7:9, 2:4].min() > 0.9 > out[0, 3:5, 3:5, :].max()


def test_detect_reports_where_its_time_went(tiny_model, tiny_cohort, tmp_path):
    from anodiff.data.cases import discover
    from anodiff.jobs import detect_cases
    from anodiff.methods import load_model

    case = discover(tiny_cohort).cases[0]
    [outcome] = detect_cases(load_model(tiny_model), [case], lambda c: {"mask": tmp_path / "m.nii.gz"})
    assert outcome.error is None
    parts = [outcome.timings[k] for k in ("preprocess_s", "network_s", "postprocess_s", "write_s")]
    assert all(p > 0 for p in parts) and sum(parts) <= outcome.seconds * 1.01
