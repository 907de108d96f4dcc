"""How a segdiff model segments one case: draw N masks per brain slice, take them back to the input's grid,
fuse and threshold there (:mod:`anodiff.inference.fusion`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from anodiff.config import RunConfig
from anodiff.data.cases import Case
from anodiff.diffusion.sampler import conditioned, generate
from anodiff.diffusion.spaces import from_model_range, to_model_range
from anodiff.inference.cases import PreprocessedCase, preprocess
from anodiff.inference.fusion import fuse, uncertainty
from anodiff.inference.masks import label_map, min_voxels, remove_small_components
from anodiff.inference.prediction import Prediction, Timings
from anodiff.inference.volume import brain_slices, map_slices
from anodiff.progress import Progress

# predictor(image (C, H, W, D), brain (1, H, W, D)) -> N samples (N, R, H, W, D) in [0, 1] on the network grid
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
            num_network_evals: int, preprocessed: PreprocessedCase | None = None) -> Prediction:
    """Segment one case on its own grid: ``predictor`` draws the samples on the network grid (see the module doc).

    Maps (R regions, N samples): ``probability``, ``uncertainty`` (R, X, Y, Z) float32; ``samples``
    (N, R, X, Y, Z) float16; ``regions`` (R, X, Y, Z) bool, the thresholded probability less small
    components. ``preprocessed``: the case already through the chain (then ``preprocess_s`` is 0).
    """
    cfg = config.segmentation
    timings = Timings()
    with timings.measure("preprocess_s"):
        preprocessed = preprocessed or preprocess(case, modalities, config.data, spatial_dims=2)
    with timings.measure("network_s"):
        grid = predictor(preprocessed.image, preprocessed.brain_grid)
    with timings.measure("postprocess_s"):
        brain = preprocessed.brain
        n, r = grid.shape[:2]
        restored = preprocessed.on_input_grid(grid.flatten(0, 1))
        restored = np.where(brain, np.clip(restored, 0, 1), 0).reshape(n, r, *brain.shape).astype(np.float16)
        probability = np.stack([fuse(restored[:, k], cfg.fusion) for k in range(r)])
        spread = np.stack([uncertainty(restored[:, k], cfg.uncertainty) for k in range(r)])
        smallest = min_voxels(cfg.min_component_mm3, preprocessed.reference.spacing_mm)
        masks = np.stack([remove_small_components(p > threshold, smallest) > 0 for p in probability])
    maps = {"probability": probability, "uncertainty": spread, "samples": restored, "regions": masks}
    return Prediction(mask=label_map(masks), maps=maps, reference=preprocessed.reference, brain=brain,
                      threshold=threshold, timings=dict(timings), num_network_evals=num_network_evals,
                      num_slices=len(brain_slices(preprocessed.brain_grid)))
