"""Unsupervised detection, shared by ddpm and ldm: train a denoiser on healthy data, calibrate, predict.

Training discovers the cases, splits them by case (train / calibration), trains
the denoiser on healthy inputs (axial slices without a label voxel, or 3D
lesion-free volumes) in the model's diffusion space, then calibrates the
threshold on the held-out healthy cases, for anodiff and for the intensity
baseline alike. Prediction is :func:`anodiff.methods.scoring.detect`. What an
LDM adds (its autoencoder, its latent space) is :mod:`anodiff.methods.ldm`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from anodiff import distributed
from anodiff.config import RunConfig, config_to_dict, with_overrides
from anodiff.data.cases import Case, discover, select_modalities
from anodiff.data.datasets import SliceDataset, VolumeDataset, brain_patches
from anodiff.diffusion.sampler import build_scheduler
from anodiff.diffusion.spaces import PixelSpace, Space, to_model_range
from anodiff.errors import ConfigError, DataError
from anodiff.evaluation.baseline import baseline_modality, baseline_score
from anodiff.evaluation.floor import floor_figures, floor_samples, ssim_map, tissue_zones, zone_modality
from anodiff.evaluation.metrics import calibrate_threshold
from anodiff.evaluation.report import Report
from anodiff.figures import BLUE, RED, focus_slice, ras_view, save_grid, save_overlay
from anodiff.inference.cases import PreparedCase, prepare
from anodiff.inference.prediction import Prediction
from anodiff.inference.standardise import ResidualStats, edge_strength
from anodiff.io import read_volume
from anodiff.methods.base import Method, check_image_size, checkpoint_identity, preview_inputs, seeded
from anodiff.methods.scoring import detect, finish, reconstruct_volume, score_slices
from anodiff.modelfolder import WEIGHTS, TrainedModel, begin, save_model
from anodiff.models import build_network, count_parameters
from anodiff.prepare import preparation_record
from anodiff.progress import Progress, staged
from anodiff.training.loop import fit
from anodiff.training.objectives import DenoisingObjective
from anodiff.weights import load_weights

log = logging.getLogger(__name__)

STATS_CASES = 8  # calibration cases the healthy residual statistics are fitted on (their grids are kept in memory)


class AnomalyMethod(Method):
    """A denoiser trained on healthy data; the residual of its reconstruction is the anomaly map."""

    outputs = {"map": "score"}
    sampler_section = "anomaly"
    stage_name = ""  # the denoiser's stage in progress messages, when it has a stage before it

    def validate(self, config: RunConfig) -> None:
        factor = 2 ** (len(config.model.channels) - 1)  # the UNet's downsampling
        check_image_size(config, factor * self.downsampling(config))
        if max((config.anomaly.t0, *config.anomaly.extra_t0)) >= config.scheduler.num_train_timesteps:
            raise ConfigError(f"anomaly.t0 ({config.anomaly.t0}) must be below scheduler.num_train_timesteps "
                              f"({config.scheduler.num_train_timesteps})")
        if config.scheduler.noise == "simplex" and config.model.spatial_dims == 3:
            raise ConfigError("scheduler.noise: simplex is for 2D pixel-space DDPMs; use gaussian or coarse")
        patch = config.train.patch_size
        if patch is not None and (config.model.spatial_dims != 2 or self.downsampling(config) != 1):
            raise ConfigError("train.patch_size is for 2D pixel-space DDPMs (kind: ddpm, model.spatial_dims: 2)")
        if patch is not None and (patch > config.data.image_size or patch % factor):
            raise ConfigError(f"train.patch_size ({patch}) must be at most data.image_size "
                              f"({config.data.image_size}) and a multiple of {factor}")

    def downsampling(self, config: RunConfig) -> int:
        """How many times smaller, per axis, the diffused sample is than the image."""
        return 1

    def diffusion_space(self, train_set, held_out: list[Case], modalities: tuple[str, ...], config: RunConfig,
                        out: Path, meta: dict, *, device: torch.device, resume: bool,
                        progress: Progress | None) -> tuple[Space, torch.Tensor | None]:
        """Where the denoiser trains, and its training inputs when they are not the images (latents)."""
        return PixelSpace(), None

    def train(self, data: Path, config: RunConfig, out: Path, *, device: torch.device, resume: bool = False,
              progress: Progress | None = None) -> None:
        found = discover(data)
        if not found.cases:
            raise DataError(f"{data}: no cases found")
        modalities = select_modalities(found.cases, config.data.modalities)
        train_cases, val_cases = split_cases(found.cases, config.train.val_fraction, config.train.seed)
        # Under torchrun each rank preprocesses and trains on its own cases: disjoint samples.
        rank_cases = distributed.partition(train_cases, config.train.seed)
        train_set = healthy_dataset(rank_cases, modalities, config)
        log.info("training on %d healthy %s of %d cases; %d cases held out for calibration", len(train_set),
                 "slices" if config.model.spatial_dims == 2 else "volumes", len(rank_cases), len(val_cases))
        begin(out)
        meta = training_meta(self.kind, data, found.layouts, modalities, config, train_cases, val_cases, rank_cases,
                             len(train_set))
        space, latents = self.diffusion_space(train_set, val_cases, modalities, config, out, meta, device=device,
                                              resume=resume, progress=progress)
        network, result = self.train_denoiser(train_set, latents, space, modalities, config, out, device=device,
                                              resume=resume, progress=progress)
        meta["training"] = result.summary(config.train.num_steps, device)
        if not distributed.is_main():
            return
        model = TrainedModel(config=config, network=network.eval(), meta=meta, folder=out, space=space)
        meta |= calibrate(model, val_cases, progress=progress, figure=out / "healthy_floor.png")
        save_model(out, config, network, meta)

    def train_denoiser(self, train_set, latents: torch.Tensor | None, space: Space, modalities: tuple[str, ...],
                       config: RunConfig, out: Path, *, device: torch.device, resume: bool,
                       progress: Progress | None):
        """The denoiser, trained by the one loop on images in [-1, 1] or on scaled latents."""

        def sample_batch(generator: torch.Generator) -> dict:
            index = torch.randint(len(train_set), (config.train.batch_size,), generator=generator)
            if latents is not None:
                return {"x0": latents[index]}
            items = [train_set[int(i)] for i in index]
            images = torch.stack([item["image"] for item in items])
            if config.train.patch_size is not None:
                brains = torch.stack([item["brain"] for item in items])
                images = brain_patches(images, brains, config.train.patch_size, generator)
            return {"x0": to_model_range(images)}

        in_channels = len(modalities) if latents is None else latents.shape[1]
        network = seeded(lambda: build_network(config.model, in_channels=in_channels), config.train.seed)
        log.info("denoiser: %s parameters", f"{count_parameters(network):,}")
        objective = DenoisingObjective(network, build_scheduler(config.scheduler, "ddpm"), config.scheduler)
        preview = preview_inputs(train_set)
        trained, result = fit(
            objective, sample_batch, config.train, out, device=device, resume=resume,
            config_text=checkpoint_identity(config), progress=staged(progress, self.stage_name),
            on_sample=lambda step, ema: self.save_samples(ema.network, preview, config, out / "samples", step,
                                                          space),
        )
        return trained.network, result

    def save_samples(self, network, preview: torch.Tensor, config: RunConfig, folder: Path, step: int,
                     space: Space) -> None:
        """PNG rows of a training step: input, reconstruction and residual x 4 (first modality; 3D: mid slice)."""
        network.eval()
        residual, recon, _ = score_slices(network, preview, config, space=space,
                                          generator=torch.Generator().manual_seed(0))
        save_grid([preview[:, 0], recon[:, 0], (residual[:, 0] * 4).clamp(0, 1)], folder / f"{step:07d}.png")

    def load(self, folder: Path, config: RunConfig, meta: dict[str, Any], device: torch.device) -> TrainedModel:
        space = self.load_space(folder, config, meta, device)
        network = build_network(config.model, in_channels=self.in_channels(config, meta))
        load_weights(network, folder / WEIGHTS)
        return TrainedModel(config=config, network=network.to(device).eval(), meta=meta, folder=folder, space=space)

    def load_space(self, folder: Path, config: RunConfig, meta: dict[str, Any], device: torch.device) -> Space:
        return PixelSpace()

    def in_channels(self, config: RunConfig, meta: dict[str, Any]) -> int:
        """Channels of the diffused sample: the modalities (pixels)."""
        return len(meta["modalities"])

    def describe(self, model: TrainedModel) -> str:
        line = f"threshold {model.meta['threshold']:.4g} at {model.config.anomaly.fpr:.1%} healthy FPR"
        zones = model.meta.get("healthy_floor", {}).get("zones", {})
        if zones:
            line += "; healthy floor, score p99 / SSIM: " + ", ".join(
                f"{zone.replace('_', ' ')} {z['score_p99']:.3f} / {z['ssim_mean']:.3f}" for zone, z in zones.items())
        return line

    def threshold(self, model: TrainedModel, given: float | None) -> float:
        chosen = given if given is not None else model.config.anomaly.threshold
        chosen = model.meta.get("threshold") if chosen is None else chosen
        if chosen is None:
            raise DataError(f"{model.folder}: the model has no calibrated threshold; pass --threshold")
        return chosen

    def predict(self, model: TrainedModel, case: Case, *, threshold: float, generator: torch.Generator | None = None,
                samples: int | None = None, detail: bool = False, prepared=None,
                progress: Progress | None = None) -> Prediction:
        return detect(model.network, model.config, case, model.modalities, threshold=threshold,
                      stats=residual_stats(model), space=model.space, generator=generator, detail=detail,
                      progress=progress)

    def evaluate(self, model: TrainedModel, data: Path, *, seed: int = 0, samples: int | None = None,
                 overrides: list[str] | None = None, overlays: Path | None = None,
                 progress: Progress | None = None) -> Report:
        from anodiff.methods.anomaly_eval import evaluate_anomaly

        model = with_anomaly_settings(model, overrides or [], progress=staged(progress, "recalibrating"))
        return evaluate_anomaly(self, model, data, seed=seed, overlays=overlays, progress=progress)


def residual_stats(model: TrainedModel) -> ResidualStats | None:
    """The healthy residual statistics fitted at calibration (``anomaly.score: zscore``), if any."""
    raw = model.meta.get("residual_stats")
    return ResidualStats.from_dict(raw) if raw else None


def split_cases(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Train/validation split by case (seeded); at least one case on each side."""
    if len(cases) < 2:
        raise DataError(f"need at least 2 cases (one to train, one to calibrate on), found {len(cases)}")
    order = np.random.default_rng(seed).permutation(len(cases))
    num_val = min(max(1, int(round(len(cases) * val_fraction))), len(cases) - 1)
    val = sorted(order[:num_val].tolist())
    return [c for i, c in enumerate(cases) if i not in val], [cases[i] for i in val]


def healthy_dataset(cases: list[Case], modalities: tuple[str, ...], config: RunConfig, *,
                    allow_empty: bool = False) -> SliceDataset | VolumeDataset:
    """Healthy training inputs: axial slices without a label voxel (2D), or lesion-free volumes (3D)."""
    if config.model.spatial_dims == 3:
        dataset = VolumeDataset(cases, modalities, config.data, healthy_only=True)
        what = "lesion-free volumes (3D models train on healthy scans, e.g. IXI)"
    else:
        dataset = SliceDataset(cases, modalities, config.data, healthy_only=True)
        what = "healthy slices (every slice holds a label voxel)"
    if len(dataset) == 0 and not allow_empty:
        raise DataError(f"no {what} among {len(cases)} training case(s)")
    return dataset


def training_meta(kind: str, data: Path, layouts, modalities: tuple[str, ...], config: RunConfig,
                  train_cases: list[Case], val_cases: list[Case], rank_cases: list[Case], num_inputs: int) -> dict:
    """What meta.json records of the data a detection model was trained and calibrated on."""
    return {
        "kind": kind,
        "modalities": list(modalities),
        "preprocessing": config_to_dict(config.data),
        "preparation": preparation_record(data),
        "training_data": {
            "root": str(data.resolve()),
            "train_cases": [c.id for c in train_cases],
            "calibration_cases": [c.id for c in val_cases],
            "cases_per_process": distributed.gather([c.id for c in rank_cases]),
            "num_healthy_inputs": sum(distributed.gather(num_inputs)),
            "layouts": list(layouts),
        },
    }


def calibrate(model: TrainedModel, healthy_cases: list[Case], *, seed: int = 0, progress: Progress | None = None,
              figure: Path | None = None) -> dict:
    """Thresholds at the configured healthy false-positive rate, for anodiff and the intensity baseline; the
    healthy residual statistics a ``zscore`` map needs (fitted first, on up to :data:`STATS_CASES` cases); and
    the healthy floor (:mod:`anodiff.evaluation.floor`; a PNG of the first case to ``figure``).

    Voxels used: brain voxels of the axial slices without any label voxel (the
    same healthy definition as training), on the input grid, as detection sees them.
    """
    config = model.config
    kept = {}
    stats = None
    if config.anomaly.score == "zscore":
        samples = []
        for index, case in enumerate(healthy_cases[:STATS_CASES]):
            kept[index] = reconstructed(model, case, seed)
            samples.append(healthy_samples(*kept[index], config.model.spatial_dims, seed))
            if progress is not None:
                progress(index + 1, len(healthy_cases), f"calibrating {case.id}")
        stats = ResidualStats.fit(*(np.concatenate(parts, axis=1) for parts in zip(*samples)))
    model_scores, baseline_scores, floors = [], [], []
    modality = zone_modality(model.modalities)
    fitted_on = len(kept)
    for index, case in enumerate(healthy_cases):
        prepared, grid = kept.pop(index) if index in kept else reconstructed(model, case, seed)
        result = finish(prepared, grid, config, stats, threshold=np.inf, detail=True)
        healthy = result.brain & healthy_slices(case, result.brain.shape)
        model_scores.append(result.maps["score"][healthy])
        image = baseline_image(case, model.modalities, result)
        baseline_scores.append(baseline_score(image, result.brain)[healthy])
        zones = tissue_zones(result.maps["normalised"][model.modalities.index(modality)], result.brain,
                             result.reference.spacing_mm, modality)
        floors.append(floor_samples(result.maps["residual"], ssim_map(result.maps["normalised"],
                                                                      result.maps["reconstruction"]), zones, healthy))
        if figure is not None and index == 0:
            save_floor_figure(figure, result, zones, healthy)
        if progress is not None and index >= fitted_on:  # the first ones were counted as they were fitted on
            progress(index + 1, len(healthy_cases), f"calibrating {case.id}")
    fpr = config.anomaly.fpr
    return {
        "threshold": calibrate_threshold(model_scores, fpr),
        "baseline_threshold": calibrate_threshold(baseline_scores, fpr),
        "calibration": {"fpr": fpr, "cases": [c.id for c in healthy_cases],
                        "voxels": int(sum(s.size for s in model_scores))},
        "residual_stats": stats.to_dict() if stats is not None else None,
        "healthy_floor": {"zones_from": modality, "zones": floor_figures(floors)},
    }


def reconstructed(model: TrainedModel, case: Case, seed: int) -> tuple[PreparedCase, dict[str, torch.Tensor]]:
    """A calibration case prepared (with its label on the network grid) and reconstructed."""
    prepared = prepare(case, model.modalities, model.config.data, model.config.model.spatial_dims, with_label=True)
    grid = reconstruct_volume(model.network, prepared, model.config, space=model.space,
                              generator=torch.Generator().manual_seed(seed))
    return prepared, grid


def healthy_samples(prepared: PreparedCase, grid: dict[str, torch.Tensor], spatial_dims: int, seed: int,
                    limit: int = 200_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residual, reconstruction and edge strength (C, N) of up to ``limit`` healthy brain voxels of one case on
    the network grid: brain slices with no label voxel on them or next to them (a 3D model: a lesion-free volume)."""
    inside = prepared.brain_grid[0].numpy() > 0
    label = prepared.label_grid
    if label is not None and (label > 0).any():
        if spatial_dims == 3:
            return tuple(np.zeros((grid["residual"].shape[0], 0), np.float32) for _ in range(3))
        lesion_on = ndimage.binary_dilation((label[0] > 0).flatten(0, 1).any(0).numpy(), iterations=1)
        inside &= ~lesion_on[None, None, :]
    where = np.flatnonzero(inside)
    if where.size > limit:
        where = np.sort(np.random.default_rng(seed).choice(where, limit, replace=False))
    edges = edge_strength(grid["reconstruction"], spatial_dims)
    flat = lambda values: values.flatten(1).numpy()[:, where]  # noqa: E731
    return flat(grid["residual"]), flat(grid["reconstruction"]), flat(edges)


def with_anomaly_settings(model: TrainedModel, overrides: list[str], *, progress: Progress | None = None
                          ) -> TrainedModel:
    """The model with ``anomaly.*`` / ``sampler.*`` overrides; thresholds recalibrated on its calibration cases.

    A calibrated threshold belongs to the settings it was calibrated with (t0,
    steps, filtering), so changing them without recalibrating would be dishonest.
    """
    if not overrides:
        return model
    bad = [o for o in overrides if not o.strip().startswith(("anomaly.", "sampler."))]
    if bad:
        raise ConfigError(f"only anomaly.* and sampler.* settings can change after training, not {bad[0]!r}")
    changed = replace(model, config=with_overrides(model.config, overrides))
    source = model.meta.get("training_data", {})
    wanted = set(source.get("calibration_cases", []))
    cases = [c for c in discover(source.get("root", "")).cases if c.id in wanted] if wanted else []
    if not cases:
        raise DataError(f"{model.folder}: calibration cases not found under {source.get('root')!r}; "
                        "cannot recalibrate for new anomaly settings")
    log.info("recalibrating for %s on %d healthy case(s)", " ".join(overrides), len(cases))
    return replace(changed, meta={**model.meta, **calibrate(changed, cases, progress=progress)})


def healthy_slices(case: Case, shape) -> np.ndarray:
    """Bool (X, Y, Z): True on the axial (RAS z) slices with no label voxel; all True without a label."""
    if case.label is None:
        return np.ones(shape, bool)
    label = read_volume(case.label, allow_constant=True)
    ornt = nib.orientations.io_orientation(label.affine)
    axis = int(np.argmax(np.abs(ornt[:, 0]) == 2))  # the voxel axis running along world z
    lesion_on = (label.data > 0).any(axis=tuple(a for a in range(3) if a != axis))
    view = [1, 1, 1]
    view[axis] = -1
    return np.broadcast_to((~lesion_on).reshape(view), shape)


def baseline_image(case: Case, modalities: tuple[str, ...], result: Prediction) -> np.ndarray:
    """The baseline's image (X, Y, Z); reuses what detection already read when it is the same file."""
    name = baseline_modality(list(case.images), modalities)
    return result.reference.data if name == modalities[0] else read_volume(case.images[name]).data


def save_floor_figure(path: Path, result: Prediction, zones: dict[str, np.ndarray], healthy: np.ndarray) -> None:
    """PNG of the healthy axial slice with most brain: normalised input, reconstruction, score, the zones (grey
    levels: edge, white matter, cortex, ventricle rim from dark to bright), and the rim (red) and edge (blue)."""
    ras = ras_view(result.reference.affine)
    z = focus_slice(ras(healthy & result.brain))
    base = ras(result.maps["normalised"][0])[..., z]
    recon = ras(result.maps["reconstruction"][0] * result.brain)[..., z]
    score = ras(result.maps["score"])
    top = float(np.percentile(score[score > 0], 99.9)) if (score > 0).any() else 1.0
    levels = np.zeros_like(base)
    for value, name in ((0.25, "brain_edge"), (0.5, "white_matter"), (0.75, "cortex"), (1.0, "ventricle_rim")):
        levels[ras(zones[name])[..., z]] = value
    save_overlay(path, base, [recon, np.clip(score[..., z] / max(top, 1e-6), 0, 1), levels],
                 [(ras(zones["ventricle_rim"])[..., z], RED), (ras(zones["brain_edge"])[..., z], BLUE)])
