"""The supervised mode's jobs (``model.kind: segdiff``): train SegDiff and its UNet reference, evaluate both.

Detection (``anodiff detect``) goes through :func:`anodiff.workflows.detect_cases`
for every kind. The training loop, the DDIM sampler, the data layer and the
metrics are the ones the unsupervised mode uses.
"""

from __future__ import annotations

import csv
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from PIL import Image
from skimage import segmentation as outlines

from anodiff import distributed
from anodiff.config import RunConfig, config_to_dict, region_labels
from anodiff.data.cases import discover, select_modalities
from anodiff.data.datasets import SliceDataset
from anodiff.data.transforms import IMAGE, LABEL
from anodiff.detection import prepare
from anodiff.diffusion import DenoisingObjective, build_scheduler, to_model_range
from anodiff.errors import DataError
from anodiff.evaluation import auprc, auroc, dice, nanmean, nanstd
from anodiff.io import read_volume
from anodiff.modelfolder import META, REFERENCE, TrainedModel, load_model, save_model
from anodiff.models import build_network, build_reference_unet, count_parameters
from anodiff.segmentation import (
    ReferenceObjective,
    SegmentationResult,
    border_zones,
    fuse,
    predict_volume,
    region_masks,
    sample_slices,
    segment,
)
from anodiff.training import fit, remove_stale_temporaries, state_tensors, write_safetensors
from anodiff.workflows import (
    Progress,
    checkpoint_identity,
    display_slice,
    fit_summary,
    match_modalities,
    ras_view,
    save_grid,
    stage_progress,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- train


def train_segmentation(data: Path, config: RunConfig, out: Path, *, device: torch.device, resume: bool = False,
                       progress: Progress | None = None) -> TrainedModel | None:
    """Train SegDiff (and, with ``segmentation.reference``, a plain UNet on the same batches) on labelled cases.

    Every case of ``data`` is used (an unlabelled case counts as lesion-free); the
    test cases belong in another folder. Returns the model (None on ranks other than 0).
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
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / META).unlink(missing_ok=True)  # the folder is a model again once meta.json is written, last
        remove_stale_temporaries(out)
    distributed.barrier()

    def draw(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of images (B, C, H, W) and region masks (B, R, H, W), lesion slices oversampled."""
        size = config.train.batch_size
        from_lesions = int(round(size * cfg.lesion_fraction))
        picks = [lesion[int(i)] for i in torch.randint(len(lesion), (from_lesions,), generator=generator)]
        picks += torch.randint(len(dataset), (size - from_lesions,), generator=generator).tolist()
        items = [dataset[i] for i in picks]
        return torch.stack([it[IMAGE] for it in items]), torch.stack([it[LABEL] for it in items])

    def segdiff_batch(generator: torch.Generator) -> dict:
        images, masks = draw(generator)
        return {"x0": to_model_range(masks), "condition": to_model_range(images)}

    def reference_batch(generator: torch.Generator) -> dict:  # the same draws as SegDiff's at every step
        images, masks = draw(generator)
        return {"image": images, "label": masks}

    meta: dict = {
        "kind": "segdiff",
        "modalities": list(modalities),
        "regions": {name: list(values) for name, values in zip(cfg.regions, regions)},
        "preprocessing": config_to_dict(config.data),
        "training_data": {"root": str(data.resolve()), "train_cases": [c.id for c in found.cases],
                          "cases_per_process": distributed.gather([c.id for c in rank_cases]),
                          "num_slices": sum(distributed.gather(len(dataset))),
                          "num_lesion_slices": sum(distributed.gather(len(lesion))),
                          "layouts": list(found.layouts)},
    }
    identity = checkpoint_identity(config)
    preview = preview_lesion_slices(dataset, lesion)
    reference = None
    if cfg.reference:
        with torch.random.fork_rng():
            torch.manual_seed(config.train.seed)
            unet = build_reference_unet(config.model, cfg.reference_channels, in_channels=len(modalities),
                                        out_channels=len(regions))
        log.info("UNet reference: %s parameters", f"{count_parameters(unet):,}")
        trained, result = fit(ReferenceObjective(unet), reference_batch, config.train, out / "reference",
                              device=device, resume=resume, config_text=identity,
                              progress=stage_progress(progress, "UNet reference"), on_sample=None)
        reference = trained.network.eval()
        meta["reference"] = {"network": "monai.networks.nets.UNet", "parameters": count_parameters(unet),
                             "training": fit_summary(result, config.train.num_steps, device)}
    with torch.random.fork_rng():
        torch.manual_seed(config.train.seed)
        network = build_network(config.model, in_channels=len(regions) + len(modalities), out_channels=len(regions))
    log.info("SegDiff denoiser: %s parameters", f"{count_parameters(network):,}")
    objective = DenoisingObjective(network, build_scheduler(config.scheduler, "ddpm"), config.scheduler)
    trained, result = fit(
        objective, segdiff_batch, config.train, out, device=device, resume=resume, config_text=identity,
        progress=stage_progress(progress, "SegDiff" if cfg.reference else ""),
        on_sample=lambda step, ema: save_mask_grid(ema.network, preview, config, out / "samples" / f"{step:07d}.png"),
    )
    meta["training"] = fit_summary(result, config.train.num_steps, device)
    meta["parameters"] = count_parameters(network)
    if not distributed.is_main():
        return None
    if reference is not None:
        write_safetensors(state_tensors(reference), out / REFERENCE)
    save_model(out, config, trained.network, meta)
    return load_model(out, device=device)


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


# ---------------------------------------------------------------- evaluate


def evaluate_segmentation(model: TrainedModel, data: Path, out: Path, *, samples: int | None = None, seed: int = 0,
                          progress: Progress | None = None) -> dict:
    """Dice, HD95, AUROC and AUPRC per region for SegDiff (1 and N samples) and the UNet reference.

    Also: Dice of the fusion of the first k samples for every k <= N, and the mean
    uncertainty on the true lesion's border, inside it and in the brain outside it.
    Writes report.json, per_case.csv, summary.md and overlays/ to ``out``.
    """
    cfg = model.config.segmentation
    samples = samples or cfg.samples
    found = discover(data)
    cases = [match_modalities(c, model) for c in found.cases if c.label is not None]
    if not cases:
        raise DataError(f"{data}: no labelled cases to evaluate on")
    regions = tuple(region_labels(r) for r in cfg.regions)
    names = {"segdiff": f"SegDiff ({samples} samples)", "one": "SegDiff (1 sample)", "unet": "UNet reference"}
    out.mkdir(parents=True, exist_ok=True)
    collected: dict[str, list] = {key: [] for key in ("rows", "curve", "zones", "predicted_zones")}
    pooled: dict[str, dict[str, list]] = {}
    seconds: dict[str, list[float]] = {"segdiff": [], "unet": []}
    for index, case in enumerate(cases):
        clock = time.perf_counter()
        prepared = prepare(case, model.modalities, model.config.data, spatial_dims=2)  # once, for both methods
        preprocess_s = time.perf_counter() - clock
        clock = time.perf_counter()
        result = segment(model.network, model.config, case, model.modalities, samples=samples,
                         generator=torch.Generator().manual_seed(seed), prepared=prepared)
        seconds["segdiff"].append(preprocess_s + time.perf_counter() - clock)
        truth = region_masks(read_volume(case.label, allow_constant=True).data, regions)
        outputs = {"segdiff": (result.probability, result.regions),
                   "one": (result.samples[0].astype(np.float32), result.samples[0] > cfg.threshold)}
        unet = None
        if model.reference is not None:
            clock = time.perf_counter()
            unet = segment(model.network, model.config, case, model.modalities, prepared=prepared,
                           predictor=lambda image, brain: predict_volume(model.reference, image, brain))
            seconds["unet"].append(preprocess_s + time.perf_counter() - clock)
            outputs["unet"] = (unet.probability, unet.regions)
        row = {"case": case.id, "lesion_ml": round(float(truth[0].sum() * np.prod(result.reference.spacing_mm))
                                                    / 1000, 2)}
        for key, (probability, masks) in outputs.items():
            for r, name in enumerate(cfg.regions):
                figures = region_figures(probability[r], masks[r], truth[r], result.brain, result.reference.spacing_mm)
                row |= {f"{names[key]}: {metric} {name}": value for metric, value in figures.items()}
                store = pooled.setdefault(f"{key}/{name}", {"scores": [], "truth": [], "masks": []})
                store["scores"].append(probability[r][result.brain])
                store["truth"].append(truth[r][result.brain])
                store["masks"].append(masks[r][result.brain])
        collected["rows"].append(row)
        collected["curve"].append(dice_by_samples(result, truth, cfg.fusion, cfg.threshold))
        collected["zones"].append({name: zone_means(result.uncertainty[r], truth[r], result.brain)
                                   for r, name in enumerate(cfg.regions)})
        collected["predicted_zones"].append({name: zone_means(result.uncertainty[r], result.regions[r], result.brain)
                                             for r, name in enumerate(cfg.regions)})
        save_segmentation_overlay(out / "overlays" / f"{case.id.replace('/', '_')}.png", result, truth[0], unet)
        if progress is not None:
            progress(index + 1, len(cases), case.id)
    report = segmentation_report(model, data, collected, pooled, seconds, names, samples)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    with (out / "per_case.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(collected["rows"][0]))
        writer.writeheader()
        writer.writerows(collected["rows"])
    (out / "summary.md").write_text(segmentation_markdown(report), encoding="utf-8")
    return report


def region_figures(probability: np.ndarray, mask: np.ndarray, truth: np.ndarray, brain: np.ndarray,
                   spacing_mm) -> dict[str, float]:
    """Dice, HD95 (mm; NaN when either mask is empty), AUROC and AUPRC (inside the brain) of one region."""
    return {"dice": dice(mask, truth), "hd95": hd95(mask, truth, spacing_mm),
            "auroc": auroc(probability[brain], truth[brain]), "auprc": auprc(probability[brain], truth[brain])}


def hd95(mask: np.ndarray, truth: np.ndarray, spacing_mm) -> float:
    """95th-percentile symmetric surface distance in mm (MONAI); NaN when either mask is empty."""
    if not mask.any() or not truth.any():
        return float("nan")
    pred = torch.from_numpy(np.ascontiguousarray(mask))[None, None]
    true = torch.from_numpy(np.ascontiguousarray(truth))[None, None]
    with warnings.catch_warnings():  # MONAI warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        distance = compute_hausdorff_distance(pred, true, include_background=True, percentile=95,
                                              spacing=[float(s) for s in spacing_mm])
    return float(distance.flatten()[0])


def dice_by_samples(result: SegmentationResult, truth: np.ndarray, fusion: str, threshold: float) -> list[float]:
    """Dice of the first region's fusion of the first k samples, k = 1..N (does fusing more help?)."""
    inside = result.brain
    samples = result.samples[:, 0][:, inside].astype(np.float32)  # (N, brain voxels)
    return [dice(fuse(samples[:k], fusion) > threshold, truth[0][inside]) for k in range(1, len(samples) + 1)]


def zone_means(spread: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """Mean uncertainty on the border band of the true lesion, inside it, and in the brain outside it."""
    return {zone: float(spread[where].mean()) if where.any() else float("nan")
            for zone, where in border_zones(truth, brain).items()}


def segmentation_report(model: TrainedModel, data: Path, collected: dict, pooled: dict, seconds: dict,
                        names: dict, samples: int) -> dict:
    rows, cfg = collected["rows"], model.config.segmentation
    lesion_rows = [r for r in rows if r["lesion_ml"] > 0]
    methods = {}
    for key, name in names.items():
        if key == "unet" and not seconds["unet"]:
            continue  # trained without the reference
        # The single sample is read off the N-sample run, so it has no time of its own (about 1/N of it).
        figures: dict = {"seconds_per_volume": None if key == "one" else float(np.mean(seconds[key])),
                         "parameters": (model.meta.get("reference", {}) if key == "unet" else model.meta).get(
                             "parameters")}
        for region in cfg.regions:
            store = pooled[f"{key}/{region}"]
            per_case = [r[f"{name}: dice {region}"] for r in lesion_rows]
            hds = [r[f"{name}: hd95 {region}"] for r in lesion_rows]
            figures[region] = {
                "dice_per_volume_mean": nanmean(per_case), "dice_per_volume_std": nanstd(per_case),
                "dice_pooled": dice(np.concatenate(store["masks"]), np.concatenate(store["truth"])),
                "hd95_mm_mean": nanmean(hds), "hd95_undefined_cases": sum(1 for h in hds if not np.isfinite(h)),
                "auroc_pooled": auroc(np.concatenate(store["scores"]), np.concatenate(store["truth"])),
                "auprc_pooled": auprc(np.concatenate(store["scores"]), np.concatenate(store["truth"])),
            }
        methods[name] = figures
    lesion_curves = np.array([c for c, r in zip(collected["curve"], rows) if r["lesion_ml"] > 0], dtype=float)

    def zone_summary(per_case: list[dict]) -> dict:
        return {region: {zone: nanmean([z[region][zone] for z in per_case]) for zone in ("border", "inside", "outside")}
                for region in cfg.regions}

    return {
        "model": str(model.folder), "data": str(data), "kind": "segdiff", "num_cases": len(rows),
        "num_lesion_cases": len(lesion_rows), "samples": samples, "network_evals_per_slice_and_sample":
        cfg.num_inference_steps, "fusion": cfg.fusion, "uncertainty": cfg.uncertainty, "threshold": cfg.threshold,
        "regions": list(cfg.regions),
        "peak_gpu_memory_mb": (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None),
        "methods": methods,
        "dice_by_samples": {"k": list(range(1, samples + 1)),
                            "dice_per_volume_mean": [nanmean(list(c)) for c in lesion_curves.T]},
        "uncertainty_by_zone": zone_summary(collected["zones"]),
        "uncertainty_by_predicted_zone": zone_summary(collected["predicted_zones"]),
        "cases": rows,
    }


def segmentation_markdown(report: dict) -> str:
    lines = [f"# anodiff segmentation: {report['num_cases']} cases ({report['num_lesion_cases']} with lesions)", "",
             f"Model `{report['model']}`, data `{report['data']}`; {report['samples']} samples fused by "
             f"{report['fusion']}, {report['network_evals_per_slice_and_sample']} DDIM steps each, threshold "
             f"{report['threshold']}. Dice and HD95: mean over lesion cases (HD95 undefined where a mask is "
             "empty); AUROC/AUPRC: pooled over brain voxels, on the fused probability.", "",
             "| method | region | Dice per-volume | Dice pooled | HD95 mm | AUROC | AUPRC | s/volume |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, figures in report["methods"].items():
        seconds = figures["seconds_per_volume"]
        for region in report["regions"]:
            m = figures[region]
            undefined = f" ({m['hd95_undefined_cases']} undefined)" if m["hd95_undefined_cases"] else ""
            lines.append(f"| {name} | {region} | {m['dice_per_volume_mean']:.3f} ± {m['dice_per_volume_std']:.3f} | "
                         f"{m['dice_pooled']:.3f} | {m['hd95_mm_mean']:.1f}{undefined} | {m['auroc_pooled']:.3f} | "
                         f"{m['auprc_pooled']:.3f} | {'in the row above' if seconds is None else f'{seconds:.1f}'} |")
    curve = report["dice_by_samples"]
    lines += ["", f"Dice ({report['regions'][0]}, per-volume mean) of the fusion of the first k samples:", "",
              "| k | " + " | ".join(map(str, curve["k"])) + " |", "|" + " --- |" * (len(curve["k"]) + 1),
              "| Dice | " + " | ".join(f"{d:.3f}" for d in curve["dice_per_volume_mean"]) + " |", "",
              f"Mean uncertainty ({report['uncertainty']}) by zone of the true lesion and of the fused segmentation "
              "(border: 2 voxels either side of the surface; per-case means, averaged):", "",
              "| region | zones of | border | inside | outside |", "| --- | --- | --- | --- | --- |"]
    for key, what in (("uncertainty_by_zone", "true lesion"), ("uncertainty_by_predicted_zone", "segmentation")):
        for region, zones in report[key].items():
            lines.append(f"| {region} | {what} | {zones['border']:.4f} | {zones['inside']:.4f} | "
                         f"{zones['outside']:.4f} |")
    return "\n".join(lines) + "\n"


def save_segmentation_overlay(path: Path, result: SegmentationResult, truth: np.ndarray,
                              unet: SegmentationResult | None) -> None:
    """PNG of the slice with most lesion: image, fused probability, uncertainty, and outlines
    (green truth, red SegDiff, blue UNet reference) on the image; below, the same tiles zoomed on the lesion."""
    ras = ras_view(result.reference.affine)
    image, true, found = ras(result.reference.data), ras(truth.astype(np.uint8)) > 0, ras(result.regions[0]) > 0
    z = int(np.argmax(true.sum((0, 1)))) if true.any() else int(np.argmax(found.sum((0, 1))))
    base = display_slice(image, z)
    spread = ras(result.uncertainty[0])[..., z]
    spread = np.clip(spread / max(float(spread.max()), 1e-6), 0, 1)
    drawn = np.stack([base] * 3, -1)
    for mask, colour in ((true[..., z], (0, 1, 0)), (found[..., z], (1, 0, 0)),
                         (None if unet is None else ras(unet.regions[0])[..., z] > 0, (0, 0.4, 1))):
        if mask is not None:
            drawn[outlines.find_boundaries(mask)] = colour
    tiles = [np.stack([t] * 3, -1) for t in (base, ras(result.probability[0])[..., z], spread)] + [drawn]
    rows = [np.concatenate([np.rot90(t) for t in tiles], axis=1)]
    near = true[..., z] | found[..., z]
    if near.any():  # the lesion, magnified to the tile's height
        (x0, y0), (x1, y1) = np.argwhere(near).min(0), np.argwhere(near).max(0) + 1
        margin = max(x1 - x0, y1 - y0) // 2 + 2
        box = (slice(max(0, x0 - margin), x1 + margin), slice(max(0, y0 - margin), y1 + margin))
        crops = np.concatenate([np.rot90(t[box]) for t in tiles], axis=1)
        height, width = rows[0].shape[:2]
        scale = min(height / crops.shape[0], width / crops.shape[1])
        rows_at = np.minimum((np.arange(int(crops.shape[0] * scale)) / scale).astype(int), crops.shape[0] - 1)
        cols_at = np.minimum((np.arange(int(crops.shape[1] * scale)) / scale).astype(int), crops.shape[1] - 1)
        zoomed = crops[rows_at][:, cols_at]  # nearest-neighbour magnification
        zoomed = np.pad(zoomed, ((0, height - zoomed.shape[0]), (0, width - zoomed.shape[1]), (0, 0)))
        rows.append(zoomed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.concatenate(rows, axis=0) * 255).astype(np.uint8)).save(path)
