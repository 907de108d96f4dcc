"""The three jobs of anodiff, wired from the library's parts: train, detect, evaluate.

The CLI calls these and only renders what they return. Each reads as a recipe;
the work is done in :mod:`anodiff.data`, :mod:`anodiff.training`,
:mod:`anodiff.detection` and :mod:`anodiff.evaluation`.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import yaml
from monai.inferers import LatentDiffusionInferer
from PIL import Image
from skimage import exposure, segmentation

from anodiff import distributed
from anodiff.autoencoder import AutoencoderObjective, LatentSpace, latent_scale_factor
from anodiff.config import RunConfig, config_to_dict, with_overrides
from anodiff.data.cases import Case, discover, select_modalities
from anodiff.data.datasets import SliceDataset, VolumeDataset
from anodiff.data.synthetic import read_cohort_info
from anodiff.detection import AnomalyResult, calibrate_threshold, detect, score_slices
from anodiff.diffusion import DenoisingObjective, PixelSpace, Space, build_scheduler, to_model_range
from anodiff.errors import AnodiffError, CheckpointError, ConfigError, DataError
from anodiff.evaluation import size_bin, summarize_method
from anodiff.io import read_volume, strip_image_suffix, write_volume
from anodiff.modelfolder import AUTOENCODER, META, TrainedModel, load_model, load_weights, save_model
from anodiff.models import build_autoencoder, build_discriminator, build_network, count_parameters
from anodiff.segmentation import segment
from anodiff.training import (
    CHECKPOINT,
    fit,
    read_safetensors_metadata,
    remove_stale_temporaries,
    state_tensors,
    write_safetensors,
)

log = logging.getLogger(__name__)

Progress = Callable[..., None]


# ---------------------------------------------------------------- train


def split_cases(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Train/validation split by case (seeded); at least one case on each side."""
    if len(cases) < 2:
        raise DataError(f"need at least 2 cases (one to train, one to calibrate on), found {len(cases)}")
    order = np.random.default_rng(seed).permutation(len(cases))
    num_val = min(max(1, int(round(len(cases) * val_fraction))), len(cases) - 1)
    val = sorted(order[:num_val].tolist())
    return [c for i, c in enumerate(cases) if i not in val], [cases[i] for i in val]


def train_model(
    data: Path,
    config: RunConfig,
    out: Path,
    *,
    device: torch.device,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainedModel | None:
    """Train on the healthy data of ``data``, calibrate the threshold, write the model folder.

    Returns the model (None on the ranks other than 0 under torchrun, which only train).

    ``model.kind: ddpm`` trains one denoiser on pixels. ``ldm`` first trains the
    autoencoder (stage 1, skipped when its weights exist), then the denoiser on
    its scaled latents (stage 2). Both stages share the training loop, and resume.
    """
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
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        # A folder is a usable model once meta.json is written, last; until then it is not one.
        (out / META).unlink(missing_ok=True)
        remove_stale_temporaries(out)
    distributed.barrier()
    meta: dict = {
        "kind": config.model.kind,
        "modalities": list(modalities),
        "preprocessing": config_to_dict(config.data),
        "training_data": {
            "root": str(data.resolve()),
            "train_cases": [c.id for c in train_cases],
            "calibration_cases": [c.id for c in val_cases],
            "cases_per_process": distributed.gather([c.id for c in rank_cases]),
            "num_healthy_inputs": sum(distributed.gather(len(train_set))),
            "layouts": list(found.layouts),
        },
    }

    space: Space = PixelSpace()
    latents = None
    if config.model.kind == "ldm":
        autoencoder = train_autoencoder(train_set, modalities, config, out, device=device, resume=resume,
                                        progress=progress)
        if distributed.is_main():
            held_out = healthy_dataset(val_cases, modalities, config, allow_empty=True)
            meta["autoencoder"] = autoencoder_report(autoencoder, held_out, config, out / "autoencoder")
        latents = encode_dataset(LatentSpace(autoencoder, 1.0, config.autoencoder.kind), train_set)
        scale = latent_scale_factor(latents)
        space = LatentSpace(autoencoder, scale, config.autoencoder.kind)
        latents = latents * scale
        meta["latent_scale_factor"] = scale
        log.info("latents %s, scale factor %.4f", tuple(latents.shape[1:]), scale)

    def training_inputs(index: torch.Tensor) -> torch.Tensor:
        """x_0 of the chosen training inputs: scaled latents, or images in [-1, 1]."""
        if latents is not None:
            return latents[index]
        return to_model_range(torch.stack([train_set[int(i)]["image"] for i in index]))

    def sample_batch(generator: torch.Generator) -> dict:
        return {"x0": training_inputs(torch.randint(len(train_set), (config.train.batch_size,), generator=generator))}

    in_channels = config.autoencoder.latent_channels if latents is not None else len(modalities)
    with torch.random.fork_rng():  # MONAI initialises from the global RNG: seed it, leave it as it was
        torch.manual_seed(config.train.seed)
        network = build_network(config.model, in_channels=in_channels)
    log.info("denoiser: %s parameters", f"{count_parameters(network):,}")
    objective = DenoisingObjective(network, build_scheduler(config.scheduler, "ddpm"), config.scheduler)
    preview = preview_inputs(train_set)
    trained, result = fit(
        objective, sample_batch, config.train, out, device=device, resume=resume,
        config_text=checkpoint_identity(config),
        progress=stage_progress(progress, "diffusion" if latents is not None else ""),
        on_sample=lambda step, ema: save_samples(ema.network, preview, config, out / "samples", step, space),
    )
    meta["training"] = fit_summary(result, config.train.num_steps, device)
    if not distributed.is_main():
        return None
    model = TrainedModel(config=config, network=trained.network.eval(), meta=meta, folder=out, space=space)
    meta |= calibrate(model, val_cases, progress=progress)
    save_model(out, config, trained.network, meta)
    return load_model(out, device=device)


def fit_summary(result, steps: int, device: torch.device) -> dict:
    """What meta.json records of a training stage."""
    return {"steps": steps, "seconds_this_run": round(result.seconds, 1),
            "samples_per_s": round(result.samples_per_s, 2), "data_wait_fraction": round(result.data_fraction, 4),
            "final_loss": result.final_loss, "device": str(device), "processes": distributed.world_size()}


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


def checkpoint_identity(config: RunConfig) -> str:
    """What a stage-2 checkpoint must agree with to be resumed: the config, less the step counts."""
    identity = config_to_dict(config)
    identity["train"].pop("num_steps")
    identity["autoencoder"].pop("num_steps")
    return yaml.safe_dump(identity)


def stage_progress(progress: Progress | None, stage: str) -> Progress | None:
    """The progress callback with the stage's name before its message."""
    if progress is None or not stage:
        return progress
    return lambda done, total, info="": progress(done, total, f"{stage}: {info}")


def preview_inputs(dataset, count: int = 4) -> torch.Tensor:
    """A few evenly spaced training inputs (B, C, *S) for the PNG grids."""
    return torch.stack([dataset[int(i)]["image"] for i in np.linspace(0, len(dataset) - 1, count).astype(int)])


def encode_dataset(space: Space, dataset, batch_size: int = 64) -> torch.Tensor:
    """x_0 of every input of ``dataset`` in ``space``: (N, C', *S'), on the CPU."""
    chunks = []
    device = next(space.autoencoder.parameters()).device
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))])
        chunks.append(space.encode(images.to(device)).float().cpu())
    return torch.cat(chunks)


def train_autoencoder(train_set, modalities: tuple[str, ...], config: RunConfig, out: Path, *,
                      device: torch.device, resume: bool, progress: Progress | None) -> torch.nn.Module:
    """Stage 1: train (or, when ``autoencoder.safetensors`` exists for these settings, load) the autoencoder."""
    cfg, dims = config.autoencoder, config.model.spatial_dims
    path = out / AUTOENCODER
    identity = yaml.safe_dump({"autoencoder": config_to_dict(cfg) | {"num_steps": None},
                               "data": config_to_dict(config.data), "spatial_dims": dims,
                               "modalities": list(modalities), "seed": config.train.seed})
    with torch.random.fork_rng():
        torch.manual_seed(config.train.seed)
        autoencoder = build_autoencoder(cfg, spatial_dims=dims, in_channels=len(modalities))
        discriminator = (build_discriminator(cfg, spatial_dims=dims, in_channels=len(modalities))
                         if cfg.adversarial_weight > 0 else None)
    if path.exists():
        metadata = read_safetensors_metadata(path)
        if metadata.get("identity") != identity:
            raise CheckpointError(f"{path}: trained with other autoencoder or data settings; "
                                  "use a new --out, or --overwrite to train both stages again")
        if metadata.get("steps") == str(cfg.num_steps):
            load_weights(autoencoder, path)
            log.info("stage 1: %s exists for these settings; not trained again", path)
            return autoencoder.to(device).eval()
        log.info("stage 1: %s has %s steps, %d asked for; training on", path, metadata.get("steps"), cfg.num_steps)
    log.info("stage 1 autoencoder: %s parameters", f"{count_parameters(autoencoder):,}")
    objective = AutoencoderObjective(autoencoder, discriminator, cfg)
    stage_cfg = replace(config.train, num_steps=cfg.num_steps, batch_size=cfg.batch_size, lr=cfg.lr,
                        ema_decay=cfg.ema_decay)

    def sample_batch(generator: torch.Generator) -> dict:
        index = torch.randint(len(train_set), (cfg.batch_size,), generator=generator)
        return {"x0": torch.stack([train_set[int(i)]["image"] for i in index])}

    preview = preview_inputs(train_set)
    stage_dir = out / "autoencoder"
    trained, result = fit(objective, sample_batch, stage_cfg, stage_dir, device=device, resume=resume,
                     config_text=identity, progress=stage_progress(progress, "autoencoder"),
                     on_sample=lambda step, ema: save_autoencoder_grid(
                         ema.autoencoder, preview, cfg.kind, stage_dir / "samples" / f"{step:07d}.png"))
    autoencoder = trained.autoencoder.eval()
    log.info("stage 1: %.1f samples/s, %.1f%% of the time waiting on data", result.samples_per_s,
             100 * result.data_fraction)
    if distributed.is_main():
        write_safetensors(state_tensors(autoencoder), path,
                          {"identity": identity, "steps": str(cfg.num_steps),
                           "training": json.dumps(fit_summary(result, cfg.num_steps, device))})
        (out / CHECKPOINT).unlink(missing_ok=True)  # a stage-2 checkpoint belongs to the old latents
    distributed.barrier()
    return autoencoder


def autoencoder_report(autoencoder: torch.nn.Module, held_out, config: RunConfig, folder: Path) -> dict:
    """Stage 1's reconstruction error on held-out healthy inputs (it bounds what the LDM can see), and a PNG."""
    report = {"parameters": count_parameters(autoencoder), "kind": config.autoencoder.kind}
    recorded = read_safetensors_metadata(folder.parent / AUTOENCODER).get("training")
    if recorded:
        report["training"] = json.loads(recorded)
    if len(held_out) == 0:
        log.warning("no healthy held-out inputs: the autoencoder's reconstruction error is not measured")
        return report
    space = LatentSpace(autoencoder, 1.0, config.autoencoder.kind)
    device = next(autoencoder.parameters()).device
    errors, brain_errors = [], []
    for start in range(0, len(held_out), 64):
        items = [held_out[i] for i in range(start, min(start + 64, len(held_out)))]
        images = torch.stack([item["image"] for item in items]).to(device)
        brain = torch.stack([item["brain"] for item in items]).to(device) > 0
        error = (space.decode(space.encode(images)) - images).abs().mean(dim=1, keepdim=True)
        errors.append(error.flatten().cpu())
        brain_errors.append(error[brain].cpu())
    report |= {"heldout_inputs": len(held_out), "heldout_l1": float(torch.cat(errors).mean()),
               "heldout_l1_brain": float(torch.cat(brain_errors).mean())}
    save_autoencoder_grid(autoencoder, preview_inputs(held_out, 6), config.autoencoder.kind,
                          folder / "reconstructions.png")
    log.info("autoencoder held-out L1: %.4f (brain %.4f)", report["heldout_l1"], report["heldout_l1_brain"])
    return report


def calibrate(model: TrainedModel, healthy_cases: list[Case], *, seed: int = 0,
              progress: Progress | None = None) -> dict:
    """Thresholds at the configured healthy false-positive rate, for anodiff and the FLAIR baseline.

    Voxels used: brain voxels of the axial slices without any label voxel (the
    same healthy definition as training), on the input grid, as detection sees them.
    """
    model_scores, baseline_scores = [], []
    for index, case in enumerate(healthy_cases):
        result = detect(model.network, model.config, case, model.modalities, threshold=np.inf, space=model.space,
                        generator=torch.Generator().manual_seed(seed))
        healthy = result.brain & _healthy_slices(case, result.brain.shape)
        model_scores.append(result.score_map[healthy])
        image = baseline_image(case, model.modalities, result)
        baseline_scores.append(baseline_score(image, result.brain)[healthy])
        if progress is not None:
            progress(index + 1, len(healthy_cases), f"calibrating {case.id}")
    fpr = model.config.anomaly.fpr
    return {
        "threshold": calibrate_threshold(model_scores, fpr),
        "baseline_threshold": calibrate_threshold(baseline_scores, fpr),
        "calibration": {"fpr": fpr, "cases": [c.id for c in healthy_cases],
                        "voxels": int(sum(s.size for s in model_scores))},
    }


def with_anomaly_settings(model: TrainedModel, overrides: list[str], *, progress: Progress | None = None
                          ) -> TrainedModel:
    """The model with ``anomaly.*`` overrides; thresholds recalibrated on its own calibration cases.

    A calibrated threshold belongs to the settings it was calibrated with (t0,
    steps, filtering), so changing them without recalibrating would be dishonest.
    """
    if not overrides:
        return model
    bad = [o for o in overrides if not o.strip().startswith("anomaly.")]
    if bad:
        raise ConfigError(f"only anomaly.* settings can change after training, not {bad[0]!r}")
    config = with_overrides(model.config, overrides)
    changed = replace(model, config=config)
    source = model.meta.get("training_data", {})
    wanted = set(source.get("calibration_cases", []))
    cases = [c for c in discover(source.get("root", "")).cases if c.id in wanted] if wanted else []
    if not cases:
        raise DataError(f"{model.folder}: calibration cases not found under {source.get('root')!r}; "
                        "cannot recalibrate for new anomaly settings")
    log.info("recalibrating for %s on %d healthy case(s)", " ".join(overrides), len(cases))
    return replace(changed, meta={**model.meta, **calibrate(changed, cases, progress=progress)})


def _healthy_slices(case: Case, shape) -> np.ndarray:
    """Bool (X, Y, Z): True on the axial (RAS z) slices with no label voxel; all True without a label."""
    if case.label is None:
        return np.ones(shape, bool)
    label = read_volume(case.label, allow_constant=True)
    ornt = nib.orientations.io_orientation(label.affine)
    axis = int(np.argmax(np.abs(ornt[:, 0]) == 2))  # the voxel axis running along world z
    lesion_on = (label.data > 0).any(axis=tuple(a for a in range(3) if a != axis))
    keep = ~lesion_on
    view = [1, 1, 1]
    view[axis] = -1
    return np.broadcast_to(keep.reshape(view), shape)


def baseline_modality(case: Case, modalities: tuple[str, ...]) -> str:
    """The baseline's modality: FLAIR when the case has it, else the model's first."""
    return "flair" if "flair" in case.images else modalities[0]


def baseline_image(case: Case, modalities: tuple[str, ...], result: AnomalyResult) -> np.ndarray:
    """The baseline's image (X, Y, Z); reuses what detection already read when it is the same file."""
    name = baseline_modality(case, modalities)
    return result.reference.data if name == modalities[0] else read_volume(case.images[name]).data


def baseline_score(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The intensity baseline: histogram-equalised image inside the brain, in [0, 1]; 0 outside."""
    equalised = exposure.equalize_hist(image, nbins=1024, mask=brain)
    return np.where(brain, equalised, 0).astype(np.float32)


def save_reconstruction_grid(network, images: torch.Tensor, config: RunConfig, path: Path, *,
                             space: Space | None = None) -> None:
    """PNG rows: input, reconstruction and residual of a few inputs (first modality; mid slice in 3D)."""
    network.eval()
    generator = torch.Generator().manual_seed(0)
    residual, recon, _ = score_slices(network, images, config, space=space, generator=generator)
    save_grid([images[:, 0], recon[:, 0], (residual[:, 0] * 4).clamp(0, 1)], path)


def save_samples(network, preview: torch.Tensor, config: RunConfig, folder: Path, step: int, space: Space) -> None:
    """The sample PNGs of a training step: reconstructions and, for an LDM, images generated from noise."""
    save_reconstruction_grid(network, preview, config, folder / f"{step:07d}.png", space=space)
    if isinstance(space, LatentSpace):
        factor = config.autoencoder.downsampling
        latent_shape = (len(preview), config.autoencoder.latent_channels, *(s // factor for s in preview.shape[2:]))
        save_generated_grid(network, space, config, latent_shape, folder / f"{step:07d}_generated.png")


def save_generated_grid(network, space: LatentSpace, config: RunConfig, latent_shape, path: Path) -> None:
    """What the LDM makes of pure noise (20 DDIM steps, MONAI's LatentDiffusionInferer): healthy-looking brains."""
    scheduler = build_scheduler(config.scheduler, "ddim", clip_sample=False)
    scheduler.set_timesteps(20)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=space.scale_factor)
    device = next(network.parameters()).device
    noise = torch.randn(tuple(latent_shape), generator=torch.Generator().manual_seed(0)).to(device)
    network.eval()
    with torch.inference_mode():
        images = inferer.sample(input_noise=noise, autoencoder_model=space.autoencoder, diffusion_model=network,
                                scheduler=scheduler, verbose=False)
    save_grid([images[:, 0].clamp(0, 1)], path)


def save_autoencoder_grid(autoencoder, images: torch.Tensor, kind: str, path: Path) -> None:
    """PNG rows: input, autoencoder reconstruction, and |difference| x 4 (first modality; mid slice in 3D)."""
    was_training = autoencoder.training
    space = LatentSpace(autoencoder, 1.0, kind)
    device = next(autoencoder.parameters()).device
    recon = space.decode(space.encode(images.to(device))).cpu()
    autoencoder.train(was_training)
    save_grid([images[:, 0], recon[:, 0], ((recon - images).abs()[:, 0] * 4).clamp(0, 1)], path)


def save_grid(rows: list[torch.Tensor], path: Path) -> None:
    """Rows of (B, H, W) or (B, H, W, D) images in [0, 1] (3D: the middle axial slice) as one PNG."""
    rows = [r[..., r.shape[-1] // 2] if r.ndim == 4 else r for r in rows]
    grid = torch.cat([torch.cat(list(r.float().cpu()), dim=1) for r in rows], dim=0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.rot90(grid) * 255).astype(np.uint8)).save(path)


# ---------------------------------------------------------------- detect


def resolve_cases(inputs: list[Path], modality_paths: dict[str, Path]) -> list[Case]:
    """Cases to detect on: a scan file, a case folder, a data folder, or one path per modality."""
    if modality_paths:
        return [Case(id=_stem(next(iter(modality_paths.values()))), images=modality_paths)]
    cases: list[Case] = []
    for path in inputs:
        if path.is_file() and not path.name.endswith(".json"):
            cases.append(Case(id=_stem(path), images={"image": path}))
        else:
            found = discover(path)
            if not found.cases:
                raise DataError(f"{path}: no cases found")
            cases += found.cases
    return cases


def _stem(path: Path) -> str:
    return strip_image_suffix(path)


def match_modalities(case: Case, model: TrainedModel) -> Case:
    """A single unnamed scan is taken as the model's one modality; otherwise names must match."""
    if list(case.images) == ["image"] and len(model.modalities) == 1:
        return Case(id=case.id, images={model.modalities[0]: case.images["image"]}, label=case.label,
                    layout=case.layout)
    missing = [m for m in model.modalities if m not in case.images]
    if missing:
        raise DataError(
            f"case {case.id}: the model was trained on {list(model.modalities)} but the input has "
            f"{list(case.images)}; give each modality (e.g. --flair a.nii.gz --t1 b.nii.gz)"
        )
    return case


@dataclass(frozen=True)
class DetectOutcome:
    case_id: str
    written: list[Path]
    error: str | None = None
    seconds: float = 0.0
    timings: dict | None = None


Outputs = Callable[[Case], dict[str, Path | None]]


def detect_cases(
    model: TrainedModel,
    cases: list[Case],
    outputs: Outputs,
    *,
    threshold: float | None = None,
    overwrite: bool = False,
    seed: int = 0,
    samples: int | None = None,
    progress: Progress | None = None,
) -> list[DetectOutcome]:
    """Detect (or, for a segdiff model, segment) every case; a failing case is reported and the others still run.

    ``outputs(case)`` gives the paths to write, by name: ``mask`` (required), ``map``
    (anomaly map, or fused probability) and ``uncertainty`` (segdiff), None for
    not wanted. A per-region map of a multi-region model goes to one file per
    region (``<name>_<region>``). Nothing is written for a failed case; existing
    files are kept unless ``overwrite``.
    """
    segdiff = model.config.model.kind == "segdiff"
    chosen = threshold  # segdiff: None means the config's threshold on the fused probability
    if chosen is None and not segdiff:
        chosen = model.config.anomaly.threshold
        chosen = model.meta.get("threshold") if chosen is None else chosen
        if chosen is None:
            raise DataError(f"{model.folder}: the model has no calibrated threshold; pass --threshold")
    if samples is not None and not segdiff:
        raise DataError(f"{model.folder}: a {model.config.model.kind} model draws no samples; --samples and "
                        "--uncertainty are for segdiff models")
    outcomes = []
    for index, case in enumerate(cases):
        clock = time.perf_counter()
        written: list[Path] = []
        fresh: list[Path] = []
        try:
            targets = output_files(outputs(case), model)
            fresh = [t for t in targets.values() if not t.exists()]
            case = match_modalities(case, model)
            inputs = {p.resolve() for p in case.images.values()}
            for target in targets.values():
                if target.resolve() in inputs:
                    raise DataError(f"{target}: output path equals an input; choose another --out")
                if target.exists() and not overwrite:
                    raise DataError(f"{target}: already exists (pass --overwrite to replace it)")
            generator = torch.Generator().manual_seed(seed)
            if segdiff:
                result = segment(model.network, model.config, case, model.modalities, samples=samples,
                                 threshold=chosen, generator=generator)
                arrays = {"mask": result.mask, **per_region("map", result.probability, model),
                          **per_region("uncertainty", result.uncertainty, model)}
            else:
                result = detect(model.network, model.config, case, model.modalities, threshold=chosen,
                                space=model.space, generator=generator)
                arrays = {"mask": result.mask, "map": result.score_map}
            writing = time.perf_counter()
            for name, target in targets.items():
                dtype = np.uint8 if name == "mask" else np.float32
                written.append(write_volume(arrays[name], target, like=result.reference, dtype=dtype,
                                            overwrite=overwrite))
            timings = {**result.timings, "write_s": time.perf_counter() - writing}
            outcomes.append(DetectOutcome(case.id, written, seconds=time.perf_counter() - clock, timings=timings))
        except Exception as err:  # one bad case must not stop a batch of hundreds
            if not isinstance(err, AnodiffError):
                log.debug("case %s failed", case.id, exc_info=True)
                err = f"unexpected {type(err).__name__}: {' '.join(str(err).split())} (run with -v for details)"
            for path in written:  # no half-made case: a mask without the maps it was asked with
                if path in fresh:
                    path.unlink(missing_ok=True)
            outcomes.append(DetectOutcome(case.id, [], error=str(err)))
        if progress is not None:
            progress(index + 1, len(cases), case.id)
    return outcomes


def output_files(wanted: dict[str, Path | None], model: TrainedModel) -> dict[str, Path]:
    """The files one case writes: ``wanted`` less the unwanted, a map per region for a multi-region model."""
    if model.config.model.kind != "segdiff" and wanted.get("uncertainty") is not None:
        raise DataError(f"{model.folder}: a {model.config.model.kind} model has no uncertainty map; "
                        "--uncertainty is for segdiff models")
    files = {}
    for name, path in wanted.items():
        if path is None:
            continue
        if name != "mask" and model.config.model.kind == "segdiff" and len(model.config.segmentation.regions) > 1:
            suffix = path.name[len(strip_image_suffix(path)):]
            for region in model.config.segmentation.regions:
                files[f"{name}_{region}"] = path.with_name(f"{strip_image_suffix(path)}_{region}{suffix}")
        else:
            files[name] = path
    return files


def per_region(name: str, maps: np.ndarray, model: TrainedModel) -> dict[str, np.ndarray]:
    """(R, X, Y, Z) maps by output name: ``name`` for one region, ``name_<region>`` for several."""
    regions = model.config.segmentation.regions
    if len(regions) == 1:
        return {name: maps[0]}
    return {f"{name}_{region}": m for region, m in zip(regions, maps)}


# ---------------------------------------------------------------- evaluate


def evaluate_model(model: TrainedModel, data: Path, out: Path, *, seed: int = 0,
                   progress: Progress | None = None) -> dict:
    """Evaluate on the labelled cases of ``data``; writes report.json, per_case.csv, summary.md, overlays/."""
    found = discover(data)
    cases = [match_modalities(c, model) for c in found.cases if c.label is not None]
    if not cases:
        raise DataError(f"{data}: no labelled cases to evaluate on")
    info = read_cohort_info(found.root)
    baseline_name = baseline_modality(cases[0], model.modalities)
    out.mkdir(parents=True, exist_ok=True)
    rows, anodiff_scores, anodiff_masks, base_scores, truths = [], [], [], [], []
    seconds, evals = [], 0
    for index, case in enumerate(cases):
        clock = time.perf_counter()
        result = detect(model.network, model.config, case, model.modalities, threshold=model.meta["threshold"],
                        space=model.space, generator=torch.Generator().manual_seed(seed), with_reconstruction=True)
        seconds.append(time.perf_counter() - clock)
        evals = result.num_network_evals
        label = read_volume(case.label, allow_constant=True).data > 0
        brain = result.brain
        flair = baseline_image(case, model.modalities, result)
        base = baseline_score(flair, brain)
        anodiff_scores.append(result.score_map[brain])
        anodiff_masks.append(result.mask[brain] > 0)
        base_scores.append(base[brain])
        truths.append(label[brain])
        lesion_ml = float(label.sum() * np.prod(result.reference.spacing_mm) / 1000)
        kind = info[case.id].kind if case.id in info else ("healthy" if not label.any() else "lesion")
        rows.append({"case": case.id, "kind": kind, "lesion_ml": round(lesion_ml, 2),
                     "size": size_bin(lesion_ml) if label.any() else "none", "seconds": round(seconds[-1], 2)})
        save_overlay(out / "overlays" / f"{case.id.replace('/', '_')}.png", flair, result, label)
        if progress is not None:
            progress(index + 1, len(cases), case.id)

    methods = {
        "anodiff": summarize_method(anodiff_scores, truths, calibrated=model.meta["threshold"],
                                    masks_calibrated=anodiff_masks),
        f"{baseline_name} threshold": summarize_method(base_scores, truths,
                                                           calibrated=model.meta["baseline_threshold"]),
    }
    for name, summary in methods.items():
        for key, values in summary["per_case"].items():
            for row, value in zip(rows, values):
                row[f"{name}: {key}"] = value
    report = {
        "model": str(model.folder),
        "data": str(data),
        "num_cases": len(cases),
        "num_lesion_cases": sum(1 for t in truths if t.any()),
        "network_evals_per_slice": evals,
        "seconds_per_volume": float(np.mean(seconds)),
        "peak_gpu_memory_mb": (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None),
        "anomaly": config_to_dict(model.config.anomaly),
        "methods": {k: {m: v for m, v in s.items() if m != "per_case"} for k, s in methods.items()},
        "breakdown": breakdown(rows, list(methods)),
        "cases": rows,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    with (out / "per_case.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.md").write_text(markdown_summary(report), encoding="utf-8")
    return report


def breakdown(rows: list[dict], methods: list[str]) -> dict:
    """Per-volume mean Dice (calibrated) and AUROC by lesion kind and by lesion size."""
    out: dict[str, dict] = {}
    for key in ("kind", "size"):
        groups: dict[str, list[dict]] = {}
        for row in rows:
            if row["lesion_ml"] > 0:
                groups.setdefault(row[key], []).append(row)
        out[key] = {
            group: {"cases": len(members),
                    **{f"{m}: {metric}": float(np.nanmean([r[f"{m}: {metric}"] for r in members]))
                       for m in methods for metric in ("dice_calibrated", "auroc")}}
            for group, members in sorted(groups.items())
        }
    return out


def markdown_summary(report: dict) -> str:
    lines = [f"# anodiff evaluation: {report['num_cases']} cases ({report['num_lesion_cases']} with lesions)", "",
             f"Model `{report['model']}`, data `{report['data']}`; {report['network_evals_per_slice']} network "
             f"evaluations per slice, {report['seconds_per_volume']:.1f} s per volume.", "",
             "Dice: *calibrated* = label-free threshold at the healthy FPR fixed at training; *val-best* = "
             "threshold chosen on the other cases (leave one out); *best possible* = upper bound on these cases. "
             "Pooled = over all brain voxels of the test set; per-volume = mean over lesion cases.", "",
             "| method | AUROC pooled | AUPRC pooled | AUROC per-volume | Dice calibrated pooled | "
             "Dice calibrated per-volume | Dice val-best pooled | Dice best possible (bound) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in report["methods"].items():
        lines.append(f"| {name} | {m['auroc_pooled']:.3f} | {m['auprc_pooled']:.3f} | "
                     f"{m['auroc_per_volume_mean']:.3f} | {m['dice_calibrated_pooled']:.3f} | "
                     f"{m['dice_calibrated_per_volume_mean']:.3f} ± {m['dice_calibrated_per_volume_std']:.3f} | "
                     f"{m['dice_validation_best_pooled']:.3f} | {m['dice_best_possible_pooled']:.3f} |")
    for key, groups in report["breakdown"].items():
        methods = list(report["methods"])
        lines += ["", f"## By lesion {key} (per-volume means, calibrated threshold)", "",
                  f"| {key} | cases | " + " | ".join(f"{m} Dice | {m} AUROC" for m in methods) + " |",
                  "| --- | --- | " + " | ".join("--- | ---" for _ in methods) + " |"]
        for group, values in groups.items():
            cells = " | ".join(f"{values[f'{m}: dice_calibrated']:.3f} | {values[f'{m}: auroc']:.3f}"
                               for m in methods)
            lines.append(f"| {group} | {values['cases']} | {cells} |")
    return "\n".join(lines) + "\n"


def ras_view(affine: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A function turning (X, Y, Z) volumes of this affine's grid into RAS voxel order, for display."""
    ornt = nib.orientations.io_orientation(affine)
    return lambda volume: nib.orientations.apply_orientation(volume, ornt)


def display_slice(image: np.ndarray, z: int) -> np.ndarray:
    """Axial slice z of a RAS volume scaled to [0, 1] by its 99.5th percentile inside the brain."""
    scale = np.percentile(image[image > 0], 99.5) if (image > 0).any() else 1.0
    return np.clip(image[..., z] / scale, 0, 1)


def save_overlay(path: Path, image: np.ndarray, result: AnomalyResult, label: np.ndarray) -> None:
    """PNG: image, reconstruction, anomaly map, and outlines (red predicted, green true) on one axial slice."""
    ras = ras_view(result.reference.affine)
    img, score, mask, truth = ras(image), ras(result.score_map), ras(result.mask), ras(label.astype(np.uint8))
    z = int(np.argmax(truth.sum((0, 1)))) if truth.any() else int(np.argmax(score.sum((0, 1))))
    base = display_slice(img, z)
    recon = np.zeros_like(base)
    if result.reconstruction is not None:  # shown inside the brain only, as it is scored
        recon = (ras(result.reconstruction[0]) * ras(result.brain))[..., z]
    heat = np.clip(score[..., z] / max(float(np.percentile(score[score > 0], 99.9)) if (score > 0).any() else 1, 1e-6),
                   0, 1)
    outline = np.stack([base] * 3, -1)
    outline[segmentation.find_boundaries(mask[..., z] > 0)] = (1, 0, 0)
    outline[segmentation.find_boundaries(truth[..., z] > 0)] = (0, 1, 0)
    tiles = [np.stack([t] * 3, -1) for t in (base, recon, heat)] + [outline]
    grid = np.concatenate([np.rot90(t) for t in tiles], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid * 255).astype(np.uint8)).save(path)
