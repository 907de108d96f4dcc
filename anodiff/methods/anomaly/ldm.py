"""Latent diffusion (``model.kind: ldm``): an autoencoder first (stage 1), then the detection denoiser on
its scaled latents (stage 2, :class:`~anodiff.methods.anomaly.AnomalyMethod`'s training).

Stage 1 trains MONAI's ``AutoencoderKL`` or ``VQVAE`` with the one loop
(:class:`~anodiff.training.objectives.AutoencoderObjective`), or loads it when
``autoencoder.safetensors`` exists for the same settings; its reconstruction
error on held-out healthy inputs bounds what the LDM can see, so it is measured
and stored. Every training input is then encoded once (the posterior mean) and
the latent scale factor set to ``1 / std`` of the latents (Rombach et al. 2022).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from monai.inferers import LatentDiffusionInferer

from anodiff import distributed
from anodiff.config import RunConfig, config_to_dict
from anodiff.data.cases import Case
from anodiff.diffusion.sampler import build_scheduler
from anodiff.diffusion.spaces import LatentSpace, Space, latent_scale_factor
from anodiff.errors import CheckpointError, ConfigError
from anodiff.figures import save_grid
from anodiff.methods.anomaly.method import AnomalyMethod, healthy_dataset
from anodiff.methods.base import preview_inputs, seeded
from anodiff.modelfolder import AUTOENCODER
from anodiff.models import build_autoencoder, build_discriminator, count_parameters
from anodiff.progress import Progress, staged
from anodiff.training.checkpoints import CHECKPOINT
from anodiff.training.loop import fit
from anodiff.training.objectives import AutoencoderObjective
from anodiff.weights import load_weights, read_safetensors_metadata, state_tensors, write_safetensors

log = logging.getLogger(__name__)


class LatentDiffusion(AnomalyMethod):
    kind = "ldm"
    title = "latent diffusion (an autoencoder, a DDPM in its latent space), unsupervised anomaly detection"
    stage_name = "diffusion"

    def validate(self, config: RunConfig) -> None:
        super().validate(config)
        ae = config.autoencoder
        if ae.adversarial_weight > 0:
            if config.data.image_size < 2 ** (ae.discriminator_layers + 2):
                raise ConfigError(f"data.image_size ({config.data.image_size}) is too small for a "
                                  f"{ae.discriminator_layers}-layer discriminator; lower "
                                  "autoencoder.discriminator_layers")
            if ae.batch_size < 2:
                raise ConfigError("autoencoder.batch_size must be >= 2 with the adversary on (batch norm)")
        if config.scheduler.noise == "simplex":
            raise ConfigError("scheduler.noise: simplex is for 2D pixel-space DDPMs; use gaussian or coarse")
        if config.train.mirror:
            raise ConfigError("train.mirror is for pixel-space denoisers: a mirrored latent is not the latent "
                              "of the mirrored image")

    def downsampling(self, config: RunConfig) -> int:
        return config.autoencoder.downsampling

    def in_channels(self, config: RunConfig, meta: dict[str, Any]) -> int:
        return config.autoencoder.latent_channels

    def diffusion_space(self, train_set, held_out: list[Case], modalities: tuple[str, ...], config: RunConfig,
                        out: Path, meta: dict, *, device: torch.device, resume: bool,
                        progress: Progress | None) -> tuple[Space, torch.Tensor | None]:
        """Stage 1, then every training input encoded and scaled (meta gains the autoencoder's report)."""
        autoencoder = train_autoencoder(train_set, modalities, config, out, device=device, resume=resume,
                                        progress=progress)
        if distributed.is_main():
            held_out_set = healthy_dataset(held_out, modalities, config, allow_empty=True)
            meta["autoencoder"] = autoencoder_report(autoencoder, held_out_set, config, out / "autoencoder")
        latents = encode_dataset(LatentSpace(autoencoder, 1.0, config.autoencoder.kind), train_set)
        scale = latent_scale_factor(latents)
        meta["latent_scale_factor"] = scale
        log.info("latents %s, scale factor %.4f", tuple(latents.shape[1:]), scale)
        return LatentSpace(autoencoder, scale, config.autoencoder.kind), latents * scale

    def load_space(self, folder: Path, config: RunConfig, meta: dict[str, Any], device: torch.device) -> Space:
        autoencoder = build_autoencoder(config.autoencoder, spatial_dims=config.model.spatial_dims,
                                        in_channels=len(meta["modalities"]))
        load_weights(autoencoder, folder / AUTOENCODER)
        return LatentSpace(autoencoder.to(device), meta["latent_scale_factor"], config.autoencoder.kind)

    def save_samples(self, network, preview: torch.Tensor, config: RunConfig, folder: Path, step: int,
                     space: Space) -> None:
        """The reconstruction rows, and what the LDM makes of pure noise (healthy-looking brains, we hope)."""
        super().save_samples(network, preview, config, folder, step, space)
        factor = config.autoencoder.downsampling
        latent_shape = (len(preview), config.autoencoder.latent_channels, *(s // factor for s in preview.shape[2:]))
        save_grid([generated_images(network, space, config, latent_shape)[:, 0].clamp(0, 1)],
                  folder / f"{step:07d}_generated.png")


def generated_images(network, space: LatentSpace, config: RunConfig, latent_shape) -> torch.Tensor:
    """Images decoded from pure noise (20 DDIM steps, MONAI's LatentDiffusionInferer): (B, C, *S)."""
    scheduler = build_scheduler(config.scheduler, "ddim", clip_sample=False)
    scheduler.set_timesteps(20)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=space.scale_factor)
    device = next(network.parameters()).device
    noise = torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(0)).to(device)
    network.eval()
    with torch.inference_mode():
        return inferer.sample(input_noise=noise, autoencoder_model=space.autoencoder, diffusion_model=network,
                              scheduler=scheduler, verbose=False)


def encode_dataset(space: Space, dataset, batch_size: int = 64) -> torch.Tensor:
    """x_0 of every input of ``dataset`` in ``space``: (N, C', *S'), on the CPU."""
    chunks = []
    device = next(space.autoencoder.parameters()).device
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))])
        chunks.append(space.encode(images.to(device)).float().cpu())
    return torch.cat(chunks)


def stage_one_identity(config: RunConfig, modalities: tuple[str, ...]) -> str:
    """What autoencoder.safetensors must agree with to be reused: its settings (less the steps) and the data's."""
    return yaml.safe_dump({"autoencoder": config_to_dict(config.autoencoder) | {"num_steps": None},
                           "data": config_to_dict(config.data), "spatial_dims": config.model.spatial_dims,
                           "modalities": list(modalities), "seed": config.train.seed})


def train_autoencoder(train_set, modalities: tuple[str, ...], config: RunConfig, out: Path, *,
                      device: torch.device, resume: bool, progress: Progress | None) -> torch.nn.Module:
    """Stage 1: train (or, when ``autoencoder.safetensors`` exists for these settings, load) the autoencoder."""
    cfg, path = config.autoencoder, out / AUTOENCODER
    identity = stage_one_identity(config, modalities)
    autoencoder, discriminator = seeded(lambda: (
        build_autoencoder(cfg, spatial_dims=config.model.spatial_dims, in_channels=len(modalities)),
        build_discriminator(cfg, spatial_dims=config.model.spatial_dims, in_channels=len(modalities))
        if cfg.adversarial_weight > 0 else None), config.train.seed)
    if path.exists() and finished_stage_one(path, identity, cfg.num_steps):
        load_weights(autoencoder, path)
        log.info("stage 1: %s exists for these settings; not trained again", path)
        return autoencoder.to(device).eval()
    log.info("stage 1 autoencoder: %s parameters", f"{count_parameters(autoencoder):,}")
    stage_cfg = replace(config.train, num_steps=cfg.num_steps, batch_size=cfg.batch_size, lr=cfg.lr,
                        ema_decay=cfg.ema_decay)

    def sample_batch(generator: torch.Generator) -> dict:
        index = torch.randint(len(train_set), (cfg.batch_size,), generator=generator)
        return {"x0": torch.stack([train_set[int(i)]["image"] for i in index])}

    preview = preview_inputs(train_set)
    stage_dir = out / "autoencoder"
    trained, result = fit(AutoencoderObjective(autoencoder, discriminator, cfg), sample_batch, stage_cfg, stage_dir,
                          device=device, resume=resume, config_text=identity,
                          progress=staged(progress, "autoencoder"),
                          on_sample=lambda step, ema: save_autoencoder_grid(
                              ema.autoencoder, preview, cfg.kind, stage_dir / "samples" / f"{step:07d}.png"))
    autoencoder = trained.autoencoder.eval()
    log.info("stage 1: %.1f samples/s, %.1f%% of the time waiting on data", result.samples_per_s,
             100 * result.data_fraction)
    if distributed.is_main():
        write_safetensors(state_tensors(autoencoder), path,
                          {"identity": identity, "steps": str(cfg.num_steps),
                           "training": json.dumps(result.summary(cfg.num_steps, device))})
        (out / CHECKPOINT).unlink(missing_ok=True)  # a stage-2 checkpoint belongs to the old latents
    distributed.barrier()
    return autoencoder


def finished_stage_one(path: Path, identity: str, num_steps: int) -> bool:
    """Whether ``path`` holds stage 1 trained for ``num_steps`` with these settings (other settings: an error)."""
    metadata = read_safetensors_metadata(path)
    if metadata.get("identity") != identity:
        raise CheckpointError(f"{path}: trained with other autoencoder or data settings; "
                              "use a new --out, or --overwrite to train both stages again")
    if metadata.get("steps") == str(num_steps):
        return True
    log.info("stage 1: %s has %s steps, %d asked for; training on", path, metadata.get("steps"), num_steps)
    return False


def autoencoder_report(autoencoder: torch.nn.Module, held_out, config: RunConfig, folder: Path) -> dict:
    """Stage 1's reconstruction error on held-out healthy inputs (it bounds what the LDM can see), and a PNG."""
    report = {"parameters": count_parameters(autoencoder), "kind": config.autoencoder.kind}
    recorded = read_safetensors_metadata(folder.parent / AUTOENCODER).get("training")
    if recorded:
        report["training"] = json.loads(recorded)
    if len(held_out) == 0:
        log.warning("no healthy held-out inputs: the autoencoder's reconstruction error is not measured")
        return report
    space = LatentSpace(autoencoder, 1.0, config.autoencoder.kind)
    device = next(autoencoder.parameters()).device
    errors, brain_errors = [], []
    for start in range(0, len(held_out), 64):
        items = [held_out[i] for i in range(start, min(start + 64, len(held_out)))]
        images = torch.stack([item["image"] for item in items]).to(device)
        brain = torch.stack([item["brain"] for item in items]).to(device) > 0
        error = (space.decode(space.encode(images)) - images).abs().mean(dim=1, keepdim=True)
        errors.append(error.flatten().cpu())
        brain_errors.append(error[brain].cpu())
    report |= {"heldout_inputs": len(held_out), "heldout_l1": float(torch.cat(errors).mean()),
               "heldout_l1_brain": float(torch.cat(brain_errors).mean())}
    save_autoencoder_grid(autoencoder, preview_inputs(held_out, 6), config.autoencoder.kind,
                          folder / "reconstructions.png")
    log.info("autoencoder held-out L1: %.4f (brain %.4f)", report["heldout_l1"], report["heldout_l1_brain"])
    return report


def save_autoencoder_grid(autoencoder, images: torch.Tensor, kind: str, path: Path) -> None:
    """PNG rows: input, autoencoder reconstruction, and |difference| x 4 (first modality; mid slice in 3D)."""
    was_training = autoencoder.training
    space = LatentSpace(autoencoder, 1.0, kind)
    device = next(autoencoder.parameters()).device
    recon = space.decode(space.encode(images.to(device))).cpu()
    autoencoder.train(was_training)
    save_grid([images[:, 0], recon[:, 0], ((recon - images).abs()[:, 0] * 4).clamp(0, 1)], path)


LDM = LatentDiffusion()
