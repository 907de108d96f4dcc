"""Reconstruction residual -> anomaly map -> calibrated threshold -> mask.

The recipe for one case (Pinaya et al. 2022; Wyatt et al. 2022, AnoDDPM):

1. preprocess with the model's chain (RAS, crop to brain, resize, normalise);
2. batch all brain-holding axial slices (or, in 3D, the whole volume) into the
   model's diffusion space (pixels, or an LDM's latents) and through
   :func:`anodiff.diffusion.reconstruct` (noise to ``t0``, DDIM back in K steps), then decode;
3. the map is the absolute residual averaged over modalities, median-filtered,
   restricted to the (eroded) brain;
4. the map goes back to the input's own grid (MONAI inverse of the chain), where it
   is thresholded (calibrated on healthy held-out data, or given), and connected
   components below a minimum volume are removed.

This module does not train, and it does not compute metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from skimage import morphology

from anodiff.config import AnomalyConfig, DataConfig, RunConfig
from anodiff.data.cases import Case
from anodiff.data.transforms import BRAIN, IMAGE, REFERENCE, anodiff_errors, case_item, preprocessing, to_input_grid
from anodiff.diffusion import PixelSpace, Space, build_scheduler, reconstruct
from anodiff.errors import DataError
from anodiff.io import Volume

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class GridScores:
    """Scores of one volume on the network grid: score and brain (1, H, W, D), reconstruction (C, H, W, D)."""

    score: torch.Tensor
    brain: torch.Tensor
    reconstruction: torch.Tensor
    num_network_evals: int
    num_slices: int


@dataclass(frozen=True)
class AnomalyResult:
    """A case's outputs on its input grid: ``score_map`` float32 and ``mask`` uint8, (X, Y, Z)."""

    score_map: np.ndarray
    mask: np.ndarray
    reference: Volume
    threshold: float
    brain: np.ndarray  # bool (X, Y, Z): where scores are defined
    reconstruction: np.ndarray | None = None  # (C, X, Y, Z) in [0, 1], when asked for
    timings: dict[str, float] = field(default_factory=dict)
    num_network_evals: int = 0
    num_slices: int = 0


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
    scheduler = build_scheduler(config.scheduler, cfg.sampler, clip_sample=space.clip)
    images = slices.to(device)
    x_0 = space.encode(images)
    recon_sum = torch.zeros_like(images)
    evals = 0
    levels = (cfg.t0, *cfg.extra_t0)
    for t0 in levels:
        for _ in range(cfg.num_draws):
            x_hat = reconstruct(network, x_0, scheduler, config.scheduler, t0=t0, num_steps=cfg.num_inference_steps,
                                generator=generator, clip=space.clip, eta=cfg.eta)
            recon_sum += space.decode(x_hat)
            evals += cfg.num_inference_steps if cfg.sampler == "ddim" else t0 + 1
    recon = recon_sum / (len(levels) * cfg.num_draws)
    residual = (recon - images).abs().mean(dim=1, keepdim=True)
    return residual.float().cpu(), recon.float().cpu(), evals


def score_volume(
    network: torch.nn.Module,
    image: torch.Tensor,
    brain: torch.Tensor,
    config: RunConfig,
    *,
    space: Space | None = None,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
) -> GridScores:
    """Anomaly map of one preprocessed volume: image (C, H, W, D), brain (1, H, W, D) -> GridScores.

    A 2D model scores the brain-holding axial slices in batches; a 3D model the whole volume at once.
    """
    cfg = config.anomaly
    if config.model.spatial_dims == 3:
        residual, recon, evals = score_slices(network, image[None].float(), config, space=space, generator=generator)
        if progress is not None:
            progress(1, 1)
        return GridScores(postprocess(residual[0], brain, cfg), brain, recon[0], evals, 1)
    z_list = brain_slices(brain)
    score = torch.zeros_like(brain, dtype=torch.float32)
    recon = torch.zeros_like(image, dtype=torch.float32)
    evals = 0
    for start in range(0, len(z_list), cfg.batch_size):
        zs = z_list[start : start + cfg.batch_size]
        slices = image[..., zs].permute(3, 0, 1, 2).float()  # (B, C, H, W)
        residual, x_hat, evals = score_slices(network, slices, config, space=space, generator=generator)
        score[..., zs] = residual.permute(1, 2, 3, 0)
        recon[..., zs] = x_hat.permute(1, 2, 3, 0)
        if progress is not None:
            progress(min(start + cfg.batch_size, len(z_list)), len(z_list))
    return GridScores(postprocess(score, brain, cfg), brain, recon, evals, len(z_list))


def brain_slices(brain: torch.Tensor) -> list[int]:
    """Axial indices z of a (1, H, W, D) brain mask that hold any brain: the slices a 2D model runs on."""
    return torch.nonzero(brain[0].flatten(0, 1).amax(0) > 0).flatten().tolist()


def postprocess(score: torch.Tensor, brain: torch.Tensor, cfg: AnomalyConfig) -> torch.Tensor:
    """Median filter, then zero outside the eroded brain: (1, H, W, D) -> (1, H, W, D)."""
    values = score[0].numpy()
    if cfg.median_size > 1:
        values = ndimage.median_filter(values, size=cfg.median_size)
    inside = brain[0].numpy() > 0
    if cfg.brain_erosion > 0:
        inside = ndimage.binary_erosion(inside, iterations=cfg.brain_erosion)
    return torch.from_numpy(np.where(inside, values, 0).astype(np.float32))[None]


def calibrate_threshold(healthy_scores: list[np.ndarray], fpr: float) -> float:
    """The score quantile that flags ``fpr`` of healthy brain voxels (the label-free threshold)."""
    values = np.concatenate([s.ravel() for s in healthy_scores])
    if values.size == 0:
        raise DataError("no healthy brain voxels to calibrate the threshold on")
    return float(np.quantile(values, 1 - fpr))


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_voxels`` (uint8 in, uint8 out)."""
    if min_voxels <= 1 or not mask.any():
        return mask.astype(np.uint8)
    kept = morphology.remove_small_objects(mask.astype(bool), max_size=min_voxels - 1, connectivity=3)
    return kept.astype(np.uint8)


def prepare(case: Case, modalities: tuple[str, ...], data_cfg: DataConfig, spatial_dims: int = 2):
    """Preprocess one case for a model; returns (chain, item) with item['image'] (C, H, W, D)."""
    missing = [m for m in modalities if m not in case.images]
    if missing:
        raise DataError(
            f"case {case.id}: the model needs modalities {list(modalities)}, but {missing} "
            f"{'is' if len(missing) == 1 else 'are'} missing (it has {list(case.images)})"
        )
    chain = preprocessing(data_cfg, with_label=False, spatial_dims=spatial_dims, keep_reference=True)
    with anodiff_errors():
        return chain, chain(case_item(case, modalities))


def detect(
    network: torch.nn.Module,
    config: RunConfig,
    case: Case,
    modalities: tuple[str, ...],
    *,
    threshold: float,
    space: Space | None = None,
    generator: torch.Generator | None = None,
    with_reconstruction: bool = False,
    progress: ProgressFn | None = None,
) -> AnomalyResult:
    """Score one case and threshold it, on the input's own grid (see module doc).

    ``space`` is where the model diffuses (pixels by default; an LDM's latent space).
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    chain, item = prepare(case, modalities, config.data, config.model.spatial_dims)
    timings["preprocess_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    grid = score_volume(network, item[IMAGE].as_tensor(), item[BRAIN].as_tensor(), config,
                        space=space, generator=generator, progress=progress)
    timings["network_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    reference = item[REFERENCE]
    score_map = to_input_grid(chain, item[IMAGE], grid.score)[0].numpy().astype(np.float32)
    brain = reference.data != 0
    score_map = np.where(brain, np.clip(score_map, 0, None), 0).astype(np.float32)
    voxel_mm3 = float(np.prod(reference.spacing_mm))
    min_voxels = int(np.ceil(config.anomaly.min_component_mm3 / voxel_mm3))
    mask = remove_small_components(score_map > threshold, min_voxels)
    recon = None
    if with_reconstruction:
        recon = to_input_grid(chain, item[IMAGE], grid.reconstruction).numpy().astype(np.float32)
    timings["postprocess_s"] = time.perf_counter() - clock
    return AnomalyResult(score_map=score_map, mask=mask, reference=reference, threshold=threshold, brain=brain,
                         reconstruction=recon, timings=timings, num_network_evals=grid.num_network_evals,
                         num_slices=grid.num_slices)
