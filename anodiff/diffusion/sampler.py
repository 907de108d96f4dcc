"""The one sampler: partial noising and denoising (reconstruction), or denoising from pure noise (generation).

Notation (Ho et al. 2020; Song et al. 2021, DDIM): ``x_0`` clean sample, ``t``
timestep, ``x_t = sqrt(alphas_cumprod[t]) x_0 + sqrt(1 - alphas_cumprod[t]) eps``.

Reconstruction (AnoDDPM, Wyatt et al. 2022; Pinaya et al. 2022) noises ``x_0``
only to ``t0 < T``, not to pure noise, so healthy anatomy survives, then denoises
back. The timesteps it visits are the scheduler's own grid from ``t0`` down, taken
as diffusers' img2img does (``scheduler.timesteps[start:]``). The loop is written
once, for any denoiser ``(x_t, t) -> model output``: pixel DDPM, latent DDPM and
SegDiff (:func:`conditioned`) share it. What differs between samplers (the
scheduler class, its grid, how a step is called, which of its outputs is the
result) is one entry of :data:`SAMPLERS`; adding a sampler = one entry there and
its name in ``SamplerConfig.kind``. The schedulers are MONAI's; only their
``set_timesteps`` / ``timesteps`` / ``step`` / ``add_noise`` are used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from torch import nn

from anodiff.config import SamplerConfig, SchedulerConfig
from anodiff.diffusion.noise import make_noise

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# step(scheduler, model_output, t, x_t, eta, generator) -> (x_{t-1}, predicted x_0)
StepFn = Callable[[Scheduler, torch.Tensor, int, torch.Tensor, float, "torch.Generator | None"],
                  tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SamplerKind:
    """What one sampler is: the sampling loop itself is shared (:func:`denoise`)."""

    scheduler: type[Scheduler]
    timesteps: Callable[[Scheduler, int, int], list[int]]  # (scheduler, t0, num_steps) -> descending, set up
    step: StepFn
    returns_prediction: bool  # the result is the last step's predicted x_0 (else its x_{t-1})


def _grid_from(scheduler: Scheduler, size: int, t0: int, visits: int | None) -> list[int]:
    """The scheduler's own grid of ``size`` steps, from its first t at or below ``t0`` (img2img's
    ``scheduler.timesteps[start:]``), ``visits`` of them (None: all)."""
    scheduler.set_timesteps(size)
    grid = scheduler.timesteps
    start = int((grid > t0).sum())  # the grid is descending: skip the steps above t0
    return [int(t) for t in grid[start : None if visits is None else start + visits]]


def _grid_at_t0(scheduler: Scheduler, t0: int, num_steps: int) -> list[int]:
    """``num_steps`` timesteps from exactly ``t0``, ``T // n`` apart, the stride ``DDIMScheduler.step`` takes
    from t to the previous step: the grid and the step agree, and one step is a one-pass x_0 from t0."""
    total = scheduler.num_train_timesteps
    scheduler.set_timesteps(min(total, max(1, round(total * num_steps / t0))))
    stride = total // scheduler.num_inference_steps
    return [t0 - i * stride for i in range(num_steps) if t0 - i * stride >= 0]


def _ddim_step(scheduler, output, t, x_t, eta, generator):
    return scheduler.step(output, t, x_t, eta=eta, generator=generator)


SAMPLERS: dict[str, SamplerKind] = {
    # MONAI's DDIM grid about t0 // K apart (set_timesteps(T // (t0 // K))), K steps from its first t at or
    # below t0; the last step's predicted x_0 is the result, with no extra network pass. MONAI 1.6 spaces
    # its grid by linspace(T - 1, 0, n) while step() goes back T // n: the first t can lie well below t0
    # (K = 1 visits t = 0 only), hence "ddim_t0".
    "ddim": SamplerKind(
        scheduler=DDIMScheduler,
        timesteps=lambda scheduler, t0, k: _grid_from(scheduler, scheduler.num_train_timesteps // max(1, t0 // k),
                                                      t0, k),
        step=_ddim_step,
        returns_prediction=True,
    ),
    # DDIM from exactly t0, on a grid the step agrees with (:func:`_grid_at_t0`).
    "ddim_t0": SamplerKind(scheduler=DDIMScheduler, timesteps=_grid_at_t0, step=_ddim_step,
                           returns_prediction=True),
    # The full reverse chain, every t <= t0 (DDPMScheduler.step uses alphas_cumprod[t - 1]): a reference.
    "ddpm": SamplerKind(
        scheduler=DDPMScheduler,
        timesteps=lambda scheduler, t0, k: _grid_from(scheduler, scheduler.num_train_timesteps, t0, None),
        step=lambda scheduler, output, t, x_t, eta, generator: scheduler.step(output, t, x_t, generator=generator),
        returns_prediction=False,
    ),
}


def sampler_kind(name: str) -> SamplerKind:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; known: {sorted(SAMPLERS)}") from None


def build_scheduler(cfg: SchedulerConfig, kind: str = "ddpm", *, clip_sample: bool = True) -> Scheduler:
    """The MONAI scheduler of sampler ``kind`` for the noise schedule ``cfg`` (training uses ``ddpm``)."""
    return sampler_kind(kind).scheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        schedule=cfg.schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        clip_sample=clip_sample,
    )


def timesteps_from(scheduler: Scheduler, sampler: SamplerConfig, t0: int) -> list[int]:
    """The descending timesteps in [0, t0] that ``sampler`` visits from ``t0``; sets ``scheduler``'s grid."""
    return sampler_kind(sampler.kind).timesteps(scheduler, t0, sampler.num_inference_steps)


def num_network_evals(cfg: SchedulerConfig, sampler: SamplerConfig, t0: int) -> int:
    """Network passes of one reconstruction from ``t0`` (or generation: ``t0 = T - 1``)."""
    return len(timesteps_from(build_scheduler(cfg, sampler.kind), sampler, t0))


@torch.inference_mode()
def reconstruct(
    denoiser: Denoiser,
    x_0: torch.Tensor,
    cfg: SchedulerConfig,
    sampler: SamplerConfig,
    *,
    t0: int,
    generator: torch.Generator | None = None,
    clip: bool = True,
    noise: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
) -> torch.Tensor:
    """Noise ``x_0`` (B, C, *S) to ``t0`` and denoise it back: the reconstruction (B, C, *S).

    The noise is ``noise`` when given, else drawn (``cfg.noise``) from ``generator``. Clamped to [-1, 1] when
    ``clip`` (pixels); deterministic given ``generator`` (DDIM with ``sampler.eta`` > 0 draws fresh noise at
    each step, from it too). With ``region`` (B, 1, *S) in {0, 1} only that region is noised and denoised, the
    rest held clean at every step (masked noising, :attr:`SchedulerConfig.noise_cell_px`).
    """
    scheduler = build_scheduler(cfg, sampler.kind, clip_sample=clip)
    timesteps = timesteps_from(scheduler, sampler, t0)
    if not timesteps:
        raise ValueError(f"no timesteps in (0, {t0}]; raise t0 or num_steps")
    eps = make_noise(x_0, cfg, generator=generator) if noise is None else noise
    start = torch.full((x_0.shape[0],), timesteps[0], dtype=torch.long, device=x_0.device)
    x_t = scheduler.add_noise(original_samples=x_0, noise=eps, timesteps=start)
    known = None if region is None else (x_0, region.to(x_0))
    x_hat = denoise(denoiser, x_t if known is None else held(x_t, known), scheduler, timesteps, sampler,
                    generator=generator, known=known)
    if known is not None:
        x_hat = held(x_hat, known)
    return x_hat.clamp(-1, 1) if clip else x_hat


def held(x: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``x`` inside the region, the known clean sample outside it."""
    x_0, region = known
    return region * x + (1 - region) * x_0


@torch.inference_mode()
def generate(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    cfg: SchedulerConfig,
    sampler: SamplerConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A sample (B, C, *S) in [-1, 1]: noise drawn (``scheduler.noise``) and denoised over the sampler's grid
    from T - 1, as diffusers' pipelines start from ``randn * init_noise_sigma`` (1 for these schedulers)."""
    scheduler = build_scheduler(cfg, sampler.kind)
    timesteps = timesteps_from(scheduler, sampler, cfg.num_train_timesteps - 1)
    x_t = make_noise(torch.empty(shape, device=device), cfg, generator=generator)
    return denoise(denoiser, x_t, scheduler, timesteps, sampler, generator=generator).clamp(-1, 1)


def denoise(denoiser: Denoiser, x_t: torch.Tensor, scheduler: Scheduler, timesteps: list[int],
            sampler: SamplerConfig, *, generator: torch.Generator | None = None,
            known: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The shared loop: step ``x_t`` (B, C, *S) down ``timesteps``; returns the sampler's result. ``known``
    (clean sample, region): outside the region the sample is held clean after every step."""
    kind = sampler_kind(sampler.kind)
    step_generator = generator
    if generator is not None and x_t.device.type != "cpu":  # the schedulers draw on the sample's device
        seed = int(torch.randint(2**62, (1,), generator=generator))
        step_generator = torch.Generator(device=x_t.device).manual_seed(seed)
    x_hat = x_t
    for t in timesteps:
        t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        output = denoiser(x_t, t_batch).float()
        x_t, x_hat = kind.step(scheduler, output, t, x_t, sampler.eta, step_generator)
        if known is not None:
            x_t = held(x_t, known)
    return x_hat if kind.returns_prediction else x_t


def conditioned(network: nn.Module, condition: torch.Tensor) -> Denoiser:
    """The denoiser (x_t, t) -> network([x_t, condition], t): image conditioning by concatenation."""
    return lambda x_t, t: network(torch.cat([x_t, condition], dim=1), t)
