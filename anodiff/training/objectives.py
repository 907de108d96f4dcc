"""Each method's training objective: an ``nn.Module`` whose ``forward(batch, generator=, step=)`` is the loss.

Being modules, objectives hold the networks they train, so the one loop
(:func:`anodiff.training.loop.fit`) can move, wrap (DistributedDataParallel),
average (EMA) and checkpoint them without knowing the method.

- :class:`DenoisingObjective`: the DDPM loss, for pixel DDPMs, latent DDPMs and
  SegDiff's mask diffusion conditioned on the image.
- :class:`AutoencoderObjective`: stage 1 of latent diffusion.
- :class:`SegmentationObjective`: a plain segmentation network (SegDiff's UNet reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer
from monai.losses import DiceCELoss, PatchAdversarialLoss
from monai.networks.schedulers import Scheduler
from torch import nn

from anodiff.config import AutoencoderConfig, SchedulerConfig
from anodiff.diffusion.noise import checkerboard, make_noise


class DenoisingObjective(nn.Module):
    """MSE between the network's output and the target at a random t (below ``cfg.train_t_max`` when set).

    The batch holds ``x0`` (B, C, *S): images in [-1, 1], scaled latents or masks
    in [-1, 1], and optionally ``condition`` (B, C', *S), joined to x_t as extra
    input channels (MONAI ``DiffusionInferer``, mode "concat": SegDiff's image conditioning),
    and ``hidden`` (B, 1, *S) in {0, 1}: tissue near a label, replaced by pure noise in the
    network's input and left out of the error, so a healthy model neither sees a lesion nor
    learns to reproduce one (the rest of a labelled slice, mid-brain anatomy, is learned).
    """

    def __init__(self, network: nn.Module, scheduler: Scheduler, cfg: SchedulerConfig) -> None:
        super().__init__()
        self.network = network
        self.scheduler = scheduler
        self.cfg = cfg

    def forward(self, batch: dict, *, generator: torch.Generator | None = None, step: int = 0) -> torch.Tensor:
        cfg = self.cfg
        x_0 = batch["x0"]
        eps = make_noise(x_0, cfg, generator=generator)
        levels = cfg.train_t_max or cfg.num_train_timesteps
        t = torch.randint(0, levels, (x_0.shape[0],), generator=generator).to(x_0.device)
        hidden = batch.get("hidden")
        weight = None if hidden is None else 1 - hidden
        if "condition" in batch:
            output = DiffusionInferer(self.scheduler)(inputs=x_0, diffusion_model=self.network, noise=eps,
                                                      timesteps=t, condition=batch["condition"], mode="concat")
        else:
            x_t = self.scheduler.add_noise(original_samples=x_0, noise=eps, timesteps=t)
            if cfg.noise_cell_px is not None:  # one checkerboard group noised, learned from the clean other
                cells = random_cells(x_0, cfg.noise_cell_px, generator)
                x_t = cells * x_t + (1 - cells) * x_0
                weight = cells if weight is None else weight * cells
            if hidden is not None:  # as if noised to the end, clean cells too: nothing of what lies there shows
                x_t = (1 - hidden) * x_t + hidden * eps
            output = self.network(x_t, t)
        targets = {"epsilon": lambda: eps, "sample": lambda: x_0,
                   "v_prediction": lambda: self.scheduler.get_velocity(x_0, eps, t)}
        target = targets[cfg.prediction_type]().float()
        if weight is None:
            return F.mse_loss(output.float(), target)
        weight = weight.float().expand_as(target)
        return ((output.float() - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


def random_cells(x_0: torch.Tensor, cell_px: int, generator: torch.Generator | None) -> torch.Tensor:
    """One checkerboard group (B, 1, H, W) per sample, its colour and the board's offset drawn from ``generator``;
    for a random half of the samples, the whole image (they learn plain denoising, for the unmasked levels)."""
    group = torch.randint(0, 2, (x_0.shape[0],), generator=generator)
    offset = torch.randint(0, cell_px, (x_0.shape[0], 2), generator=generator)
    whole = torch.rand(x_0.shape[0], generator=generator) < 0.5
    cells = checkerboard(tuple(x_0.shape), cell_px, group, offset)
    return torch.where(whole[:, None, None, None], torch.ones_like(cells), cells).to(x_0)


class AutoencoderObjective(nn.Module):
    """Stage 1 of latent diffusion: the autoencoder and, when the adversary is on, its discriminator.

    Trained on healthy images (batch ``x0`` (B, C, *S) in [0, 1]) with an L1
    reconstruction loss, a KL (or VQ) term and, after ``adversarial_start`` steps,
    a least-squares patch-adversarial loss (Rombach et al. 2022; Pinaya et al. 2022).
    Generator and discriminator are updated at every step from one backward pass:
    the discriminator is frozen while the generator's adversarial term is built,
    and sees only detached reconstructions in its own term, so one optimizer and
    the shared loop serve both.
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


class SegmentationObjective(nn.Module):
    """A plain segmentation network's loss: MONAI ``DiceCELoss`` (sigmoid, one channel per region; Dice
    over the whole batch, as half of it are slices without lesion, whose own Dice is undefined).

    The batch holds ``image`` (B, C, H, W) in [0, 1] and ``label`` (B, R, H, W) in {0, 1}.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.loss = DiceCELoss(sigmoid=True, batch=True)

    def forward(self, batch: dict, *, generator: torch.Generator | None = None, step: int = 0) -> torch.Tensor:
        return self.loss(self.network(batch["image"]).float(), batch["label"])
