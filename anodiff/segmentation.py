"""SegDiff-style segmentation: sample masks given the image, fuse them, and measure how much they disagree.

A conditional diffusion model draws N masks for one image (Amit et al. 2021,
SegDiff; Wu et al., MedSegDiff): its input is the noisy mask (one channel per
region, in [-1, 1]) joined with the image's modalities, and DDIM takes it from
pure noise to a mask. The fusion of the N samples is the segmentation and their
spread is a per-voxel uncertainty map. Fusion by mean probability (thresholded),
by majority vote, or by STAPLE (Warfield et al. 2004, SimpleITK's
``STAPLEImageFilter``), which weights each sample by its estimated reliability.

For one case (:func:`segment`): preprocess with the model's chain, sample the
brain-holding axial slices in batches (all N samples of a slice in one network
call), take every sample back to the input's grid (MONAI inverse of the chain),
then fuse and threshold there. Fusion arrays are ``(N, *S)``: N samples of any
spatial shape, values in [0, 1].
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk
import torch
from monai.losses import DiceCELoss
from scipy import ndimage, special

from anodiff.config import RunConfig
from anodiff.data.cases import Case
from anodiff.data.transforms import BRAIN, IMAGE, REFERENCE, to_input_grid
from anodiff.detection import brain_slices, prepare, remove_small_components
from anodiff.diffusion import build_scheduler, conditioned, from_model_range, generate, to_model_range
from anodiff.io import Volume

ProgressFn = Callable[[int, int], None]

Fusion = Literal["mean", "majority", "staple"]


def fuse(samples: np.ndarray, method: Fusion = "mean") -> np.ndarray:
    """Fused foreground probability (*S) in [0, 1] of N samples (N, *S); threshold it at 0.5 for a mask."""
    samples = _check(samples)
    if method == "mean":
        return samples.mean(axis=0).astype(np.float32)
    if method == "majority":
        return ((samples >= 0.5).mean(axis=0) > 0.5).astype(np.float32)
    if method == "staple":
        return staple(samples >= 0.5)
    raise ValueError(f"unknown fusion {method!r}; choose mean, majority or staple")


def staple(masks: np.ndarray) -> np.ndarray:
    """STAPLE's foreground probability (*S) from N binary masks (N, *S), by SimpleITK."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim < 3:
        raise ValueError(f"expected masks shaped (N, *S) with 2 or 3 spatial axes, got {masks.shape}")
    if not masks.any():
        return np.zeros(masks.shape[1:], np.float32)
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks]
    probability = sitk.STAPLE(images, 1.0)
    return np.clip(sitk.GetArrayFromImage(probability), 0, 1).astype(np.float32)


def uncertainty(samples: np.ndarray, kind: Literal["std", "entropy"] = "std") -> np.ndarray:
    """Per-voxel disagreement (*S) of N samples (N, *S).

    ``std``: standard deviation across samples (0 when all agree, 0.5 at most for
    binary masks). ``entropy``: binary entropy of the mean probability, in bits (0 to 1).
    """
    samples = _check(samples)
    if kind == "std":
        return samples.std(axis=0).astype(np.float32)
    if kind == "entropy":
        p = samples.mean(axis=0).astype(np.float64)
        return ((special.entr(p) + special.entr(1 - p)) / np.log(2)).astype(np.float32)  # 0 log 0 = 0
    raise ValueError(f"unknown uncertainty {kind!r}; choose std or entropy")


def _check(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim < 2 or samples.shape[0] < 1:
        raise ValueError(f"expected samples shaped (N, *S), got {samples.shape}")
    if samples.min() < 0 or samples.max() > 1:
        raise ValueError("samples must be probabilities or masks in [0, 1]")
    return samples


# ---------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SegmentationResult:
    """A case's segmentation on its input grid (X, Y, Z); R regions, N samples.

    ``samples`` (N, R, X, Y, Z) float16 in [0, 1]; ``probability`` and
    ``uncertainty`` (R, X, Y, Z) float32; ``regions`` (R, X, Y, Z) bool, the
    thresholded probability less small components; ``mask`` uint8, 0 background,
    else the 1-based index of the last region (in config order) present, so listing
    regions outer to inner (whole, core, enhancing) gives the usual nested label map.
    """

    samples: np.ndarray
    probability: np.ndarray
    uncertainty: np.ndarray
    regions: np.ndarray
    mask: np.ndarray
    reference: Volume
    brain: np.ndarray  # bool (X, Y, Z)
    timings: dict[str, float] = field(default_factory=dict)
    num_network_evals: int = 0  # per slice and sample


@torch.inference_mode()
def sample_slices(network: torch.nn.Module, images: torch.Tensor, config: RunConfig, *, samples: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """N masks per image: images (B, C, H, W) in [0, 1] -> (N, B, R, H, W) in [0, 1].

    The N samples of every image go through the network together; the noise is
    drawn on the CPU from ``generator``, so a seed fixes every sample.
    """
    device = next(network.parameters()).device
    cfg = config.segmentation
    condition = to_model_range(images.to(device)).repeat(samples, 1, 1, 1)
    scheduler = build_scheduler(config.scheduler, "ddim")
    shape = (condition.shape[0], len(cfg.regions), *images.shape[2:])
    masks = generate(conditioned(network, condition), shape, scheduler, config.scheduler,
                     num_steps=cfg.num_inference_steps, generator=generator, device=device, eta=cfg.eta)
    return from_model_range(masks).float().cpu().unflatten(0, (samples, images.shape[0]))


def sample_volume(network: torch.nn.Module, image: torch.Tensor, brain: torch.Tensor, config: RunConfig, *,
                  samples: int, generator: torch.Generator | None = None,
                  progress: ProgressFn | None = None) -> torch.Tensor:
    """N masks of one preprocessed volume: image (C, H, W, D), brain (1, H, W, D) -> (N, R, H, W, D).

    Only axial slices holding brain are sampled (the rest stay 0), in batches of
    ``segmentation.batch_size`` network inputs.
    """
    regions = len(config.segmentation.regions)
    out = torch.zeros((samples, regions, *image.shape[1:]))
    z_list = brain_slices(brain)
    per_call = max(1, config.segmentation.batch_size // samples)
    for start in range(0, len(z_list), per_call):
        zs = z_list[start : start + per_call]
        slices = image[..., zs].permute(3, 0, 1, 2).float()  # (B, C, H, W)
        out[..., zs] = sample_slices(network, slices, config, samples=samples, generator=generator).permute(
            0, 2, 3, 4, 1)
        if progress is not None:
            progress(min(start + per_call, len(z_list)), len(z_list))
    return out * (brain > 0)


@torch.inference_mode()
def predict_volume(network: torch.nn.Module, image: torch.Tensor, brain: torch.Tensor, *,
                   batch_size: int = 64) -> torch.Tensor:
    """A plain segmentation network's probabilities (sigmoid) of one volume: (C, H, W, D) -> (R, H, W, D)."""
    device = next(network.parameters()).device
    z_list = brain_slices(brain)
    out = None
    for start in range(0, len(z_list), batch_size):
        zs = z_list[start : start + batch_size]
        slices = image[..., zs].permute(3, 0, 1, 2).float().to(device)
        probability = torch.sigmoid(network(slices)).float().cpu()  # (B, R, H, W)
        if out is None:
            out = torch.zeros((probability.shape[1], *image.shape[1:]))
        out[..., zs] = probability.permute(1, 2, 3, 0)
    if out is None:
        raise ValueError("the volume holds no brain voxel")
    return out * (brain > 0)


def segment(
    network: torch.nn.Module,
    config: RunConfig,
    case: Case,
    modalities: tuple[str, ...],
    *,
    samples: int | None = None,
    threshold: float | None = None,
    generator: torch.Generator | None = None,
    predictor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    prepared: tuple | None = None,
    progress: ProgressFn | None = None,
) -> SegmentationResult:
    """Segment one case on its own grid (see the module doc).

    ``samples`` and ``threshold`` default to the config's. ``predictor(image, brain)``
    replaces diffusion sampling by a plain network's probabilities (R, H, W, D),
    taken as a single sample (the UNet reference); it then has no uncertainty.
    ``prepared``: the (chain, item) of :func:`~anodiff.detection.prepare` for this
    case, when the caller already has it (then ``preprocess_s`` is 0).
    """
    cfg = config.segmentation
    samples = samples or cfg.samples
    threshold = cfg.threshold if threshold is None else threshold
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    chain, item = prepared or prepare(case, modalities, config.data, spatial_dims=2)
    timings["preprocess_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    image, brain_grid = item[IMAGE].as_tensor(), item[BRAIN].as_tensor()
    if predictor is not None:
        grid = predictor(image, brain_grid)[None]
        evals = 1
    else:
        grid = sample_volume(network, image, brain_grid, config, samples=samples, generator=generator,
                             progress=progress)
        evals = cfg.num_inference_steps
    timings["network_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    reference: Volume = item[REFERENCE]
    brain = reference.data != 0
    n, r = grid.shape[:2]
    restored = to_input_grid(chain, item[IMAGE], grid.flatten(0, 1)).numpy()
    restored = np.where(brain, np.clip(restored, 0, 1), 0).reshape(n, r, *brain.shape).astype(np.float16)
    probability = np.stack([fuse(restored[:, k], cfg.fusion) for k in range(r)])
    spread = np.stack([uncertainty(restored[:, k], cfg.uncertainty) for k in range(r)])
    min_voxels = int(np.ceil(cfg.min_component_mm3 / float(np.prod(reference.spacing_mm))))
    masks = np.stack([remove_small_components(p > threshold, min_voxels) > 0 for p in probability])
    timings["postprocess_s"] = time.perf_counter() - clock
    return SegmentationResult(samples=restored, probability=probability, uncertainty=spread, regions=masks,
                              mask=label_map(masks), reference=reference, brain=brain, timings=timings,
                              num_network_evals=evals)


def label_map(masks: np.ndarray) -> np.ndarray:
    """(R, *S) bool -> uint8 (*S): 0 background, else the 1-based index of the last region present."""
    out = np.zeros(masks.shape[1:], np.uint8)
    for index, region in enumerate(masks, start=1):
        out[region] = index
    return out


class ReferenceObjective(torch.nn.Module):
    """The UNet reference's loss: MONAI ``DiceCELoss`` (sigmoid, one channel per region; Dice over the
    whole batch, as half of it are slices without lesion, whose own Dice is undefined).

    ``forward(batch, generator=, step=)``: the batch holds ``image`` (B, C, H, W) in
    [0, 1] and ``label`` (B, R, H, W) in {0, 1}. Same calling convention as the
    diffusion objectives, so the one training loop serves it.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.loss = DiceCELoss(sigmoid=True, batch=True)

    def forward(self, batch: dict, *, generator: torch.Generator | None = None, step: int = 0) -> torch.Tensor:
        return self.loss(self.network(batch["image"]).float(), batch["label"])


def region_masks(label: np.ndarray, regions: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """A label volume (*S) -> bool (R, *S), one mask per region (the label values it holds)."""
    return np.stack([np.isin(label, values) for values in regions])


def border_zones(truth: np.ndarray, brain: np.ndarray, width: int = 2) -> dict[str, np.ndarray]:
    """Where an uncertainty map is read: bool masks (*S) of the lesion ``border`` (``width`` voxels
    either side of its surface), its ``inside`` and the brain ``outside`` it, beyond the band."""
    truth = truth.astype(bool)
    grown = ndimage.binary_dilation(truth, iterations=width)
    shrunk = ndimage.binary_erosion(truth, iterations=width)
    return {"border": (grown & ~shrunk) & brain, "inside": shrunk & brain, "outside": brain & ~grown}
