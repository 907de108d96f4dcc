"""Reconstruction residual -> anomaly map -> threshold -> mask: how ddpm and ldm models predict a case.

The recipe (Pinaya et al. 2022; Wyatt et al. 2022, AnoDDPM):

1. preprocess with the model's chain (RAS, crop to brain, resize, normalise);
2. batch all brain-holding axial slices (or, in 3D, the whole volume) into the
   model's diffusion space (pixels, or an LDM's latents) and through the sampler
   (noise to ``t0``, denoise back), then decode;
3. the map is the absolute residual averaged over modalities, median-filtered,
   restricted to the (eroded) brain;
4. the map goes back to the input's own grid, where it is thresholded (calibrated
   on healthy held-out data, or given) and components below a minimum volume are removed.

This module does not train, and it does not compute metrics.
"""

from __future__ import annotations

import numpy as np
import torch

from anodiff.config import RunConfig
from anodiff.data.cases import Case
from anodiff.diffusion.sampler import num_network_evals, reconstruct
from anodiff.diffusion.spaces import PixelSpace, Space
from anodiff.inference.cases import PreparedCase, prepare
from anodiff.inference.masks import min_voxels, remove_small_components, restrict_to_brain
from anodiff.inference.prediction import Prediction, Timings
from anodiff.inference.volume import brain_slices, map_slices, map_volume
from anodiff.progress import Progress


def score_slices(
    network: torch.nn.Module,
    slices: torch.Tensor,
    config: RunConfig,
    *,
    space: Space | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Residual scores of a batch of images (B, C, *S) in [0, 1]: 2D slices or 3D volumes.

    Encodes into the model's diffusion space (pixels, or an autoencoder's latents),
    reconstructs at every noise level (``t0`` and ``extra_t0``), ``num_draws`` times
    each, decodes, and averages the images. Returns the residual (B, 1, *S), the
    mean reconstruction (B, C, *S) and the number of network evaluations per input.
    """
    cfg = config.anomaly
    space = space or PixelSpace()
    device = next(network.parameters()).device
    images = slices.to(device)
    x_0 = space.encode(images)
    recon_sum = torch.zeros_like(images)
    levels = (cfg.t0, *cfg.extra_t0)
    for t0 in levels:
        for _ in range(cfg.num_draws):
            x_hat = reconstruct(network, x_0, config.scheduler, config.sampler, t0=t0, generator=generator,
                                clip=space.clip)
            recon_sum += space.decode(x_hat)
    recon = recon_sum / (len(levels) * cfg.num_draws)
    residual = (recon - images).abs().mean(dim=1, keepdim=True)
    return residual.float().cpu(), recon.float().cpu(), passes_per_input(config)


def passes_per_input(config: RunConfig) -> int:
    """Network passes per slice (or volume): every noise level, ``num_draws`` times each."""
    levels = (config.anomaly.t0, *config.anomaly.extra_t0)
    return config.anomaly.num_draws * sum(num_network_evals(config.scheduler, config.sampler, t0) for t0 in levels)


def score_volume(network: torch.nn.Module, prepared: PreparedCase, config: RunConfig, *, space: Space | None = None,
                 generator: torch.Generator | None = None,
                 progress: Progress | None = None) -> tuple[dict[str, torch.Tensor], int, int]:
    """The anomaly map of one prepared volume on the network grid: ``score`` (1, H, W, D) (filtered, inside
    the eroded brain) and ``reconstruction`` (C, H, W, D); with the network passes per slice and the slices run."""
    def score(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        residual, recon, _ = score_slices(network, batch, config, space=space, generator=generator)
        return {"score": residual, "reconstruction": recon}

    if config.model.spatial_dims == 3:
        grid = map_volume(score, prepared.image, progress=progress)
    else:
        grid = map_slices(score, prepared.image, prepared.brain_grid, batch_size=config.anomaly.batch_size,
                          progress=progress)
    grid["score"] = restrict_to_brain(grid["score"], prepared.brain_grid, median_size=config.anomaly.median_size,
                                      erosion=config.anomaly.brain_erosion)
    num_slices = 1 if config.model.spatial_dims == 3 else len(brain_slices(prepared.brain_grid))
    return grid, passes_per_input(config), num_slices


def detect(network: torch.nn.Module, config: RunConfig, case: Case, modalities: tuple[str, ...], *, threshold: float,
           space: Space | None = None, generator: torch.Generator | None = None, detail: bool = False,
           progress: Progress | None = None) -> Prediction:
    """Score one case and threshold it, on the input's own grid (see the module doc).

    Maps: ``score`` (X, Y, Z); with ``detail``, ``reconstruction`` and ``normalised`` (the input as the network
    saw it), (C, X, Y, Z) in [0, 1].
    """
    timings = Timings()
    with timings.measure("preprocess_s"):
        prepared = prepare(case, modalities, config.data, config.model.spatial_dims)
    with timings.measure("network_s"):
        grid, evals, num_slices = score_volume(network, prepared, config, space=space, generator=generator,
                                               progress=progress)
    with timings.measure("postprocess_s"):
        brain = prepared.brain
        score_map = np.where(brain, np.clip(prepared.on_input_grid(grid["score"])[0], 0, None), 0).astype(np.float32)
        mask = remove_small_components(score_map > threshold,
                                       min_voxels(config.anomaly.min_component_mm3, prepared.reference.spacing_mm))
        maps = {"score": score_map}
        if detail:
            maps["reconstruction"] = prepared.on_input_grid(grid["reconstruction"])
            maps["normalised"] = prepared.on_input_grid(prepared.image.float())
    return Prediction(mask=mask, maps=maps, reference=prepared.reference, brain=brain, threshold=threshold,
                      timings=dict(timings), num_network_evals=evals, num_slices=num_slices)
