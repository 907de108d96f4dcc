"""Noise, the denoising loss, and reconstruction from partial noise.

Notation (Ho et al. 2020; Song et al. 2021, DDIM): ``x_0`` clean image in
[-1, 1], ``t`` timestep, ``x_t = sqrt(alphas_cumprod[t]) x_0 + sqrt(1 - alphas_cumprod[t]) eps``.

Reconstruction (AnoDDPM, Wyatt et al. 2022; Pinaya et al. 2022): noise ``x_0``
only to ``t0 < T``, not pure noise, so healthy anatomy survives, then denoise
back. With DDIM (eta = 0) the only randomness is the initial noise. The loop is
written here, once, for any denoiser ``(x_t, t) -> model output``; the schedulers
are MONAI's (``DDIMScheduler``, ``DDPMScheduler``), and only their
``set_timesteps`` / ``step`` / ``add_noise`` are used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from anodiff.config import SchedulerConfig

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Space(Protocol):
    """Where diffusion happens: images (B, C, *S) in [0, 1] <-> diffusion samples x_0.

    ``clip``: whether x_0 lives in [-1, 1] (pixels) and samplers may clip to it
    (latents do not: they are scaled to unit variance, not bounded).
    """

    clip: bool

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, x: torch.Tensor) -> torch.Tensor: ...


class PixelSpace:
    """Pixel-space diffusion: x_0 is the image mapped to [-1, 1]."""

    clip = True

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_range(images)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return from_model_range(x)


def build_scheduler(cfg: SchedulerConfig, kind: Literal["ddpm", "ddim"] = "ddim", *,
                    clip_sample: bool = True) -> DDPMScheduler | DDIMScheduler:
    klass = DDIMScheduler if kind == "ddim" else DDPMScheduler
    return klass(
        num_train_timesteps=cfg.num_train_timesteps,
        schedule=cfg.schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        prediction_type=cfg.prediction_type,
        clip_sample=clip_sample,
    )


def make_noise(like: torch.Tensor, cfg: SchedulerConfig, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise shaped like ``like`` (B, C, *S): i.i.d. Gaussian, or coarse Gaussian upsampled."""
    if cfg.noise == "gaussian":
        return torch.randn(like.shape, generator=generator, device="cpu", dtype=torch.float32).to(like)
    if cfg.noise == "simplex":
        return simplex_noise(like.shape, cfg, generator=generator).to(like)
    spatial = like.shape[2:]
    small = [max(2, s // cfg.coarse_factor) for s in spatial]
    coarse = torch.randn((*like.shape[:2], *small), generator=generator, dtype=torch.float32)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    noise = F.interpolate(coarse, size=spatial, mode=mode, align_corners=False)
    noise = noise / noise.flatten(1).std(dim=1).view(-1, *([1] * (noise.ndim - 1)))  # unit variance
    return noise.to(like)


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] intensities -> [-1, 1], the range the schedulers clip to."""
    return image * 2 - 1


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


class DenoisingObjective(nn.Module):
    """The DDPM training objective around ``network``: MSE between its output and the target at a random t.

    ``forward(batch, generator=, step=)``: the batch holds ``x0`` (B, C, *S), images
    in [-1, 1], scaled latents or masks in [-1, 1], and optionally ``condition``
    (B, C', *S), joined to x_t as extra input channels (MONAI ``DiffusionInferer``,
    mode "concat": SegDiff's image conditioning). A module, so that
    DistributedDataParallel can wrap it.
    """

    def __init__(self, network: nn.Module, scheduler: DDPMScheduler | DDIMScheduler, cfg: SchedulerConfig) -> None:
        super().__init__()
        self.network = network
        self.scheduler = scheduler
        self.cfg = cfg

    def forward(self, batch: dict, *, generator: torch.Generator | None = None, step: int = 0) -> torch.Tensor:
        cfg = self.cfg
        x_0 = batch["x0"]
        eps = make_noise(x_0, cfg, generator=generator)
        t = torch.randint(0, cfg.num_train_timesteps, (x_0.shape[0],), generator=generator).to(x_0.device)
        if "condition" in batch:
            output = DiffusionInferer(self.scheduler)(inputs=x_0, diffusion_model=self.network, noise=eps,
                                                      timesteps=t, condition=batch["condition"], mode="concat")
        else:
            output = self.network(self.scheduler.add_noise(original_samples=x_0, noise=eps, timesteps=t), t)
        if cfg.prediction_type == "epsilon":
            target = eps
        elif cfg.prediction_type == "sample":
            target = x_0
        else:
            target = self.scheduler.get_velocity(x_0, eps, t)
        return F.mse_loss(output.float(), target.float())


def inference_timesteps(scheduler: DDIMScheduler | DDPMScheduler, t0: int, num_steps: int) -> list[int]:
    """The descending timesteps in (0, t0] a K-step reconstruction visits.

    For DDIM the step ratio is ``t0 // K``, so the K steps land on multiples of it
    (the scheduler's own grid, as ``DDIMScheduler.step`` assumes). Full DDPM visits
    every t <= t0 (``DDPMScheduler.step`` uses ``alphas_cumprod[t - 1]``).
    """
    total = scheduler.num_train_timesteps
    if isinstance(scheduler, DDIMScheduler):
        ratio = max(1, t0 // num_steps)
        scheduler.set_timesteps(total // ratio)
    else:
        scheduler.set_timesteps(total)
    return [int(t) for t in scheduler.timesteps if 0 <= int(t) <= t0][: num_steps if isinstance(
        scheduler, DDIMScheduler) else None]


@torch.inference_mode()
def reconstruct(
    denoiser: Denoiser,
    x_0: torch.Tensor,
    scheduler: DDIMScheduler | DDPMScheduler,
    cfg: SchedulerConfig,
    *,
    t0: int,
    num_steps: int,
    generator: torch.Generator | None = None,
    clip: bool = True,
    eta: float = 0.0,
) -> torch.Tensor:
    """Noise ``x_0`` (B, C, *S) to ``t0`` and denoise it back.

    DDIM takes ``num_steps`` network evaluations (``eta`` > 0 adds fresh noise at
    each step); DDPM takes ``t0 + 1``. Returns the reconstruction (B, C, *S),
    clamped to [-1, 1] when ``clip`` (pixels); deterministic given ``generator``.
    """
    timesteps = inference_timesteps(scheduler, t0, num_steps)
    if not timesteps:
        raise ValueError(f"no timesteps in (0, {t0}]; raise t0 or num_steps")
    eps = make_noise(x_0, cfg, generator=generator)
    start = torch.full((x_0.shape[0],), timesteps[0], dtype=torch.long, device=x_0.device)
    x_t = scheduler.add_noise(original_samples=x_0, noise=eps, timesteps=start)
    x_hat = x_t
    step_generator = generator
    if generator is not None and x_0.device.type != "cpu":  # the schedulers draw on the sample's device
        seed = int(torch.randint(2**62, (1,), generator=generator))
        step_generator = torch.Generator(device=x_0.device).manual_seed(seed)
    for t in timesteps:
        t_batch = torch.full((x_0.shape[0],), t, dtype=torch.long, device=x_0.device)
        output = denoiser(x_t, t_batch).float()
        if isinstance(scheduler, DDIMScheduler):  # x_hat: the x_0 predicted at this step
            x_t, x_hat = scheduler.step(output, t, x_t, eta=eta, generator=step_generator)
        else:
            x_t, x_hat = scheduler.step(output, t, x_t, generator=step_generator)
    # DDIM's last visited t is the step ratio: its predicted x_0 is the result (no extra pass).
    x_hat = x_hat if isinstance(scheduler, DDIMScheduler) else x_t
    return x_hat.clamp(-1, 1) if clip else x_hat


def conditioned(network: nn.Module, condition: torch.Tensor) -> Denoiser:
    """The denoiser (x_t, t) -> network([x_t, condition], t): image conditioning by concatenation."""
    return lambda x_t, t: network(torch.cat([x_t, condition], dim=1), t)


def generate(
    denoiser: Denoiser,
    shape: tuple[int, ...],
    scheduler: DDIMScheduler | DDPMScheduler,
    cfg: SchedulerConfig,
    *,
    num_steps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    eta: float = 0.0,
) -> torch.Tensor:
    """A sample (B, C, *S) in [-1, 1] drawn from pure noise in ``num_steps`` DDIM steps.

    The same loop as :func:`reconstruct`, from the last timestep: x_0 = 0 noised to
    T - 1 is noise scaled by sqrt(1 - alphas_cumprod[T - 1]), i.e. pure noise.
    """
    blank = torch.zeros(shape, device=device)
    return reconstruct(denoiser, blank, scheduler, cfg, t0=cfg.num_train_timesteps - 1, num_steps=num_steps,
                       generator=generator, clip=True, eta=eta)


# Gradient directions of 2D simplex noise (the x, y parts of Gustavson's grad3 table).
_GRADIENTS_2D = torch.tensor([[1, 1], [-1, 1], [1, -1], [-1, -1], [1, 0], [-1, 0],
                              [1, 0], [-1, 0], [0, 1], [0, -1], [0, 1], [0, -1]], dtype=torch.float32)


def simplex_noise(shape: torch.Size | tuple[int, ...], cfg: SchedulerConfig, *,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Multi-octave 2D simplex noise (B, C, H, W), unit variance per sample (AnoDDPM).

    Each (sample, channel) reads the noise field at its own random offset; octave
    o has frequency ``simplex_cycles * 2**o`` per image and amplitude
    ``simplex_persistence**o``.
    """
    if len(shape) != 4:
        raise ValueError(f"simplex noise is 2D only; got a shape of {len(shape) - 2} spatial dims")
    b, c, h, w = shape
    perm = torch.randperm(256, generator=generator)
    perm = torch.cat([perm, perm])
    offsets = torch.rand((b, c, 2, 1, 1), generator=generator) * 1000
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) / max(h, w),
                            torch.arange(w, dtype=torch.float32) / max(h, w), indexing="ij")
    noise = torch.zeros(shape)
    for octave in range(cfg.simplex_octaves):
        frequency = cfg.simplex_cycles * 2**octave
        x = xs * frequency + offsets[:, :, 0]
        y = ys * frequency + offsets[:, :, 1]
        noise += cfg.simplex_persistence**octave * _simplex_2d(x, y, perm)
    noise = noise - noise.flatten(2).mean(-1)[..., None, None]
    return noise / noise.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)


def _simplex_2d(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Gustavson's 2D simplex noise at points (x, y), any equal shapes; values in about [-1, 1]."""
    f2, g2 = 0.5 * (3**0.5 - 1), (3 - 3**0.5) / 6
    skew = (x + y) * f2
    i, j = torch.floor(x + skew), torch.floor(y + skew)
    unskew = (i + j) * g2
    x0, y0 = x - (i - unskew), y - (j - unskew)
    i1 = (x0 > y0).float()
    j1 = 1 - i1
    corners = [(x0, y0, 0, 0), (x0 - i1 + g2, y0 - j1 + g2, i1, j1), (x0 - 1 + 2 * g2, y0 - 1 + 2 * g2, 1, 1)]
    ii, jj = i.long() & 255, j.long() & 255
    total = torch.zeros_like(x)
    for dx, dy, di, dj in corners:
        di = di.long() if torch.is_tensor(di) else di
        dj = dj.long() if torch.is_tensor(dj) else dj
        gradient = _GRADIENTS_2D[perm[ii + di + perm[jj + dj]] % 12]
        falloff = torch.clamp(0.5 - dx**2 - dy**2, min=0) ** 4
        total += falloff * (gradient[..., 0] * dx + gradient[..., 1] * dy)
    return 70 * total
