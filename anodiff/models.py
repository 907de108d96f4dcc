"""Networks built from config, all MONAI's: the denoiser, the autoencoder, the discriminator, a plain UNet.

No schedules, losses or sampling here.
"""

from __future__ import annotations

from monai.networks.nets import VQVAE, AutoencoderKL, DiffusionModelUNet, PatchDiscriminator, UNet
from torch import nn

from anodiff.config import AutoencoderConfig, ModelConfig


def build_network(cfg: ModelConfig, *, in_channels: int, out_channels: int | None = None,
                  flash_attention: bool = True) -> nn.Module:
    """The denoiser: (x_t (B, C, *S), t (B,)) -> (B, out_channels, *S).

    ``flash_attention``: attention through torch's ``scaled_dot_product_attention``, the same outputs (within
    1e-5, tested) without materialising the attention matrix: 1.5x faster at 32x32 tokens on the CPU, far less
    memory in training, and the fused kernels on a GPU. The weights are the same either way.
    """
    return DiffusionModelUNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels or in_channels,
        channels=cfg.channels,
        attention_levels=cfg.attention_levels,
        num_res_blocks=cfg.num_res_blocks,
        num_head_channels=cfg.num_head_channels,
        norm_num_groups=cfg.norm_num_groups,
        use_flash_attention=flash_attention,
    )


def build_autoencoder(cfg: AutoencoderConfig, *, spatial_dims: int, in_channels: int) -> nn.Module:
    """Stage 1 of an LDM: images (B, C, *S) -> latents (B, latent_channels, *S / cfg.downsampling)."""
    if cfg.kind == "kl":
        return AutoencoderKL(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=in_channels,
            channels=cfg.channels,
            latent_channels=cfg.latent_channels,
            num_res_blocks=cfg.num_res_blocks,
            attention_levels=cfg.attention_levels or (False,) * len(cfg.channels),
            norm_num_groups=cfg.norm_num_groups,
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        )
    # VQVAE downsamples at every level; the last level keeps its size so both kinds shrink alike.
    levels = len(cfg.channels)
    return VQVAE(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=in_channels,
        channels=cfg.channels,
        num_res_layers=cfg.num_res_blocks,
        num_res_channels=cfg.channels,
        downsample_parameters=[(2, 4, 1, 1)] * (levels - 1) + [(1, 3, 1, 1)],
        upsample_parameters=[(2, 4, 1, 1, 0)] * (levels - 1) + [(1, 3, 1, 1, 0)],
        num_embeddings=cfg.num_embeddings,
        embedding_dim=cfg.latent_channels,
    )


def build_discriminator(cfg: AutoencoderConfig, *, spatial_dims: int, in_channels: int) -> nn.Module:
    """The patch discriminator of stage 1: images -> list of feature maps, the last one patch logits."""
    return PatchDiscriminator(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        channels=cfg.discriminator_channels,
        num_layers_d=cfg.discriminator_layers,
    )


def build_reference_unet(cfg: ModelConfig, channels: tuple[int, ...] | None, *, in_channels: int,
                         out_channels: int) -> nn.Module:
    """The supervised reference beside SegDiff: a plain MONAI UNet, images (B, in_channels, *S) -> logits.

    ``channels`` None: the denoiser's widths doubled (with the same widths it would
    be ten times smaller than the denoiser). No residual units: with them, at the
    same steps and learning rate, its logits grow so slowly that it stays far less
    confident than it could be (measured on bright disks: Dice 0.75 with two units
    against 0.86 without after 100 steps), an unfair reference.
    """
    channels = channels or tuple(2 * c for c in cfg.channels)
    return UNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=0,
        norm="instance",
    )


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
