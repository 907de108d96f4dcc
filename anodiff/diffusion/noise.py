"""Noise kinds, by name: what training noises with and what detection noises with.

A registry of named functions (the pattern of MONAI's ``NoiseSchedules.add_def``):
``@noise_kind("name")`` registers ``fn(shape, cfg, generator) -> (B, C, *S) float32``
on the CPU, unit variance per sample. :func:`make_noise` looks a kind up by
``scheduler.noise``. Adding a kind = one decorated function here and its name in
``SchedulerConfig.noise``.

- ``gaussian``: i.i.d. standard normal (Ho et al. 2020).
- ``coarse``: Gaussian drawn on a grid ``coarse_factor`` times smaller and upsampled,
  which destroys lesions larger than a few pixels (Kascenas et al., MIDL 2022).
- ``simplex``: multi-octave 2D simplex noise (AnoDDPM, Wyatt et al. 2022).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from anodiff.config import SchedulerConfig

NoiseFn = Callable[[tuple[int, ...], SchedulerConfig, "torch.Generator | None"], torch.Tensor]

NOISE_KINDS: dict[str, NoiseFn] = {}


def noise_kind(name: str) -> Callable[[NoiseFn], NoiseFn]:
    """Register a noise function under ``name``."""

    def register(fn: NoiseFn) -> NoiseFn:
        NOISE_KINDS[name] = fn
        return fn

    return register


def make_noise(like: torch.Tensor, cfg: SchedulerConfig, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise of kind ``cfg.noise`` shaped like ``like`` (B, C, *S), on its device and dtype.

    Drawn on the CPU from ``generator``, so a seed fixes it on any device.
    """
    try:
        draw = NOISE_KINDS[cfg.noise]
    except KeyError:
        raise ValueError(f"unknown noise kind {cfg.noise!r}; known: {sorted(NOISE_KINDS)}") from None
    return draw(tuple(like.shape), cfg, generator).to(like)


@noise_kind("gaussian")
def gaussian_noise(shape: tuple[int, ...], cfg: SchedulerConfig, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32)


@noise_kind("coarse")
def coarse_noise(shape: tuple[int, ...], cfg: SchedulerConfig, generator: torch.Generator | None) -> torch.Tensor:
    spatial = shape[2:]
    small = [max(2, s // cfg.coarse_factor) for s in spatial]
    coarse = torch.randn((*shape[:2], *small), generator=generator, dtype=torch.float32)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    noise = F.interpolate(coarse, size=spatial, mode=mode, align_corners=False)
    return noise / noise.flatten(1).std(dim=1).view(-1, *([1] * (noise.ndim - 1)))  # unit variance


# Gradient directions of 2D simplex noise (the x, y parts of Gustavson's grad3 table).
_GRADIENTS_2D = torch.tensor([[1, 1], [-1, 1], [1, -1], [-1, -1], [1, 0], [-1, 0],
                              [1, 0], [-1, 0], [0, 1], [0, -1], [0, 1], [0, -1]], dtype=torch.float32)


@noise_kind("simplex")
def simplex_noise(shape: tuple[int, ...], cfg: SchedulerConfig, generator: torch.Generator | None) -> torch.Tensor:
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


def checkerboard(shape: tuple[int, ...], cell_px: int, group: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Masks (B, 1, H, W) in {0, 1} of one checkerboard group of square cells, per sample: ``group`` (B,) in
    {0, 1} picks the colour, ``offset`` (B, 2) shifts the board (pixels). The two groups tile the image."""
    b, _, h, w = shape
    rows = (torch.arange(h)[None, :] + offset[:, :1]) // cell_px  # (B, H)
    cols = (torch.arange(w)[None, :] + offset[:, 1:]) // cell_px  # (B, W)
    colour = (rows[:, :, None] + cols[:, None, :]) % 2  # (B, H, W)
    return (colour == group[:, None, None]).float()[:, None]
