"""Unsupervised detection, shared by ddpm and ldm: train a denoiser on healthy data, calibrate, predict.

Training discovers the cases, splits them by case (train / calibration) or, with
``train.holdout: slabs``, holds out an axial slab of every case, trains the
denoiser on healthy inputs (axial slices without a label voxel, or 3D lesion-free
volumes) in the model's diffusion space, then calibrates the threshold on what was
held out (:mod:`anodiff.methods.anomaly.calibration`), for anodiff and for the intensity
baseline alike. Prediction is :func:`anodiff.methods.scoring.detect`. What an
LDM adds (its autoencoder, its latent space) is :mod:`anodiff.methods.anomaly.ldm`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anodiff import distributed
from anodiff.config import RunConfig, TrainConfig, with_overrides
from anodiff.data.cases import Case, discover, select_modalities
from anodiff.data.datasets import SliceDataset, VolumeDataset, brain_patches, mirrored
from anodiff.data.slabs import Slab, guarded, held_out_slabs
from anodiff.diffusion.sampler import build_scheduler
from anodiff.diffusion.spaces import PixelSpace, Space, to_model_range
from anodiff.errors import ConfigError, DataError
from anodiff.evaluation.anomaly import report_of_figures
from anodiff.evaluation.report import Report
from anodiff.figures import save_grid
from anodiff.inference.prediction import Prediction
from anodiff.inference.standardise import ResidualStats
from anodiff.methods.anomaly import card as anomaly_card
from anodiff.methods.anomaly.calibration import calibrate
from anodiff.methods.anomaly.scoring import detect, score_slices
from anodiff.methods.base import Method, check_image_size, checkpoint_identity, preview_inputs, seeded, training_meta
from anodiff.modelfolder import WEIGHTS, TrainedModel, begin, save_model
from anodiff.models import build_network, count_parameters
from anodiff.progress import Progress, staged
from anodiff.training.loop import fit
from anodiff.training.objectives import DenoisingObjective
from anodiff.weights import load_weights

log = logging.getLogger(__name__)

class AnomalyMethod(Method):
    """A denoiser trained on healthy data; the residual of its reconstruction is the anomaly map."""

    outputs = {"map": "score"}
    sampler_section = "anomaly"
    evaluate_settings = ("anomaly.", "sampler.")
    stage_name = ""  # the denoiser's stage in progress messages, when it has a stage before it
    purpose = anomaly_card.PURPOSE

    def card_sections(self, config: RunConfig, meta: dict) -> list[str]:
        return anomaly_card.sections(config, meta)

    def card_limits(self, config: RunConfig, meta: dict) -> list[str]:
        return anomaly_card.limits(config, meta)

    def validate(self, config: RunConfig) -> None:
        factor = 2 ** (len(config.model.channels) - 1)  # the UNet's downsampling
        check_image_size(config, factor * self.downsampling(config))
        highest = max(config.anomaly.levels)
        if highest >= config.scheduler.num_train_timesteps:
            raise ConfigError(f"anomaly.t0 ({config.anomaly.t0}) must be below scheduler.num_train_timesteps "
                              f"({config.scheduler.num_train_timesteps})")
        trained_below = config.scheduler.train_t_max
        if trained_below is not None and highest >= trained_below:
            raise ConfigError(f"anomaly.t0 levels {list(config.anomaly.levels)} must be below "
                              f"scheduler.train_t_max ({trained_below}): the denoiser never saw higher noise")
        if config.scheduler.noise == "simplex" and config.model.spatial_dims == 3:
            raise ConfigError("scheduler.noise: simplex is for 2D pixel-space DDPMs; use gaussian or coarse")
        patch = config.train.patch_size
        pixel_2d = config.model.spatial_dims == 2 and self.downsampling(config) == 1
        pixel_2d_only = {"train.patch_size": patch is not None, "train.holdout: slabs": config.train.holdout == "slabs",
                         "scheduler.noise_cell_px (masked noising)": config.scheduler.noise_cell_px is not None,
                         "train.healthy_tissue: margin": config.train.healthy_tissue == "margin"}
        used = [option for option, on in pixel_2d_only.items() if on]
        if used and not pixel_2d:
            raise ConfigError(f"{used[0]} is for 2D pixel-space DDPMs (kind: ddpm, model.spatial_dims: 2)")
        if config.anomaly.masked_levels and config.scheduler.noise_cell_px is None:
            raise ConfigError("anomaly.masked_levels needs a model trained with masked noising "
                              "(scheduler.noise_cell_px)")
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
        train_cases, val_cases, slabs = calibration_split(found.cases, config.train)
        # Under torchrun each rank preprocesses and trains on its own cases: disjoint samples.
        rank_cases = distributed.partition(train_cases, config.train.seed)
        train_set = healthy_dataset(rank_cases, modalities, config,
                                    drop={case_id: guarded(slab) for case_id, slab in slabs.items()})
        log.info("training on %d healthy %s of %d cases; calibrating on %d %s", len(train_set),
                 "slices" if config.model.spatial_dims == 2 else "volumes", len(rank_cases), len(val_cases),
                 "held-out cases" if not slabs else "cases' held-out axial slabs")
        begin(out)
        meta = training_meta(self.kind, data, found.layouts, modalities, config, train_cases, rank_cases,
                             calibration_cases=[c.id for c in val_cases],
                             num_healthy_inputs=sum(distributed.gather(len(train_set))))
        meta["training_data"]["calibration_slabs"] = {case_id: list(slab) for case_id, slab in slabs.items()}
        space, latents = self.diffusion_space(train_set, val_cases, modalities, config, out, meta, device=device,
                                              resume=resume, progress=progress)
        network, result = self.train_denoiser(train_set, latents, space, modalities, config, out, device=device,
                                              resume=resume, progress=progress)
        meta["training"] = result.summary(config.train.num_steps, device)
        if not distributed.is_main():
            return
        model = TrainedModel(config=config, network=network.eval(), meta=meta, folder=out, space=space)
        meta |= calibrate(model, val_cases, slabs=slabs, progress=progress, figure=out / "healthy_floor.png")
        save_model(out, config, network, meta, card=lambda final: self.card(config, final))

    def train_denoiser(self, train_set, latents: torch.Tensor | None, space: Space, modalities: tuple[str, ...],
                       config: RunConfig, out: Path, *, device: torch.device, resume: bool,
                       progress: Progress | None):
        """The denoiser, trained by the one loop on images in [-1, 1] or on scaled latents."""

        def sample_batch(generator: torch.Generator) -> dict:
            index = torch.randint(len(train_set), (config.train.batch_size,), generator=generator)
            if latents is not None:
                return {"x0": latents[index]}
            items = [train_set[int(i)] for i in index]
            stacks = [torch.stack([item[key] for item in items]) for key in ("image", "hidden") if key in items[0]]
            if config.train.patch_size is not None:
                brains = torch.stack([item["brain"] for item in items])
                cropped = brain_patches(stacks[0], brains, config.train.patch_size, generator, *stacks[1:])
                stacks = list(cropped) if len(stacks) > 1 else [cropped]
            if config.train.mirror:
                stacks = list(mirrored(generator, *stacks))
            batch = {"x0": to_model_range(stacks[0])}
            if len(stacks) > 1:  # the tissue near a label: hidden from the network and its loss
                batch["hidden"] = stacks[1]
            return batch

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
        sizes = (model.meta.get("sensitivity") or {}).get("sizes", {})
        if sizes:
            line += "; sensitivity check, AUROC of inserted anomalies: " + ", ".join(
                f"{name} {f['auroc']:.3f}" for name, f in sizes.items() if f["auroc"] is not None)
        return line

    def threshold(self, model: TrainedModel, given: float | None) -> float:
        chosen = given if given is not None else model.config.anomaly.threshold
        chosen = model.meta.get("threshold") if chosen is None else chosen
        if chosen is None:
            raise DataError(f"{model.folder}: the model has no calibrated threshold; pass --threshold")
        return chosen

    def predict(self, model: TrainedModel, case: Case, *, threshold: float, generator: torch.Generator | None = None,
                samples: int | None = None, detail: bool = False, preprocessed=None,
                progress: Progress | None = None) -> Prediction:
        return detect(model.network, model.config, case, model.modalities, threshold=threshold,
                      stats=residual_stats(model), space=model.space, generator=generator, detail=detail,
                      progress=progress)

    def evaluate(self, model: TrainedModel, data: Path, *, seed: int = 0, samples: int | None = None,
                 overrides: list[str] | None = None, overlays: Path | None = None,
                 progress: Progress | None = None) -> Report:
        from anodiff.methods.anomaly.evaluation import evaluate_anomaly

        self.check_evaluate_overrides(overrides or [])
        model = with_anomaly_settings(model, overrides or [], progress=staged(progress, "recalibrating"))
        return evaluate_anomaly(self, model, data, seed=seed, overlays=overlays, progress=progress)

    def report_of(self, figures: dict) -> Report:
        return report_of_figures(figures)


def residual_stats(model: TrainedModel) -> ResidualStats | None:
    """The healthy residual statistics fitted at calibration (``anomaly.score: zscore``), if any."""
    raw = model.meta.get("residual_stats")
    return ResidualStats.from_dict(raw) if raw else None


def calibration_split(cases: list[Case], train: TrainConfig) -> tuple[list[Case], list[Case], dict[str, Slab]]:
    """(training cases, calibration cases, calibration slabs by case id): a split by case (``train.holdout:
    cases``, no slabs), or every case on both sides, each lending a slab (``slabs``, :mod:`anodiff.data.slabs`)."""
    if train.holdout == "cases":
        return *split_cases(cases, train.val_fraction, train.seed), {}
    return cases, cases, held_out_slabs([c.id for c in cases], train.val_fraction)


def split_cases(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Train/validation split by case (seeded); at least one case on each side."""
    if len(cases) < 2:
        raise DataError(f"need at least 2 cases (one to train, one to calibrate on), found {len(cases)}")
    order = np.random.default_rng(seed).permutation(len(cases))
    num_val = min(max(1, int(round(len(cases) * val_fraction))), len(cases) - 1)
    val = sorted(order[:num_val].tolist())
    return [c for i, c in enumerate(cases) if i not in val], [cases[i] for i in val]


def healthy_dataset(cases: list[Case], modalities: tuple[str, ...], config: RunConfig, *,
                    allow_empty: bool = False, drop: dict[str, Slab] | None = None) -> SliceDataset | VolumeDataset:
    """Healthy training inputs: axial slices without a label voxel (2D; none from a case's ``drop`` slab), or
    lesion-free volumes (3D)."""
    if config.model.spatial_dims == 3:
        dataset = VolumeDataset(cases, modalities, config.data, healthy_only=True)
        what = "lesion-free volumes (3D models train on healthy scans, e.g. IXI)"
    else:
        dataset = SliceDataset(cases, modalities, config.data, healthy_only=True, drop=drop,
                               margin_mm=config.train.margin_mm)
        what = "healthy slices (every slice holds a label voxel)"
    if len(dataset) == 0 and not allow_empty:
        raise DataError(f"no {what} among {len(cases)} training case(s)")
    return dataset


def with_anomaly_settings(model: TrainedModel, overrides: list[str], *, progress: Progress | None = None
                          ) -> TrainedModel:
    """The model with ``anomaly.*`` / ``sampler.*`` overrides; thresholds recalibrated on its calibration cases.

    A calibrated threshold belongs to the settings it was calibrated with (t0,
    steps, filtering), so changing them without recalibrating would be dishonest.
    """
    if not overrides:
        return model
    changed = replace(model, config=with_overrides(model.config, overrides))
    source = model.meta.get("training_data", {})
    wanted = set(source.get("calibration_cases", []))
    cases = [c for c in discover(source.get("root", "")).cases if c.id in wanted] if wanted else []
    if not cases:
        raise DataError(f"{model.folder}: calibration cases not found under {source.get('root')!r}; "
                        "cannot recalibrate for new anomaly settings")
    slabs = {case_id: tuple(slab) for case_id, slab in source.get("calibration_slabs", {}).items()}
    log.info("recalibrating for %s on %d healthy case(s)", " ".join(overrides), len(cases))
    return replace(changed, meta={**model.meta, **calibrate(changed, cases, slabs=slabs, progress=progress)})
