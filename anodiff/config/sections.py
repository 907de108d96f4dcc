"""The config's sections: one frozen dataclass each, nested in :class:`RunConfig`.

``__post_init__`` checks ranges, so an out-of-range section cannot exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from anodiff.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """How cases become network inputs (see :mod:`anodiff.data.transforms`)."""

    modalities: tuple[str, ...] | None = None  # None: those every training case has
    spacing_mm: tuple[float, float, float] | None = None  # resample first; None keeps the scan's grid
    image_size: int = 128  # in-plane size (and depth in 3D) after crop to the brain
    # Intensities inside the brain, per volume and channel: "percentiles" maps [p_low, p_high] to [0, 1] (a large
    # bright lesion moves p_high and darkens the rest of its scan); "median" maps p_low to 0 and the brain's median
    # to 0.4, which a lesion can hardly move, so healthy tissue keeps its level and a bright lesion its contrast.
    normalisation: Literal["percentiles", "median"] = "percentiles"
    percentiles: tuple[float, float] = (0.5, 99.5)  # (p_low, p_high), in percent
    crop_margin: int = 2  # voxels kept around the brain's bounding box
    slice_range: tuple[float, float] = (0.0, 1.0)  # axial slices kept, as fractions of the brain's extent
    min_brain_fraction: float = 0.05  # slices with less brain than this share of the slice are dropped
    cache_dir: Path | None = None  # persistent cache of preprocessed volumes; None caches in memory
    # Where a 2D data set keeps its slices: "memory" (float32, as preprocessed) or "disk" (float16 records read
    # one slice at a time, under cache_dir or a temporary folder), for training data larger than memory.
    slice_store: Literal["memory", "disk"] = "memory"

    def __post_init__(self) -> None:
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ConfigError(f"data.percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if self.image_size < 8 or self.image_size % 8:
            raise ConfigError(f"data.image_size must be a multiple of 8 (>= 8), got {self.image_size}")
        a, b = self.slice_range
        if not 0 <= a < b <= 1:
            raise ConfigError(f"data.slice_range must satisfy 0 <= start < end <= 1, got {self.slice_range}")
        if not 0 <= self.min_brain_fraction < 1:
            raise ConfigError(f"data.min_brain_fraction must be in [0, 1), got {self.min_brain_fraction}")
        if self.spacing_mm is not None and min(self.spacing_mm) <= 0:
            raise ConfigError(f"data.spacing_mm must be positive, got {self.spacing_mm}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The denoising network, a MONAI ``DiffusionModelUNet``.

    ``kind`` names the method (:mod:`anodiff.methods` keeps the table and checks
    the name): ``ddpm`` diffuses pixels; ``ldm`` diffuses the latents of the
    autoencoder described in the ``autoencoder`` section (trained first);
    ``segdiff`` diffuses segmentation masks conditioned on the image (supervised,
    see the ``segmentation`` section).
    ``spatial_dims``: 2 works on axial slices, 3 on whole (resized) volumes.
    """

    kind: str = "ddpm"
    spatial_dims: Literal[2, 3] = 2
    channels: tuple[int, ...] = (32, 64, 128)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 16

    def __post_init__(self) -> None:
        if len(self.attention_levels) != len(self.channels):
            raise ConfigError(
                f"model.attention_levels has {len(self.attention_levels)} items but model.channels has "
                f"{len(self.channels)}; give one per level"
            )
        if any(c % self.norm_num_groups for c in self.channels):
            raise ConfigError(f"model.channels {self.channels} must be multiples of model.norm_num_groups")


@dataclass(frozen=True, kw_only=True)
class AutoencoderConfig:
    """Stage 1 of a latent diffusion model (``model.kind: ldm``): MONAI ``AutoencoderKL`` or ``VQVAE``.

    Trained on healthy data with L1 reconstruction, KL (or VQ) and, after
    ``adversarial_start`` steps of warm-up, a patch-adversarial loss
    (``PatchDiscriminator``, least squares). No perceptual loss: the usual one
    downloads network weights at run time.
    """

    kind: Literal["kl", "vq"] = "kl"
    channels: tuple[int, ...] = (32, 64, 64)  # one per level; the latent is 2**(levels - 1) times smaller
    latent_channels: int = 3
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] | None = None  # None: no attention at any level
    norm_num_groups: int = 16
    kl_weight: float = 1e-6
    num_embeddings: int = 256  # VQ codebook size
    adversarial_weight: float = 0.01  # 0 turns the adversary off
    adversarial_start: int = 500  # steps of reconstruction-only warm-up before the adversary joins
    discriminator_channels: int = 32
    discriminator_layers: int = 3
    num_steps: int = 5000
    batch_size: int = 16
    lr: float = 1e-4
    ema_decay: float = 0.0  # 0: the weights of the last step

    def __post_init__(self) -> None:
        if self.attention_levels is not None and len(self.attention_levels) != len(self.channels):
            raise ConfigError(f"autoencoder.attention_levels needs one item per autoencoder.channels level "
                              f"({len(self.channels)}), got {len(self.attention_levels)}")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ConfigError(f"autoencoder.channels {self.channels} must be multiples of "
                              f"autoencoder.norm_num_groups ({self.norm_num_groups})")
        if self.num_steps < 1 or self.batch_size < 1 or self.latent_channels < 1:
            raise ConfigError("autoencoder.num_steps, batch_size and latent_channels must be >= 1")

    @property
    def downsampling(self) -> int:
        """How many times smaller the latent is than the image, per axis."""
        return 2 ** (len(self.channels) - 1)


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """The noise schedule (MONAI scheduler names and arguments)."""

    num_train_timesteps: int = 1000
    schedule: Literal["linear_beta", "scaled_linear_beta", "cosine"] = "scaled_linear_beta"
    beta_start: float = 0.0005
    beta_end: float = 0.0195
    prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon"
    # Noise the model is trained with and detection noises with: i.i.d. Gaussian;
    # "coarse" (Gaussian drawn on a grid 1/coarse_factor the size, upsampled), which
    # destroys lesions larger than a few pixels (Kascenas et al., MIDL 2022); or
    # "simplex", multi-octave simplex noise (AnoDDPM, Wyatt et al. 2022; 2D only).
    noise: Literal["gaussian", "coarse", "simplex"] = "gaussian"
    coarse_factor: int = 8
    simplex_octaves: int = 6  # AnoDDPM's default
    simplex_persistence: float = 0.8  # AnoDDPM's default: amplitude ratio between octaves
    simplex_cycles: float = 4.0  # cycles of the first octave across the image
    # The denoiser trains on noise levels t < train_t_max (None: all). Detection reads reconstructions at its
    # t0 levels only, so training on the levels above them spends steps the score never uses.
    train_t_max: int | None = None
    # Masked noising (patched DDPM, Behrendt et al. 2023): the image is cut into square cells of this many pixels,
    # in two checkerboard groups. Training noises one group of half of each batch and learns to denoise it from the
    # clean other (the rest of the batch is noised whole); detection reconstructs the anomaly.masked_levels each
    # group from the other in turn (twice the passes), so a lesion is filled in from the healthy tissue around it
    # instead of being copied. None: always the whole image.
    noise_cell_px: int | None = None

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ConfigError(f"scheduler.num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.noise_cell_px is not None and self.noise_cell_px < 2:
            raise ConfigError(f"scheduler.noise_cell_px must be at least 2 pixels, got {self.noise_cell_px}")
        if self.train_t_max is not None and not 1 <= self.train_t_max <= self.num_train_timesteps:
            raise ConfigError(f"scheduler.train_t_max must be in [1, num_train_timesteps "
                              f"({self.num_train_timesteps})], got {self.train_t_max}")


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How a sample is denoised (:mod:`anodiff.diffusion.sampler`), by detection and segmentation alike."""

    # ddim: MONAI's DDIM grid from its first step at or below t0; ddim_t0: DDIM from exactly t0, on a grid its
    # step agrees with (one step: a one-pass x_0 estimate); ddpm: the full reverse chain, for reference.
    kind: Literal["ddim", "ddim_t0", "ddpm"] = "ddim"
    num_inference_steps: int = 10  # DDIM steps: from t0 back to 0 (detection), or from noise (segdiff)
    eta: float = 0.0  # DDIM noise: 0 deterministic; 1 fresh noise at each step, as in the DDPM reverse chain

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1:
            raise ConfigError(f"sampler.num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"sampler.eta must be in [0, 1], got {self.eta}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The training loop (shared by every mode)."""

    num_steps: int = 20000
    batch_size: int = 16
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: from lr down to 0 over num_steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on the CPU
    checkpoint_every: int = 500
    sample_every: int = 1000  # PNG grid of reconstructions; 0 turns it off
    log_every: int = 50
    val_fraction: float = 0.2  # healthy cases held out for threshold calibration
    # "cases": val_fraction of the cases calibrate and do not train; "slabs" (2D pixel space, for data sets
    # of a few cases): every case trains and lends an axial slab (about val_fraction of it) to calibration.
    holdout: Literal["cases", "slabs"] = "cases"
    seed: int = 0
    # 2D pixel-space denoiser: train on random square patches of this size, centred on the brain, and score
    # whole slices (the network is convolutional), so a finer image_size costs no more per training step.
    patch_size: int | None = None
    # Mirror a random half of each training batch left to right (pixel-space models): a few training subjects
    # show the network twice the anatomy.
    mirror: bool = False
    # What counts as healthy in labelled cases, for training and calibration alike: "slices", the axial slices
    # without a label voxel; "margin" (2D pixel-space DDPMs), every slice's brain farther than label_margin_mm
    # from the label, so mid-brain anatomy is learned too (the tissue nearer the label is hidden from the network:
    # pure noise in its input, out of its loss). Uses training labels only.
    healthy_tissue: Literal["slices", "margin"] = "slices"
    label_margin_mm: float = 10.0

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.batch_size < 1:
            raise ConfigError("train.num_steps and train.batch_size must be >= 1")
        if self.patch_size is not None and (self.patch_size < 8 or self.patch_size % 8):
            raise ConfigError(f"train.patch_size must be a multiple of 8 (>= 8), got {self.patch_size}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"train.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.label_margin_mm < 0:
            raise ConfigError(f"train.label_margin_mm must be >= 0, got {self.label_margin_mm}")

    @property
    def margin_mm(self) -> float | None:
        """The margin kept from a label when healthy tissue is taken by margin, else None (healthy slices)."""
        return self.label_margin_mm if self.healthy_tissue == "margin" else None


@dataclass(frozen=True, kw_only=True)
class AnomalyConfig:
    """From reconstruction to mask (see :mod:`anodiff.methods.anomaly.scoring`); the sampler has its own section."""

    t0: int = 250  # noise level the scan is noised to, out of num_train_timesteps
    extra_t0: tuple[int, ...] = ()  # further noise levels; the residuals of all levels are averaged
    # Further levels reconstructed cell by cell, each checkerboard group filled in from the other (masked noising:
    # needs a model trained with scheduler.noise_cell_px).
    masked_levels: tuple[int, ...] = ()
    num_draws: int = 1  # reconstructions averaged per noise level (different noise draws)
    # Each draw's noise eps used twice, as eps and -eps (antithetic draws): the part of the reconstruction's
    # error that follows the noise linearly cancels in their mean. Twice the passes per draw.
    antithetic: bool = False
    # The map: "residual", |x - x_hat|; "zscore", the signed residual standardised by healthy residuals of the
    # same intensity and edge strength (fitted at calibration; see anodiff.inference.standardise). Modalities
    # are combined by their "mean" or their "max" (a lesion seen in one contrast is then not diluted).
    score: Literal["residual", "zscore"] = "zscore"
    combine: Literal["mean", "max"] = "mean"
    # How the noise levels meet: "reconstruction", their reconstructions averaged, then scored once; "max" or
    # "mean", each level scored apart (its own healthy statistics, centring and scaling), then the maps combined.
    # A high level heals a large lesion that a low one copies; a low level keeps the anatomy a high one blurs.
    combine_levels: Literal["reconstruction", "max", "mean"] = "reconstruction"
    # zscore: subtract each scan's median signed z-score in the brain, per modality, so that a whole-scan offset
    # from the calibration scans (its intensity scaling, a large lesion moving the normalisation) is not scored.
    centre: bool = True
    # zscore: divide each scan's z-scores, per modality, by their robust spread over its brain (1.4826 x the median
    # absolute deviation), so that a scan reconstructed more loosely than the calibration scans (another subject,
    # scanner or noise level) is not flagged wholesale. Lesions fill a minority of the brain and barely move it.
    scale: bool = True
    median_size: int = 3  # median filter on the map, in voxels of the network grid; 0 or 1: off
    brain_erosion: int = 1  # voxels eroded from the brain mask before scoring
    fpr: float = 0.01  # healthy false-positive rate that fixes the calibrated threshold
    threshold: float | None = None  # explicit threshold; None uses the calibrated one
    min_component_mm3: float = 20.0  # connected components smaller than this are removed
    batch_size: int = 64  # slices per network call at inference

    @property
    def levels(self) -> tuple[int, ...]:
        """Every noise level the scan is reconstructed from: ``t0``, ``extra_t0``, then ``masked_levels``."""
        return (self.t0, *self.extra_t0, *self.masked_levels)

    def is_masked(self, index: int) -> bool:
        """Whether the ``index``-th of :attr:`levels` is reconstructed cell by cell."""
        return index >= 1 + len(self.extra_t0)

    @property
    def levels_apart(self) -> bool:
        """Whether each noise level is scored on its own (``combine_levels`` max or mean)."""
        return self.combine_levels != "reconstruction" and len(self.levels) > 1

    @property
    def draws_per_level(self) -> int:
        """Reconstructions averaged per level: ``num_draws``, twice each with ``antithetic``."""
        return self.num_draws * (2 if self.antithetic else 1)

    def __post_init__(self) -> None:
        if min(self.levels) < 1:
            raise ConfigError(f"anomaly.t0 and anomaly.extra_t0 must be >= 1, got {self.t0}, {self.extra_t0}")
        if not 0 < self.fpr < 1:
            raise ConfigError(f"anomaly.fpr must be in (0, 1), got {self.fpr}")


# Named regions of the BraTS label schemes (2015: 1 necrosis, 2 oedema, 3 non-enhancing,
# 4 enhancing; 2021: 1, 2, 4): label values each region holds. Any other region is
# given as its values joined by '+', e.g. "1+4".
NAMED_REGIONS = {"whole": (1, 2, 3, 4), "core": (1, 3, 4), "enhancing": (4,)}


def region_labels(region: str) -> tuple[int, ...]:
    """The label values a region holds: a named region, or values joined by '+' ("1+4")."""
    if region in NAMED_REGIONS:
        return NAMED_REGIONS[region]
    try:
        values = tuple(int(v) for v in region.split("+"))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ConfigError(f"segmentation.regions: {region!r} is neither one of {sorted(NAMED_REGIONS)} "
                          "nor label values joined by '+' (e.g. '1+4')")
    return values


@dataclass(frozen=True, kw_only=True)
class SegmentationConfig:
    """The supervised mode (``model.kind: segdiff``, see :mod:`anodiff.methods.segdiff.method`); masks are drawn
    with the ``sampler`` section's settings.

    Each region is one channel of the diffused mask; regions may overlap (BraTS's
    whole tumour holds the core, which holds the enhancing part).
    """

    regions: tuple[str, ...] = ("whole",)  # whole, core, enhancing, or label values joined by '+'
    lesion_fraction: float = 0.5  # share of each training batch drawn from slices that hold a label voxel
    samples: int = 5  # masks drawn per scan and fused
    fusion: Literal["mean", "majority", "staple"] = "mean"
    uncertainty: Literal["std", "entropy"] = "std"
    threshold: float = 0.5  # on the fused probability
    min_component_mm3: float = 0.0  # connected components smaller than this are removed from the mask
    reference: bool = True  # also train a plain MONAI UNet on the same batches, for comparison
    reference_channels: tuple[int, ...] | None = None  # its widths; None: the denoiser's, doubled (a like size)
    batch_size: int = 64  # slices per network call at inference (divided among the samples)

    def __post_init__(self) -> None:
        if not self.regions or len(set(self.regions)) != len(self.regions):
            raise ConfigError(f"segmentation.regions must be distinct and not empty, got {list(self.regions)}")
        for region in self.regions:
            region_labels(region)
        if not 0 <= self.lesion_fraction <= 1:
            raise ConfigError(f"segmentation.lesion_fraction must be in [0, 1], got {self.lesion_fraction}")
        if self.samples < 1 or self.batch_size < 1:
            raise ConfigError("segmentation.samples and batch_size must be >= 1")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"segmentation.threshold must be in (0, 1), got {self.threshold}")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A whole recipe: one field per section. Checks that depend on ``model.kind`` belong to the
    method (``validate`` in :mod:`anodiff.methods`), which every command applies after loading."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
