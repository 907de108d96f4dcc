"""Typed config: YAML + dotted overrides, unknown keys named with the nearest valid one."""

from __future__ import annotations

from pathlib import Path

import pytest

from anodiff.config import ConfigError, load_config, save_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  image_size: 64\n  modalities: [flair, t1]\n  cache_dir: cache\n")
    cfg = load_config(path, ["data.percentiles=[1, 99]", "data.healthy_only=false"])
    assert cfg.data.image_size == 64 and cfg.data.modalities == ("flair", "t1")
    assert cfg.data.percentiles == (1.0, 99.0) and cfg.data.healthy_only is False
    assert cfg.data.cache_dir == tmp_path / "cache"  # relative to the YAML file
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize("override,match", [
    ("data.image_sise=64", "did you mean 'data.image_size'"),
    ("data.image_size=60", "multiple of 8"),
    ("data.percentiles=[99, 1]", "percentiles"),
    ("data.image_size=big", "must be int"),
    ("data", "expected key=value"),
])
def test_bad_values_are_named(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_unsafe_yaml_is_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "ran"
    path.write_text(f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not Path(marker).exists()
