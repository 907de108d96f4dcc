"""SegDiff-style segmentation (``model.kind: segdiff``): sample masks given the image, fuse them, and
measure how much they disagree.

A conditional diffusion model draws N masks for one image (Amit et al. 2021,
SegDiff; Wu et al., MedSegDiff): its input is the noisy mask (one channel per
region, in [-1, 1]) joined with the image's modalities, and the sampler takes it
from pure noise to a mask. Training uses every axial slice of the labelled
cases, half of each batch from slices that hold a label voxel; with
``segmentation.reference`` a plain MONAI UNet is trained on exactly the same
batches, so that what diffusion buys is measured, not assumed.

For one case (:func:`segment`): preprocess, sample the brain-holding axial slices
in batches (all N samples of a slice in one network call), take every sample back
to the input's grid, then fuse and threshold there (:mod:`anodiff.inference.fusion`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anodiff import distributed
from anodiff.config import RunConfig, config_to_dict, region_labels, with_overrides
from anodiff.data.cases import Case, discover, select_modalities
from anodiff.data.datasets import SliceDataset, mirrored
from anodiff.data.transforms import IMAGE, LABEL
from anodiff.diffusion.sampler import build_scheduler, conditioned, generate, num_network_evals
from anodiff.diffusion.spaces import from_model_range, to_model_range
from anodiff.errors import ConfigError, DataError
from anodiff.evaluation.report import Report
from anodiff.figures import save_grid
from anodiff.inference.cases import PreparedCase, prepare
from anodiff.inference.fusion import fuse, uncertainty
from anodiff.inference.masks import label_map, min_voxels, remove_small_components
from anodiff.inference.prediction import Prediction, Timings
from anodiff.inference.volume import brain_slices, map_slices
from anodiff.methods.base import Method, checkpoint_identity, seeded
from anodiff.modelfolder import REFERENCE, WEIGHTS, TrainedModel, begin, save_model
from anodiff.models import build_network, build_reference_unet, count_parameters
from anodiff.prepare import preparation_record
from anodiff.progress import Progress, staged
from anodiff.training.loop import fit
from anodiff.training.objectives import DenoisingObjective, SegmentationObjective
from anodiff.weights import load_weights, state_tensors, write_safetensors

log = logging.getLogger(__name__)

# predictor(image (C, H, W, D), brain (1, H, W, D)) -> N samples (N, R, H, W, D) in [0, 1] on the network grid
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SegDiff(Method):
    kind = "segdiff"
    outputs = {"map": "probability", "uncertainty": "uncertainty"}
    draws_samples = True
    activity = "segmenting"
    sampler_section = "segmentation"

    def validate(self, config: RunConfig) -> None:
        super().validate(config)
        if config.model.spatial_dims != 2:
            raise ConfigError("model.kind: segdiff works on 2D slices; set model.spatial_dims: 2")
        if config.scheduler.train_t_max is not None:
            raise ConfigError("scheduler.train_t_max is for detection; segdiff draws its masks from pure noise")
        if config.scheduler.noise_cell_px is not None:
            raise ConfigError("scheduler.noise_cell_px (masked noising) is for detection; segdiff draws its masks "
                              "from pure noise")

    def train(self, data: Path, config: RunConfig, out: Path, *, device: torch.device, resume: bool = False,
              progress: Progress | None = None) -> None:
        train_segdiff(data, config, out, device=device, resume=resume, progress=progress)

    def load(self, folder: Path, config: RunConfig, meta: dict[str, Any], device: torch.device) -> TrainedModel:
        regions, channels = len(config.segmentation.regions), len(meta["modalities"])
        network = build_network(config.model, in_channels=regions + channels, out_channels=regions)
        load_weights(network, folder / WEIGHTS)
        reference = None
        if (folder / REFERENCE).is_file():
            reference = build_reference_unet(config.model, config.segmentation.reference_channels,
                                             in_channels=channels, out_channels=regions)
            load_weights(reference, folder / REFERENCE)
            reference = reference.to(device).eval()
        return TrainedModel(config=config, network=network.to(device).eval(), meta=meta, folder=folder,
                            reference=reference)

    def describe(self, model: TrainedModel) -> str:
        reference = ", with its UNet reference" if model.reference is not None else ""
        return f"regions: {', '.join(model.config.segmentation.regions)}{reference}"

    def threshold(self, model: TrainedModel, given: float | None) -> float:
        return model.config.segmentation.threshold if given is None else given

    def predict(self, model: TrainedModel, case: Case, *, threshold: float, generator: torch.Generator | None = None,
                samples: int | None = None, detail: bool = False, prepared: PreparedCase | None = None,
                progress: Progress | None = None) -> Prediction:
        samples = samples or model.config.segmentation.samples

        def draw(image: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
            return sample_volume(model.network, image, brain, model.config, samples=samples, generator=generator,
                                 progress=progress)

        evals = num_network_evals(model.config.scheduler, model.config.sampler,
                                  model.config.scheduler.num_train_timesteps - 1)
        return segment(draw, model.config, case, model.modalities, threshold=threshold, num_network_evals=evals,
                       prepared=prepared)

    def output_channels(self, model: TrainedModel) -> tuple[str, ...]:
        regions = model.config.segmentation.regions
        return regions if len(regions) > 1 else ()

    def evaluate(self, model: TrainedModel, data: Path, *, seed: int = 0, samples: int | None = None,
                 overrides: list[str] | None = None, overlays: Path | None = None,
                 progress: Progress | None = None) -> Report:
        from anodiff.methods.segdiff_eval import evaluate_segdiff

        bad = [o for o in overrides or [] if not o.strip().startswith("sampler.")]
        if bad:
            raise ConfigError(f"a segdiff model takes sampler.* settings and --samples, not {bad[0]!r} (anomaly.* "
                              "settings are for the unsupervised models)")
        if overrides:  # how masks are drawn; nothing was calibrated on it
            model = replace(model, config=with_overrides(model.config, overrides))
        return evaluate_segdiff(self, model, data, samples=samples, seed=seed, overlays=overlays, progress=progress)


SEGDIFF = SegDiff()


def train_segdiff(data: Path, config: RunConfig, out: Path, *, device: torch.device, resume: bool,
                  progress: Progress | None) -> None:
    """Train SegDiff (and, with ``segmentation.reference``, a plain UNet on the same batches) on labelled cases.

    Every case of ``data`` is used (an unlabelled case counts as lesion-free); the test cases belong elsewhere.
    """
    found = discover(data)
    labelled = [c for c in found.cases if c.label is not None]
    if not labelled:
        raise DataError(f"{data}: segdiff trains on labelled cases, and none of the {len(found.cases)} case(s) "
                        "has a label (e.g. <id>_seg.nii.gz)")
    cfg = config.segmentation
    modalities = select_modalities(found.cases, config.data.modalities)
    regions = tuple(region_labels(r) for r in cfg.regions)
    rank_cases = distributed.partition(found.cases, config.train.seed)
    dataset = SliceDataset(rank_cases, modalities, config.data, healthy_only=False, regions=regions)
    lesion = dataset.lesion_indices()
    if not lesion:
        raise DataError(f"{data}: no training slice holds a label voxel of the regions {list(cfg.regions)}")
    log.info("training on %d slices (%d with a label) of %d cases", len(dataset), len(lesion), len(rank_cases))
    begin(out)
    draw = lesion_batches(dataset, lesion, config.train.batch_size, cfg.lesion_fraction, mirror=config.train.mirror)
    meta: dict = {
        "kind": "segdiff",
        "modalities": list(modalities),
        "regions": {name: list(values) for name, values in zip(cfg.regions, regions)},
        "preprocessing": config_to_dict(config.data),
        "preparation": preparation_record(data),
        "training_data": {"root": str(data.resolve()), "train_cases": [c.id for c in found.cases],
                          "cases_per_process": distributed.gather([c.id for c in rank_cases]),
                          "num_slices": sum(distributed.gather(len(dataset))),
                          "num_lesion_slices": sum(distributed.gather(len(lesion))),
                          "layouts": list(found.layouts)},
    }
    reference = None
    if cfg.reference:
        reference = train_reference(draw, config, len(modalities), len(regions), out, meta, device=device,
                                    resume=resume, progress=progress)
    network = seeded(lambda: build_network(config.model, in_channels=len(regions) + len(modalities),
                                           out_channels=len(regions)), config.train.seed)
    log.info("SegDiff denoiser: %s parameters", f"{count_parameters(network):,}")

    def segdiff_batch(generator: torch.Generator) -> dict:
        images, masks = draw(generator)
        return {"x0": to_model_range(masks), "condition": to_model_range(images)}

    preview = preview_lesion_slices(dataset, lesion)
    trained, result = fit(
        DenoisingObjective(network, build_scheduler(config.scheduler, "ddpm"), config.scheduler), segdiff_batch,
        config.train, out, device=device, resume=resume, config_text=checkpoint_identity(config),
        progress=staged(progress, "SegDiff" if cfg.reference else ""),
        on_sample=lambda step, ema: save_mask_grid(ema.network, preview, config, out / "samples" / f"{step:07d}.png"),
    )
    meta["training"] = result.summary(config.train.num_steps, device)
    meta["parameters"] = count_parameters(network)
    if not distributed.is_main():
        return
    if reference is not None:
        write_safetensors(state_tensors(reference), out / REFERENCE)
    save_model(out, config, trained.network, meta)


def lesion_batches(dataset: SliceDataset, lesion: list[int], size: int, lesion_fraction: float, *,
                   mirror: bool = False):
    """draw(generator) -> images (B, C, H, W) and region masks (B, R, H, W), lesion slices oversampled
    (with ``mirror``, half of them mirrored left to right, image and mask alike)."""

    def draw(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from_lesions = int(round(size * lesion_fraction))
        picks = [lesion[int(i)] for i in torch.randint(len(lesion), (from_lesions,), generator=generator)]
        picks += torch.randint(len(dataset), (size - from_lesions,), generator=generator).tolist()
        items = [dataset[i] for i in picks]
        images, masks = torch.stack([it[IMAGE] for it in items]), torch.stack([it[LABEL] for it in items])
        return mirrored(generator, images, masks) if mirror else (images, masks)

    return draw


def train_reference(draw, config: RunConfig, num_modalities: int, num_regions: int, out: Path, meta: dict, *,
                    device: torch.device, resume: bool, progress: Progress | None) -> torch.nn.Module:
    """The UNet reference, trained on the same draws as SegDiff's at every step (meta gains its summary)."""
    unet = seeded(lambda: build_reference_unet(config.model, config.segmentation.reference_channels,
                                               in_channels=num_modalities, out_channels=num_regions),
                  config.train.seed)
    log.info("UNet reference: %s parameters", f"{count_parameters(unet):,}")

    def reference_batch(generator: torch.Generator) -> dict:
        images, masks = draw(generator)
        return {"image": images, "label": masks}

    trained, result = fit(SegmentationObjective(unet), reference_batch, config.train, out / "reference",
                          device=device, resume=resume, config_text=checkpoint_identity(config),
                          progress=staged(progress, "UNet reference"), on_sample=None)
    meta["reference"] = {"network": "monai.networks.nets.UNet", "parameters": count_parameters(unet),
                         "training": result.summary(config.train.num_steps, device)}
    return trained.network.eval()


def preview_lesion_slices(dataset: SliceDataset, lesion: list[int], count: int = 4) -> dict[str, torch.Tensor]:
    """A few evenly spaced lesion slices: image (B, C, H, W) and label (B, R, H, W)."""
    picks = [lesion[int(i)] for i in np.linspace(0, len(lesion) - 1, count).astype(int)]
    return {key: torch.stack([dataset[i][key] for i in picks]) for key in (IMAGE, LABEL)}


def save_mask_grid(network, preview: dict[str, torch.Tensor], config: RunConfig, path: Path) -> None:
    """PNG rows: image (first modality), true mask and two sampled masks (first region)."""
    network.eval()
    device = next(network.parameters()).device
    drawn = sample_slices(network, preview[IMAGE].to(device), config, samples=2,
                          generator=torch.Generator().manual_seed(0))
    save_grid([preview[IMAGE][:, 0], preview[LABEL][:, 0], drawn[0, :, 0], drawn[1, :, 0]], path)


@torch.inference_mode()
def sample_slices(network: torch.nn.Module, images: torch.Tensor, config: RunConfig, *, samples: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """N masks per image: images (B, C, H, W) in [0, 1] -> (N, B, R, H, W) in [0, 1].

    The N samples of every image go through the network together; the noise is
    drawn on the CPU from ``generator``, so a seed fixes every sample.
    """
    device = next(network.parameters()).device
    condition = to_model_range(images.to(device)).repeat(samples, 1, 1, 1)
    shape = (condition.shape[0], len(config.segmentation.regions), *images.shape[2:])
    masks = generate(conditioned(network, condition), shape, config.scheduler, config.sampler, generator=generator,
                     device=device)
    return from_model_range(masks).float().cpu().unflatten(0, (samples, images.shape[0]))


def sample_volume(network: torch.nn.Module, image: torch.Tensor, brain: torch.Tensor, config: RunConfig, *,
                  samples: int, generator: torch.Generator | None = None,
                  progress: Progress | None = None) -> torch.Tensor:
    """N masks of one preprocessed volume: image (C, H, W, D), brain (1, H, W, D) -> (N, R, H, W, D).

    Only axial slices holding brain are sampled (the rest stay 0), in batches of
    ``segmentation.batch_size`` network inputs.
    """

    def draw(slices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"samples": sample_slices(network, slices, config, samples=samples, generator=generator).transpose(0, 1)}

    per_call = max(1, config.segmentation.batch_size // samples)
    grid = map_slices(draw, image, brain, batch_size=per_call, progress=progress)["samples"]
    return grid * (brain > 0)


@torch.inference_mode()
def reference_volume(network: torch.nn.Module, image: torch.Tensor, brain: torch.Tensor, *,
                     batch_size: int = 64) -> torch.Tensor:
    """A plain segmentation network's probabilities (sigmoid) of one volume, as one sample: -> (1, R, H, W, D)."""
    device = next(network.parameters()).device

    def predict(slices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"probability": torch.sigmoid(network(slices.to(device)))}

    return (map_slices(predict, image, brain, batch_size=batch_size)["probability"] * (brain > 0))[None]


def segment(predictor: Predictor, config: RunConfig, case: Case, modalities: tuple[str, ...], *, threshold: float,
            num_network_evals: int, prepared: PreparedCase | None = None) -> Prediction:
    """Segment one case on its own grid: ``predictor`` draws the samples on the network grid (see the module doc).

    Maps (R regions, N samples): ``probability``, ``uncertainty`` (R, X, Y, Z) float32; ``samples``
    (N, R, X, Y, Z) float16; ``regions`` (R, X, Y, Z) bool, the thresholded probability less small
    components. ``prepared``: the case already through the chain (then ``preprocess_s`` is 0).
    """
    cfg = config.segmentation
    timings = Timings()
    with timings.measure("preprocess_s"):
        prepared = prepared or prepare(case, modalities, config.data, spatial_dims=2)
    with timings.measure("network_s"):
        grid = predictor(prepared.image, prepared.brain_grid)
    with timings.measure("postprocess_s"):
        brain = prepared.brain
        n, r = grid.shape[:2]
        restored = prepared.on_input_grid(grid.flatten(0, 1))
        restored = np.where(brain, np.clip(restored, 0, 1), 0).reshape(n, r, *brain.shape).astype(np.float16)
        probability = np.stack([fuse(restored[:, k], cfg.fusion) for k in range(r)])
        spread = np.stack([uncertainty(restored[:, k], cfg.uncertainty) for k in range(r)])
        smallest = min_voxels(cfg.min_component_mm3, prepared.reference.spacing_mm)
        masks = np.stack([remove_small_components(p > threshold, smallest) > 0 for p in probability])
    maps = {"probability": probability, "uncertainty": spread, "samples": restored, "regions": masks}
    return Prediction(mask=label_map(masks), maps=maps, reference=prepared.reference, brain=brain,
                      threshold=threshold, timings=dict(timings), num_network_evals=num_network_evals,
                      num_slices=len(brain_slices(prepared.brain_grid)))
