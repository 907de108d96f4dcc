"""Networks built from config: MONAI's ``DiffusionModelUNet``; no schedules or sampling here."""

from __future__ import annotations

from monai.networks.nets import DiffusionModelUNet
from torch import nn

from anodiff.config import ModelConfig


def build_network(cfg: ModelConfig, *, in_channels: int, out_channels: int | None = None) -> nn.Module:
    """The denoiser: (x_t (B, C, *S), t (B,)) -> (B, out_channels, *S)."""
    return DiffusionModelUNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels or in_channels,
        channels=cfg.channels,
        attention_levels=cfg.attention_levels,
        num_res_blocks=cfg.num_res_blocks,
        num_head_channels=cfg.num_head_channels,
        norm_num_groups=cfg.norm_num_groups,
    )


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
