"""Noise, schedulers and reconstruction from partial noise."""

from __future__ import annotations

import pytest
import torch

from anodiff.config import ModelConfig, SamplerConfig, SchedulerConfig
from anodiff.diffusion.noise import make_noise
from anodiff.diffusion.sampler import build_scheduler, reconstruct, timesteps_from
from anodiff.models import build_network

CFG = SchedulerConfig(num_train_timesteps=100)


def oracle(scheduler, target: torch.Tensor):
    """A denoiser that predicts the eps which leads back to ``target``."""

    def denoise(x_t, t):
        alpha = scheduler.alphas_cumprod[t].view(-1, *([1] * (x_t.ndim - 1)))
        return (x_t - alpha.sqrt() * target) / (1 - alpha).sqrt()

    return denoise


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_add_noise_at_t0_is_identity_and_oracle_ddim_recovers_x0(spatial_dims):
    x_0 = torch.rand((2, 3) + (8,) * spatial_dims) * 2 - 1
    scheduler = build_scheduler(CFG, "ddim")
    noisy = scheduler.add_noise(x_0, torch.randn_like(x_0), torch.zeros(2, dtype=torch.long))
    assert (noisy - x_0).std() < 0.05  # t = 0 is (almost) no noise
    x_hat = reconstruct(oracle(scheduler, x_0), x_0, CFG, SamplerConfig(num_inference_steps=5), t0=60,
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x_hat, x_0, atol=1e-4, rtol=0)


def test_oracle_reconstruction_removes_an_anomaly():
    healthy = torch.zeros(1, 1, 16, 16) - 0.5
    lesioned = healthy.clone()
    lesioned[..., 6:10, 6:10] = 0.8
    scheduler = build_scheduler(CFG, "ddpm")
    x_hat = reconstruct(oracle(scheduler, healthy), lesioned, CFG, SamplerConfig(kind="ddpm"), t0=50,
                        generator=torch.Generator().manual_seed(0))
    residual = (x_hat - lesioned).abs()[0, 0]
    assert residual[6:10, 6:10].min() > 5 * residual[:4, :4].max()


def test_step_counts():
    ddim, ddpm = build_scheduler(CFG, "ddim"), build_scheduler(CFG, "ddpm")
    steps = timesteps_from(ddim, SamplerConfig(num_inference_steps=5), 50)
    assert len(steps) == 5 and steps == sorted(steps, reverse=True) and max(steps) <= 50
    grid = ddim.timesteps.tolist()  # the scheduler's own grid from t0 down, as img2img takes it
    assert set(steps) <= set(grid) and steps[0] == max(t for t in grid if t <= 50)
    assert timesteps_from(ddpm, SamplerConfig(kind="ddpm", num_inference_steps=5), 50) == list(range(50, -1, -1))


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_reconstruction_shape_and_seeded_determinism(kind):
    torch.manual_seed(0)
    net = build_network(ModelConfig(channels=(8, 8, 8), attention_levels=(False, False, False),
                                    num_head_channels=8, norm_num_groups=8), in_channels=2).eval()
    x_0 = torch.rand(3, 2, 16, 16) * 2 - 1
    sampler = SamplerConfig(kind=kind, num_inference_steps=4)

    def run(seed):
        return reconstruct(net, x_0, CFG, sampler, t0=20, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(1), run(1), run(2)
    assert a.shape == x_0.shape and a.abs().max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_coarse_noise_is_unit_variance_and_low_frequency():
    like = torch.zeros(4, 1, 64, 64)
    coarse_cfg = SchedulerConfig(noise="coarse", coarse_factor=8)
    coarse = make_noise(like, coarse_cfg, generator=torch.Generator().manual_seed(0))
    fine = make_noise(like, SchedulerConfig(), generator=torch.Generator().manual_seed(0))
    assert coarse.std().item() == pytest.approx(1.0, abs=0.05)

    def neighbour_correlation(n):
        return torch.corrcoef(torch.stack([n[..., :-1].flatten(), n[..., 1:].flatten()]))[0, 1].item()

    assert neighbour_correlation(coarse) > 0.9 and abs(neighbour_correlation(fine)) < 0.05


def test_simplex_noise_is_seeded_unit_variance_and_smooth():
    cfg = SchedulerConfig(noise="simplex")
    like = torch.zeros(2, 3, 32, 32)
    a = make_noise(like, cfg, generator=torch.Generator().manual_seed(0))
    b = make_noise(like, cfg, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.shape == like.shape and a.std().item() == pytest.approx(1.0, abs=0.05)
    assert not torch.allclose(a[0, 0], a[0, 1])  # channels get their own field
    pairs = torch.stack([a[..., :-1].flatten(), a[..., 1:].flatten()])
    assert torch.corrcoef(pairs)[0, 1] > 0.3  # spatially correlated, unlike i.i.d. noise
    with pytest.raises(ValueError, match="2D only"):
        make_noise(torch.zeros(1, 1, 8, 8, 8), cfg)


def test_stochastic_ddim_adds_seeded_noise_at_each_step():
    """eta = 1: the same seed gives the same result, and the result differs from deterministic DDIM's."""
    torch.manual_seed(0)
    net = build_network(ModelConfig(channels=(8, 8, 8), attention_levels=(False, False, False),
                                    num_head_channels=8, norm_num_groups=8), in_channels=1).eval()
    x_0 = torch.rand(2, 1, 16, 16) * 2 - 1
    def run(eta, seed=0):
        return reconstruct(net, x_0, CFG, SamplerConfig(num_inference_steps=4, eta=eta), t0=40,
                           generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(1.0), run(1.0), rtol=0, atol=0)
    assert not torch.equal(run(1.0), run(0.0))
    assert not torch.equal(run(1.0, seed=0), run(1.0, seed=1))


@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_ddim_t0_starts_at_t0_on_a_grid_its_step_agrees_with(num_steps):
    """MONAI's DDIM grid (linspace) can start far below t0 (one step: t = 0, no noise at all); ddim_t0 starts at
    t0 exactly, each step lands where DDIMScheduler.step goes (t - T // n), and an oracle still recovers x_0."""
    sampler = SamplerConfig(kind="ddim_t0", num_inference_steps=num_steps)
    scheduler = build_scheduler(CFG, "ddim_t0")
    steps = timesteps_from(scheduler, sampler, 60)
    stride = CFG.num_train_timesteps // scheduler.num_inference_steps
    assert steps[0] == 60 and len(steps) == num_steps and all(a - b == stride for a, b in zip(steps, steps[1:]))
    default = SchedulerConfig()  # the demo's schedule: MONAI's DDIM-1 from t0 = 250 visits t = 0 only
    assert timesteps_from(build_scheduler(default, "ddim"), SamplerConfig(num_inference_steps=1), 250) == [0]
    x_0 = torch.rand(2, 1, 8, 8) * 2 - 1
    x_hat = reconstruct(oracle(scheduler, x_0), x_0, CFG, sampler, t0=60, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x_hat, x_0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_flash_attention_denoiser_matches_the_plain_one_with_the_same_weights(spatial_dims):
    config = ModelConfig(spatial_dims=spatial_dims, channels=(8, 16), attention_levels=(False, True),
                         num_head_channels=8, norm_num_groups=8)
    plain = build_network(config, in_channels=2, flash_attention=False).eval()
    with torch.no_grad():  # MONAI zero-initialises the output layer: random weights so the outputs say something
        for parameter in plain.parameters():
            parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(parameter.numel()))
    flash = build_network(config, in_channels=2).eval()
    flash.load_state_dict(plain.state_dict())  # same parameter names: old model files load unchanged
    x = torch.rand((2, 2) + (8,) * spatial_dims, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 90])
    with torch.inference_mode():
        expected, got = plain(x, t), flash(x, t)
    assert expected.abs().max() > 0.01
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
