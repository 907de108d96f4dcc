"""Where diffusion happens: images (B, C, *S) in [0, 1] <-> diffusion samples x_0.

:class:`PixelSpace` maps images to [-1, 1] (the range the schedulers clip to);
:class:`LatentSpace` encodes them with a trained autoencoder (Rombach et al. 2022;
Pinaya et al. 2022) and scales the latents to unit variance: ``x_0 = scale_factor * z``,
``z`` the posterior mean (KL; deterministic, unlike ``encode_stage_2_inputs``) or the
quantised code (VQ), ``scale_factor = 1 / std(z)`` over the training latents.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from anodiff import distributed


class Space(Protocol):
    """``clip``: whether x_0 lives in [-1, 1] (pixels) and samplers may clip to it
    (latents do not: they are scaled to unit variance, not bounded)."""

    clip: bool

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, x: torch.Tensor) -> torch.Tensor: ...


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """[0, 1] intensities -> [-1, 1], the range the schedulers clip to."""
    return image * 2 - 1


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


class PixelSpace:
    """Pixel-space diffusion: x_0 is the image mapped to [-1, 1]."""

    clip = True

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_range(images)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return from_model_range(x)


class LatentSpace:
    """Latent diffusion: x_0 = scale_factor * z, decoded back to images in [0, 1]."""

    clip = False

    def __init__(self, autoencoder: nn.Module, scale_factor: float, kind: str) -> None:
        self.autoencoder = autoencoder.eval()
        self.scale_factor = float(scale_factor)
        self.kind = kind

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) in [0, 1] -> (B, latent_channels, *S / downsampling)."""
        if self.kind == "kl":
            z = self.autoencoder.encode(images)[0]  # the mean: scores must be deterministic
        else:
            z = self.autoencoder.encode_stage_2_inputs(images)
        return z * self.scale_factor

    @torch.inference_mode()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        z = x / self.scale_factor
        images = self.autoencoder.decode(z) if self.kind == "kl" else self.autoencoder.decode_stage_2_outputs(z)
        return images.clamp(0, 1)


def latent_scale_factor(latents: torch.Tensor) -> float:
    """``1 / std`` of the (unscaled) training latents, so diffusion sees unit variance.

    Under torchrun each rank holds its own cases' latents: the moments are summed over ranks.
    """
    values = latents.double().flatten()
    count, total, squares = distributed.all_reduce_sum(
        torch.stack([torch.tensor(float(values.numel()), dtype=torch.float64), values.sum(), values.pow(2).sum()]))
    variance = (squares - total * total / count) / max(float(count) - 1, 1.0)
    std = float(variance.clamp_min(0).sqrt())
    if not std > 0:
        raise ValueError("the autoencoder's latents have zero variance; train stage 1 longer")
    return 1.0 / std
