"""Typed configuration: frozen dataclasses (:mod:`.sections`), read from YAML and changed by dotted
overrides (:mod:`.loading`)."""

from anodiff.config.loading import (
    build,
    config_to_dict,
    config_to_yaml,
    load_config,
    with_overrides,
)
from anodiff.config.sections import (
    NAMED_REGIONS,
    AnomalyConfig,
    AutoencoderConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    SamplerConfig,
    SchedulerConfig,
    SegmentationConfig,
    TrainConfig,
    region_labels,
)
from anodiff.errors import ConfigError

__all__ = [
    "NAMED_REGIONS", "AnomalyConfig", "AutoencoderConfig", "ConfigError", "DataConfig",
    "ModelConfig", "RunConfig", "SamplerConfig", "SchedulerConfig", "SegmentationConfig", "TrainConfig", "build",
    "config_to_dict", "config_to_yaml", "load_config", "region_labels", "with_overrides",
]
