"""Stage 1 of latent diffusion: the autoencoder's loss, its latent space, the latent scale factor.

The autoencoder (MONAI ``AutoencoderKL`` or ``VQVAE``) is trained on healthy
images in [0, 1] with an L1 reconstruction loss, a KL (or VQ) term and, after a
warm-up, a least-squares patch-adversarial loss (Rombach et al. 2022; Pinaya et
al. 2022). Generator and discriminator are updated at every step from one
backward pass: the discriminator is frozen while the generator's adversarial
term is built, and sees only detached reconstructions in its own term, so one
optimizer and the shared training loop serve both (:class:`AutoencoderObjective`).

Diffusion then runs on ``scale_factor * z``, where ``z`` is the posterior mean
(KL; deterministic, unlike ``encode_stage_2_inputs``) or the quantised code (VQ),
and ``scale_factor = 1 / std(z)`` over the training latents.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from torch import nn

from anodiff import distributed
from anodiff.config import AutoencoderConfig


class AutoencoderObjective(nn.Module):
    """What stage 1 trains: the autoencoder and, when the adversary is on, its discriminator.

    ``forward(batch, generator=, step=)`` returns the stage-1 loss; batch ``x0``
    (B, C, *S) in [0, 1]. The discriminator takes no part before ``adversarial_start``.
    """

    # The discriminator sits out the warm-up: DistributedDataParallel must expect unused parameters.
    find_unused_parameters = True

    def __init__(self, autoencoder: nn.Module, discriminator: nn.Module | None, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.discriminator = discriminator
        self.cfg = cfg
        self.adversarial = PatchAdversarialLoss(criterion="least_squares")

    def forward(self, batch: dict, *, generator: torch.Generator | None = None, step: int = 0) -> torch.Tensor:
        cfg, x = self.cfg, batch["x0"]
        if cfg.kind == "kl":
            z_mu, z_sigma = self.autoencoder.encode(x)
            # The reparameterisation drawn from the step's generator (the network's own uses the global RNG).
            eps = torch.randn(z_mu.shape, generator=generator, dtype=torch.float32).to(z_mu)
            recon = self.autoencoder.decode(z_mu + z_sigma * eps)
            regulariser = cfg.kl_weight * kl_divergence(z_mu.float(), z_sigma.float())
        else:
            recon, regulariser = self.autoencoder(x)
        loss = F.l1_loss(recon.float(), x.float()) + regulariser
        discriminator = self.discriminator
        if discriminator is None or step < cfg.adversarial_start:
            return loss
        discriminator.requires_grad_(False)  # the generator's term must not train the discriminator
        fooled = self.adversarial(discriminator(recon.contiguous())[-1], target_is_real=True,
                                  for_discriminator=False)
        discriminator.requires_grad_(True)
        fake = self.adversarial(discriminator(recon.detach().contiguous())[-1], target_is_real=False,
                                for_discriminator=True)
        real = self.adversarial(discriminator(x.contiguous())[-1], target_is_real=True, for_discriminator=True)
        return loss + cfg.adversarial_weight * (fooled + 0.5 * (fake + real))


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)) summed over latent elements, averaged over the batch."""
    per_element = z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2).clamp_min(1e-12)) - 1
    return 0.5 * per_element.flatten(1).sum(1).mean()


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
