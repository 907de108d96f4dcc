"""SegDiff-style segmentation (``model.kind: segdiff``): sample masks given the image, fuse them, and
measure how much they disagree.

A conditional diffusion model draws N masks for one image (Amit et al. 2021,
SegDiff; Wu et al., MedSegDiff): its input is the noisy mask (one channel per
region, in [-1, 1]) joined with the image's modalities, and the sampler takes it
from pure noise to a mask. Training uses every axial slice of the labelled
cases, half of each batch from slices that hold a label voxel; with
``segmentation.reference`` a plain MONAI UNet is trained on exactly the same
batches, so that what diffusion buys is measured, not assumed.

For one case (:func:`~anodiff.methods.segdiff.prediction.segment`): preprocess, sample the brain-holding axial slices
in batches (all N samples of a slice in one network call), take every sample back
to the input's grid, then fuse and threshold there (:mod:`anodiff.inference.fusion`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from anodiff.config import RunConfig, with_overrides
from anodiff.data.cases import Case
from anodiff.diffusion.sampler import num_network_evals
from anodiff.errors import ConfigError
from anodiff.evaluation.report import Report
from anodiff.evaluation.segmentation import segmentation_report
from anodiff.inference.cases import PreprocessedCase
from anodiff.inference.prediction import Prediction
from anodiff.methods.base import Method
from anodiff.methods.segdiff.evaluation import evaluate_segdiff
from anodiff.methods.segdiff.prediction import sample_volume, segment
from anodiff.methods.segdiff.training import train_segdiff
from anodiff.modelfolder import REFERENCE, WEIGHTS, TrainedModel
from anodiff.models import build_network, build_reference_unet
from anodiff.progress import Progress
from anodiff.weights import load_weights


class SegDiff(Method):
    kind = "segdiff"
    outputs = {"map": "probability", "uncertainty": "uncertainty"}
    draws_samples = True
    activity = "segmenting"
    sampler_section = "segmentation"
    output_desc = "segdiff"
    title = "SegDiff-style segmentation (a diffusion model over masks, conditioned on the image)"
    purpose = ("Supervised segmentation of the regions its training labels drew, in brain MRI of the same "
               "modalities. `anodiff detect` draws several masks for a scan, fuses them (`_mask.nii.gz`, the fused "
               "probability `_map.nii.gz`) and reports how much they disagree (`_uncertainty.nii.gz`).")

    def card_sections(self, config: RunConfig, meta: dict[str, Any]) -> list[str]:
        s = config.segmentation
        regions = ", ".join(f"{name} (label values {'+'.join(map(str, values))})"
                            for name, values in (meta.get("regions") or {}).items())
        data = meta.get("training_data", {})
        return ["\n".join([
            "## Segmentation", "",
            f"- Regions, one channel each: {regions}",
            f"- Trained on {data.get('num_slices', '?')} slices, {data.get('num_lesion_slices', '?')} with a label "
            f"voxel; {s.lesion_fraction:.0%} of each batch from those",
            f"- Per scan: {s.samples} masks drawn ({config.sampler.kind}, {config.sampler.num_inference_steps} "
            f"steps), fused by {s.fusion}, thresholded at {s.threshold:g}; uncertainty: their {s.uncertainty}",
            "- A plain MONAI UNet trained on the same batches is kept beside it (`reference.safetensors`), so "
            "`anodiff evaluate` shows what diffusion adds" if s.reference else "- No UNet reference was trained"])]

    def card_limits(self, config: RunConfig, meta: dict[str, Any]) -> list[str]:
        return ["It segments only what its training labels drew: a lesion kind absent from them is not segmented "
                "(an unsupervised detection model looks for any departure from healthy tissue).",
                "The uncertainty is the spread of a few samples, not a calibrated probability of error."]

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
        train_segdiff(data, config, out, device=device, resume=resume, progress=progress,
                      card=lambda meta: self.card(config, meta))

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
                samples: int | None = None, detail: bool = False, preprocessed: PreprocessedCase | None = None,
                progress: Progress | None = None) -> Prediction:
        samples = samples or model.config.segmentation.samples

        def draw(image: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
            return sample_volume(model.network, image, brain, model.config, samples=samples, generator=generator,
                                 progress=progress)

        evals = num_network_evals(model.config.scheduler, model.config.sampler,
                                  model.config.scheduler.num_train_timesteps - 1)
        return segment(draw, model.config, case, model.modalities, threshold=threshold, num_network_evals=evals,
                       preprocessed=preprocessed)

    def output_channels(self, model: TrainedModel) -> tuple[str, ...]:
        regions = model.config.segmentation.regions
        return regions if len(regions) > 1 else ()

    def evaluate(self, model: TrainedModel, data: Path, *, seed: int = 0, samples: int | None = None,
                 overrides: list[str] | None = None, overlays: Path | None = None,
                 progress: Progress | None = None) -> Report:
        self.check_evaluate_overrides(overrides or [])
        if overrides:  # how masks are drawn; nothing was calibrated on it
            model = replace(model, config=with_overrides(model.config, overrides))
        return evaluate_segdiff(self, model, data, samples=samples, seed=seed, overlays=overlays, progress=progress)

    def report_of(self, figures: dict) -> Report:
        return segmentation_report(figures, figures["cases"])


SEGDIFF = SegDiff()
