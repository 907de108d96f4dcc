"""Typed configuration: frozen dataclasses, read from YAML, changed by dotted overrides.

One dataclass per section, nested in :class:`RunConfig`. The loader uses
``yaml.safe_load`` (a config never runs code), rejects unknown keys naming the
file, the dotted key and the nearest valid key, converts YAML lists to tuples
and strings to paths, and resolves relative paths against the YAML file.
Overrides (``train.lr=1e-4``) are parsed as YAML scalars and go through the same
checks. ``__post_init__`` checks ranges, so an invalid config cannot exist.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from anodiff.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """How cases become network inputs (see :mod:`anodiff.data.transforms`)."""

    modalities: tuple[str, ...] | None = None  # None: those every training case has
    spacing_mm: tuple[float, float, float] | None = None  # resample first; None keeps the scan's grid
    image_size: int = 128  # in-plane size (and depth in 3D) after crop to the brain
    percentiles: tuple[float, float] = (0.5, 99.5)  # intensity range inside the brain mapped to [0, 1]
    crop_margin: int = 2  # voxels kept around the brain's bounding box
    slice_range: tuple[float, float] = (0.0, 1.0)  # axial slices kept, as fractions of the brain's extent
    min_brain_fraction: float = 0.05  # slices with less brain than this share of the slice are dropped
    healthy_only: bool = True  # keep only slices without a label voxel (unsupervised training)
    cache_dir: Path | None = None  # persistent cache of preprocessed volumes; None caches in memory

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

    ``kind``: ``ddpm`` diffuses pixels; ``ldm`` diffuses the latents of the
    autoencoder described in the ``autoencoder`` section (trained first);
    ``segdiff`` diffuses segmentation masks conditioned on the image (supervised,
    see the ``segmentation`` section).
    ``spatial_dims``: 2 works on axial slices, 3 on whole (resized) volumes.
    """

    kind: Literal["ddpm", "ldm", "segdiff"] = "ddpm"
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

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ConfigError(f"scheduler.num_train_timesteps must be >= 2, got {self.num_train_timesteps}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The training loop (shared by every mode)."""

    num_steps: int = 20000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on the CPU
    checkpoint_every: int = 500
    sample_every: int = 1000  # PNG grid of reconstructions; 0 turns it off
    log_every: int = 50
    val_fraction: float = 0.2  # healthy cases held out for threshold calibration
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_steps < 1 or self.batch_size < 1:
            raise ConfigError("train.num_steps and train.batch_size must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"train.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True, kw_only=True)
class AnomalyConfig:
    """From reconstruction to mask (see :mod:`anodiff.detection`)."""

    t0: int = 250  # noise level the scan is noised to, out of num_train_timesteps
    extra_t0: tuple[int, ...] = ()  # further noise levels; the residuals of all levels are averaged
    sampler: Literal["ddim", "ddpm"] = "ddim"  # ddpm: the full reverse chain from t0, for reference
    num_inference_steps: int = 10  # DDIM steps from t0 back to 0
    eta: float = 0.0  # DDIM noise: 0 deterministic; 1 fresh noise at each step, as in the DDPM reverse chain
    num_draws: int = 1  # reconstructions averaged per noise level (different noise draws)
    median_size: int = 3  # median filter on the map, in voxels of the network grid; 0 or 1: off
    brain_erosion: int = 1  # voxels eroded from the brain mask before scoring
    fpr: float = 0.01  # healthy false-positive rate that fixes the calibrated threshold
    threshold: float | None = None  # explicit threshold; None uses the calibrated one
    min_component_mm3: float = 20.0  # connected components smaller than this are removed
    batch_size: int = 64  # slices per network call at inference

    def __post_init__(self) -> None:
        if min((self.t0, *self.extra_t0)) < 1:
            raise ConfigError(f"anomaly.t0 and anomaly.extra_t0 must be >= 1, got {self.t0}, {self.extra_t0}")
        if self.num_inference_steps < 1:
            raise ConfigError(f"anomaly.num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"anomaly.eta must be in [0, 1], got {self.eta}")
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
    """The supervised mode (``model.kind: segdiff``, see :mod:`anodiff.segmentation`).

    Each region is one channel of the diffused mask; regions may overlap (BraTS's
    whole tumour holds the core, which holds the enhancing part).
    """

    regions: tuple[str, ...] = ("whole",)  # whole, core, enhancing, or label values joined by '+'
    lesion_fraction: float = 0.5  # share of each training batch drawn from slices that hold a label voxel
    samples: int = 5  # masks drawn per scan and fused
    num_inference_steps: int = 10  # DDIM steps from pure noise to a mask
    eta: float = 0.0  # DDIM noise (0: each sample is fixed by its initial noise)
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
        if self.samples < 1 or self.num_inference_steps < 1 or self.batch_size < 1:
            raise ConfigError("segmentation.samples, num_inference_steps and batch_size must be >= 1")
        if not 0 <= self.eta <= 1 or not 0 < self.threshold < 1:
            raise ConfigError("segmentation.eta must be in [0, 1] and segmentation.threshold in (0, 1)")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A whole recipe: one field per section."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)

    def __post_init__(self) -> None:
        detects = self.model.kind != "segdiff"  # the anomaly section is unused by the supervised mode
        if detects and max((self.anomaly.t0, *self.anomaly.extra_t0)) >= self.scheduler.num_train_timesteps:
            raise ConfigError(
                f"anomaly.t0 ({self.anomaly.t0}) must be below scheduler.num_train_timesteps "
                f"({self.scheduler.num_train_timesteps})"
            )
        factor = 2 ** (len(self.model.channels) - 1)
        if self.model.kind == "ldm":
            factor *= self.autoencoder.downsampling
        if self.data.image_size % factor:
            raise ConfigError(f"data.image_size ({self.data.image_size}) must be a multiple of {factor} "
                              f"for these {self.model.kind} channels (each level halves the grid)")
        ae = self.autoencoder
        if self.model.kind == "ldm" and ae.adversarial_weight > 0:
            if self.data.image_size < 2 ** (ae.discriminator_layers + 2):
                raise ConfigError(f"data.image_size ({self.data.image_size}) is too small for a "
                                  f"{ae.discriminator_layers}-layer discriminator; lower "
                                  "autoencoder.discriminator_layers")
            if ae.batch_size < 2:
                raise ConfigError("autoencoder.batch_size must be >= 2 with the adversary on (batch norm)")
        if self.model.kind == "segdiff" and self.model.spatial_dims != 2:
            raise ConfigError("model.kind: segdiff works on 2D slices; set model.spatial_dims: 2")
        if self.scheduler.noise == "simplex" and (self.model.spatial_dims == 3 or self.model.kind == "ldm"):
            raise ConfigError("scheduler.noise: simplex is for 2D pixel-space DDPMs; use gaussian or coarse")


# ---------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        source = str(path)
        base_dir = path.parent
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read config as text ({err})") from err
        except yaml.YAMLError as err:  # also a !!python tag: safe_load never constructs objects
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections")
    for item in overrides:
        _set_dotted(raw, item)
    return build(RunConfig, raw, source=source, base_dir=base_dir)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict (tuples as lists, paths as strings)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(config)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def with_overrides(config: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """Apply ``key=value`` overrides to an existing config (checked like a file)."""
    raw = config_to_dict(config)
    for item in overrides:
        _set_dotted(raw, item)
    return build(RunConfig, raw, source="overrides", base_dir=Path.cwd())


def _set_dotted(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}': expected key=value, e.g. train.lr=1e-4")
    node = raw
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
    try:
        node[leaf] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{item}': not a valid value ({' '.join(str(err).split())})") from err


def build(cls: type, raw: Any, *, source: str, base_dir: Path, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a raw mapping, checking keys and types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(hints[key], value, source=source, base_dir=base_dir, key=f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{source}: {err}") from err


def _coerce(hint: Any, value: Any, *, source: str, base_dir: Path, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, source=source, base_dir=base_dir, key=key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source=source, base_dir=base_dir, prefix=f"{key}.")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, source=source, base_dir=base_dir, key=key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{source}: '{key}' must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, source=source, base_dir=base_dir, key=key) for a, v in zip(args, value))
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a path, got {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint is Any:
        return value
    raise ConfigError(f"{source}: '{key}' must be {getattr(hint, '__name__', hint)}, got {value!r}")
