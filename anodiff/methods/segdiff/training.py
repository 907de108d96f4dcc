"""How a segdiff model is trained: every axial slice of the labelled cases, half of each batch from slices
that hold a label voxel; with ``segmentation.reference``, a plain MONAI UNet on exactly the same batches."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from anodiff import distributed
from anodiff.config import RunConfig, region_labels
from anodiff.data.cases import discover, select_modalities
from anodiff.data.datasets import SliceDataset, mirrored
from anodiff.data.transforms import IMAGE, LABEL
from anodiff.diffusion.sampler import build_scheduler
from anodiff.diffusion.spaces import to_model_range
from anodiff.errors import DataError
from anodiff.figures import save_grid
from anodiff.methods.base import checkpoint_identity, seeded, training_meta
from anodiff.methods.segdiff.prediction import sample_slices
from anodiff.modelfolder import REFERENCE, begin, save_model
from anodiff.models import build_network, build_reference_unet, count_parameters
from anodiff.progress import Progress, staged
from anodiff.training.loop import fit
from anodiff.training.objectives import DenoisingObjective, SegmentationObjective
from anodiff.weights import state_tensors, write_safetensors

log = logging.getLogger(__name__)

def train_segdiff(data: Path, config: RunConfig, out: Path, *, device: torch.device, resume: bool,
                  progress: Progress | None, card: Callable[[dict], str] | None = None) -> None:
    """Train SegDiff (and, with ``segmentation.reference``, a plain UNet on the same batches) on labelled cases;
    ``card(meta)`` is the model card.

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
    meta = training_meta("segdiff", data, found.layouts, modalities, config, found.cases, rank_cases,
                         num_slices=sum(distributed.gather(len(dataset))),
                         num_lesion_slices=sum(distributed.gather(len(lesion))))
    meta["regions"] = {name: list(values) for name, values in zip(cfg.regions, regions)}
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
    save_model(out, config, trained.network, meta, card=card)


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
