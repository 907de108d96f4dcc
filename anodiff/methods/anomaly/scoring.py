"""Reconstruction residual -> anomaly map -> threshold -> mask: how ddpm and ldm models predict a case.

The method (Pinaya et al. 2022; Wyatt et al. 2022, AnoDDPM):

1. preprocess with the model's chain (RAS, crop to brain, resize, normalise);
2. batch all brain-holding axial slices (or, in 3D, the whole volume) into the
   model's diffusion space (pixels, or an LDM's latents) and through the sampler
   (noise to ``t0``, denoise back), then decode;
3. the map is each modality's residual, as it is (``anomaly.score: residual``) or
   standardised by healthy residuals like it (``zscore``, :mod:`anodiff.inference.standardise`;
   with ``anomaly.centre``, less the scan's median z per modality, and with ``anomaly.scale``, over
   the scan's robust spread of z per modality), combined over modalities (mean or max),
   median-filtered, restricted to the (eroded) brain;
4. the map goes back to the input's own grid, where it is thresholded (calibrated
   on healthy held-out data, or given) and components below a minimum volume are removed.

This module does not train, and it does not compute metrics.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from anodiff.config import RunConfig
from anodiff.data.cases import Case
from anodiff.diffusion.noise import checkerboard, make_noise
from anodiff.diffusion.sampler import num_network_evals, reconstruct
from anodiff.diffusion.spaces import PixelSpace, Space
from anodiff.errors import DataError
from anodiff.inference.cases import PreprocessedCase, preprocess
from anodiff.inference.masks import min_voxels, remove_small_components, restrict_to_brain
from anodiff.inference.prediction import Prediction, Timings
from anodiff.inference.standardise import ResidualStats, combine, edge_strength
from anodiff.inference.volume import brain_slices, map_slices, map_volume
from anodiff.progress import Progress

MAD_TO_SD = 1.4826  # a normal distribution's standard deviation per unit of median absolute deviation


def reconstruct_levels(
    network: torch.nn.Module,
    slices: torch.Tensor,
    config: RunConfig,
    *,
    space: Space | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The healthy reconstruction at each noise level (L, B, C, *S) of a batch of images (B, C, *S) in [0, 1]:
    2D slices or 3D volumes.

    Encodes into the model's diffusion space (pixels, or an autoencoder's latents),
    reconstructs at every noise level (``t0`` and ``extra_t0``), ``num_draws`` times
    each (with ``antithetic``, each draw ε also as -ε), decodes, and averages the draws of each level.
    """
    cfg = config.anomaly
    space = space or PixelSpace()
    device = next(network.parameters()).device
    images = slices.to(device)
    x_0 = space.encode(images)
    levels = []
    signs = (1, -1) if cfg.antithetic else (1,)
    for index, t0 in enumerate(cfg.levels):
        groups = cell_groups(x_0, config.scheduler.noise_cell_px if cfg.is_masked(index) else None)
        recon_sum = torch.zeros_like(images)
        for _ in range(cfg.num_draws):
            eps = make_noise(x_0, config.scheduler, generator=generator)
            for sign in signs:
                x_hat = torch.zeros_like(x_0)
                for region in groups:  # masked noising: each group filled in from the other
                    part = reconstruct(network, x_0, config.scheduler, config.sampler, t0=t0, generator=generator,
                                       clip=space.clip, noise=sign * eps, region=region)
                    x_hat = x_hat + (part if region is None else region * part)
                recon_sum += space.decode(x_hat)
        levels.append((recon_sum / cfg.draws_per_level).float().cpu())
    return torch.stack(levels)


def cell_groups(x_0: torch.Tensor, cell_px: int | None) -> list[torch.Tensor | None]:
    """The regions reconstructed in turn: the whole sample (``None``), or the two checkerboard groups of
    ``cell_px`` cells (B, 1, H, W) of masked noising, each filled in from the other."""
    if cell_px is None:
        return [None]
    shape, zero = tuple(x_0.shape), torch.zeros(x_0.shape[0], dtype=torch.long)
    return [checkerboard(shape, cell_px, zero + group, torch.zeros(x_0.shape[0], 2, dtype=torch.long)).to(x_0)
            for group in (0, 1)]


def reconstruct_slices(network: torch.nn.Module, slices: torch.Tensor, config: RunConfig, *,
                       space: Space | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The healthy reconstruction (B, C, *S) of a batch (B, C, *S): :func:`reconstruct_levels` averaged."""
    return reconstruct_levels(network, slices, config, space=space, generator=generator).mean(dim=0)


def score_slices(network: torch.nn.Module, slices: torch.Tensor, config: RunConfig, *, space: Space | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The plain residual (B, 1, *S), |x - x_hat| averaged over modalities, of a batch (B, C, *S); with the
    reconstruction (B, C, *S) and the network passes per input (training previews use it)."""
    recon = reconstruct_slices(network, slices, config, space=space, generator=generator)
    return (recon - slices.float().cpu()).abs().mean(dim=1, keepdim=True), recon, passes_per_input(config)


def passes_per_input(config: RunConfig) -> int:
    """Network passes per slice (or volume): every noise level, ``num_draws`` times each (twice with
    ``antithetic``; a masked level twice again, once per checkerboard group)."""
    cfg = config.anomaly
    return cfg.draws_per_level * sum((2 if cfg.is_masked(index) else 1)
                                     * num_network_evals(config.scheduler, config.sampler, t0)
                                     for index, t0 in enumerate(cfg.levels))


def reconstruct_volume(network: torch.nn.Module, preprocessed: PreprocessedCase, config: RunConfig, *,
                       space: Space | None = None, generator: torch.Generator | None = None,
                       progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """One preprocessed volume on the network grid: ``reconstruction`` and the signed ``residual`` x - x_hat,
    (C, H, W, D) each, zero on the slices without brain."""
    return reconstruct_grid(network, preprocessed.image, preprocessed.brain_grid, config, space=space,
                            generator=generator, progress=progress)


def reconstruct_grid(network: torch.nn.Module, image: torch.Tensor, brain_grid: torch.Tensor, config: RunConfig, *,
                     space: Space | None = None, generator: torch.Generator | None = None,
                     progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """:func:`reconstruct_volume` of an ``image`` (C, H, W, D) on the network grid: a 2D model runs on the slices
    where ``brain_grid`` (1, H, W, D) holds brain, a 3D model on the whole volume."""
    def run(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        levels = reconstruct_levels(network, batch, config, space=space, generator=generator)
        recon = levels.mean(dim=0)
        out = {"residual": batch.float().cpu() - recon, "reconstruction": recon}
        if config.anomaly.levels_apart:  # each level scored on its own: (B, L * C, *S), level-major
            out["levels_residual"] = (batch.float().cpu()[None] - levels).transpose(0, 1).flatten(1, 2)
            out["levels_reconstruction"] = levels.transpose(0, 1).flatten(1, 2)
        return out

    if config.model.spatial_dims == 3:
        return map_volume(run, image, progress=progress)
    return map_slices(run, image, brain_grid, batch_size=config.anomaly.batch_size, progress=progress)


def first_level(grid: dict[str, torch.Tensor], config: RunConfig) -> dict[str, torch.Tensor]:
    """The grid's ``residual`` and ``reconstruction`` (C, *S): averaged over the levels, or, scored apart, those
    of the first level (``t0``)."""
    channels = grid["residual"].shape[0]
    return {name: values[:channels] for name, values in zip(("residual", "reconstruction"),
                                                             scored_residuals(grid, config))}


def scored_residuals(grid: dict[str, torch.Tensor], config: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The signed residual and reconstruction (K, *S) the map scores: one channel per modality, or, with
    ``anomaly.levels_apart``, one per noise level and modality (level-major)."""
    if config.anomaly.levels_apart:
        return grid["levels_residual"], grid["levels_reconstruction"]
    return grid["residual"], grid["reconstruction"]


def anomaly_grid(grid: dict[str, torch.Tensor], brain_grid: torch.Tensor, config: RunConfig,
                 stats: ResidualStats | None) -> torch.Tensor:
    """The anomaly map (1, H, W, D) of a :func:`reconstruct_volume` grid: per-modality |residual| or |z-score|,
    combined over modalities (and, scored apart, then over noise levels), median-filtered, zero outside the
    eroded brain."""
    cfg = config.anomaly
    residual, reconstruction = scored_residuals(grid, config)
    if cfg.score == "zscore":
        if stats is None:
            raise DataError("anomaly.score: zscore needs the healthy residual statistics of a calibration; this "
                            "model has none (recalibrate: anodiff evaluate --model M --data D anomaly.score=zscore)")
        edges = edge_strength(reconstruction, config.model.spatial_dims)
        z = stats.zscores(residual, reconstruction, edges)
        if cfg.centre:
            z = z - scan_offset(z, brain_grid)
        if cfg.scale:
            z = z / scan_spread(z, brain_grid)
        # Zero outside the brain, where no healthy statistic holds, before the median filter reaches the edge.
        per_channel = z.abs() * (brain_grid > 0)
    else:
        per_channel = residual.abs()
    levels = per_channel.unflatten(0, (-1, grid["residual"].shape[0]))  # (L, C, *S); L = 1 unless apart
    per_level = torch.cat([combine(level, cfg.combine) for level in levels])  # (L, *S)
    score = combine(per_level, "max" if cfg.combine_levels == "max" else "mean")
    return restrict_to_brain(score, brain_grid, median_size=cfg.median_size, erosion=cfg.brain_erosion)


def scan_offset(z: torch.Tensor, brain_grid: torch.Tensor) -> torch.Tensor:
    """Per modality, the median of the signed z-scores (C, *S) over the brain (1, *S): (C, 1, ..., 1).

    Lesions fill a minority of the brain, so the median is the healthy tissue's offset from the calibration
    scans (0 on scans like them)."""
    values = z[:, brain_grid[0] > 0]
    offset = values.median(dim=1).values if values.shape[1] else z.new_zeros(z.shape[0])
    return per_modality_view(offset, z.ndim)


def scan_spread(z: torch.Tensor, brain_grid: torch.Tensor) -> torch.Tensor:
    """Per modality, the robust standard deviation (1.4826 x median absolute deviation) of the signed z-scores
    (C, *S) over the brain (1, *S): (C, 1, ..., 1).

    About 1 on scans like the calibration ones; larger where the whole scan is reconstructed more loosely. A
    lesion is a minority of the brain, so it barely moves it (a median, like :func:`scan_offset`)."""
    values = z[:, brain_grid[0] > 0]
    if not values.shape[1]:
        return per_modality_view(z.new_ones(z.shape[0]), z.ndim)
    deviation = (values - values.median(dim=1, keepdim=True).values).abs().median(dim=1).values
    return per_modality_view((MAD_TO_SD * deviation).clamp_min(1e-3), z.ndim)


def per_modality_view(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """(C,) -> (C, 1, ..., 1), broadcastable against a (C, *S) map of ``ndim`` dimensions."""
    return values.view(-1, *[1] * (ndim - 1))


def num_slices_run(preprocessed: PreprocessedCase, config: RunConfig) -> int:
    """Network inputs per volume: its brain slices (2D models), or 1 (3D)."""
    return 1 if config.model.spatial_dims == 3 else len(brain_slices(preprocessed.brain_grid))


def detect(network: torch.nn.Module, config: RunConfig, case: Case, modalities: tuple[str, ...], *, threshold: float,
           stats: ResidualStats | None = None, space: Space | None = None, generator: torch.Generator | None = None,
           detail: bool = False, progress: Progress | None = None) -> Prediction:
    """Score one case and threshold it, on the input's own grid (see the module doc)."""
    timings = Timings()
    with timings.measure("preprocess_s"):
        preprocessed = preprocess(case, modalities, config.data, config.model.spatial_dims)
    with timings.measure("network_s"):
        grid = reconstruct_volume(network, preprocessed, config, space=space, generator=generator, progress=progress)
    return finish(preprocessed, grid, config, stats, threshold=threshold, detail=detail, timings=timings)


def finish(preprocessed: PreprocessedCase, grid: dict[str, torch.Tensor], config: RunConfig,
           stats: ResidualStats | None, *, threshold: float, detail: bool = False,
           timings: Timings | None = None) -> Prediction:
    """From a :func:`reconstruct_volume` grid to a thresholded prediction on the input's own grid.

    Maps: ``score`` (X, Y, Z); with ``detail``, ``residual`` (X, Y, Z; the plain |x - x_hat| averaged over
    modalities, median-filtered, the reconstruction's fidelity whatever the score), ``reconstruction`` and
    ``normalised`` (the input as the network saw it), (C, X, Y, Z) in [0, 1]. With the noise levels scored apart,
    the residual and reconstruction shown are the first level's (``t0``): each level's map stands on its own.
    """
    timings = timings if timings is not None else Timings()
    with timings.measure("postprocess_s"):
        brain = preprocessed.brain
        on_input = lambda values: np.where(brain, np.clip(preprocessed.on_input_grid(values)[0], 0, None), 0)  # noqa: E731
        score_map = on_input(anomaly_grid(grid, preprocessed.brain_grid, config, stats)).astype(np.float32)
        mask = remove_small_components(score_map > threshold,
                                       min_voxels(config.anomaly.min_component_mm3, preprocessed.reference.spacing_mm))
        maps = {"score": score_map}
        if detail:
            shown = first_level(grid, config)
            plain = replace(config, anomaly=replace(config.anomaly, score="residual", combine="mean",
                                                    combine_levels="reconstruction"))
            maps["residual"] = score_map if plain == config else on_input(
                anomaly_grid(shown, preprocessed.brain_grid, plain, None)).astype(np.float32)
            maps["reconstruction"] = preprocessed.on_input_grid(shown["reconstruction"])
            maps["normalised"] = preprocessed.on_input_grid(preprocessed.image.float())
    return Prediction(mask=mask, maps=maps, reference=preprocessed.reference, brain=brain, threshold=threshold,
                      timings=dict(timings), num_network_evals=passes_per_input(config),
                      num_slices=num_slices_run(preprocessed, config))
