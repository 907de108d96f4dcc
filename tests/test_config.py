"""Typed config: YAML + dotted overrides, unknown keys named with the nearest valid one."""

from __future__ import annotations

from pathlib import Path

import pytest

from anodiff.config import ConfigError, config_to_yaml, load_config
from anodiff.methods import load_recipe


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  image_size: 64\n  modalities: [flair, t1]\n  cache_dir: cache\n", encoding="utf-8")
    cfg = load_config(path, ["data.percentiles=[1, 99]", "data.crop_margin=5"])
    assert cfg.data.image_size == 64 and cfg.data.modalities == ("flair", "t1")
    assert cfg.data.percentiles == (1.0, 99.0) and cfg.data.crop_margin == 5
    assert cfg.data.cache_dir == tmp_path / "cache"  # relative to the YAML file
    (tmp_path / "resolved.yaml").write_text(config_to_yaml(cfg), encoding="utf-8")
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
    path.write_text(f"data: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    assert not Path(marker).exists()


@pytest.mark.parametrize("overrides,match", [
    (["model.kind=ldm", "data.image_size=40"], "multiple of 16"),
    (["model.kind=ldm", "data.image_size=16", "autoencoder.channels=[16,16]", "model.channels=[16,16]",
      "model.attention_levels=[false,false]"],
     "too small for a 3-layer discriminator"),
    (["model.kind=ldm", "autoencoder.batch_size=1"], "batch_size must be >= 2"),
    (["model.kind=ldm", "scheduler.noise=simplex"], "simplex is for 2D pixel-space"),
    (["autoencoder.channels=[32,64]", "autoencoder.attention_levels=[false]"], "one item per"),
])
def test_latent_diffusion_settings_are_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(None, overrides)


@pytest.mark.parametrize("overrides,match", [
    (["scheduler.train_t_max=0"], "train_t_max must be in"),
    (["scheduler.train_t_max=200", "anomaly.t0=100", "anomaly.extra_t0=[50,200]"],
     "must be below scheduler.train_t_max"),
    (["model.kind=segdiff", "scheduler.train_t_max=400"], "segdiff draws its masks from pure noise"),
])
def test_a_denoiser_is_not_asked_for_noise_levels_it_never_trained_on(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(None, overrides)
    load_recipe(None, ["scheduler.train_t_max=201", "anomaly.t0=100", "anomaly.extra_t0=[50,200]"])


def test_every_shipped_recipe_loads():
    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        load_recipe(path)


def test_float_written_without_a_dot_is_a_float():
    assert load_config(None, ["train.lr=1e-3"]).train.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("override,match", [
    ("anomaly.num_inference_steps=5", "'anomaly.num_inference_steps' moved to 'sampler.num_inference_steps'"),
    ("segmentation.eta=1", "'segmentation.eta' moved to 'sampler.eta'"),
    ("anomaly.sampler=ddpm", "moved to 'sampler.kind'"),
    ("data.healthy_only=false", "no longer a setting"),
    ("model.kind=gan", "not a method; choose one of"),
])
def test_moved_and_unknown_keys_name_the_fix(override, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(None, [override])


def test_a_model_folder_saved_before_the_sampler_section_still_loads(tiny_model, tmp_path):
    """config.yaml of an older anodiff: the sampler settings sat in the method's own section."""
    import shutil

    import yaml

    from anodiff.methods import load_model

    old = tmp_path / "old"
    shutil.copytree(tiny_model, old)
    raw = yaml.safe_load((old / "config.yaml").read_text(encoding="utf-8"))
    sampler = raw.pop("sampler")
    raw["anomaly"] |= {"num_inference_steps": sampler["num_inference_steps"], "eta": 0.5, "sampler": "ddim"}
    raw["segmentation"] |= {"num_inference_steps": 99, "eta": 0.0}  # another method's: ignored
    raw["data"]["healthy_only"] = True
    (old / "config.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    as_format_one(old)
    config = load_model(old).config
    assert config.sampler.num_inference_steps == sampler["num_inference_steps"] and config.sampler.eta == 0.5


def test_a_model_folder_saved_before_the_z_scored_map_keeps_its_map(tiny_model, tmp_path):
    """Keys added since a model was saved take the values it was calibrated with, not today's defaults."""
    import shutil

    import yaml

    from anodiff.methods import load_model

    old = tmp_path / "old"
    shutil.copytree(tiny_model, old)
    raw = yaml.safe_load((old / "config.yaml").read_text(encoding="utf-8"))
    for section, key in (("anomaly", "score"), ("anomaly", "combine"), ("anomaly", "centre"), ("anomaly", "scale"),
                         ("data", "normalisation")):
        del raw[section][key]
    (old / "config.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    as_format_one(old)
    config = load_model(old).config
    assert (config.anomaly.score, config.anomaly.combine, config.anomaly.centre, config.anomaly.scale,
            config.data.normalisation) == ("residual", "mean", False, False, "percentiles")
    assert load_model(tiny_model).config.anomaly.score == "zscore"  # today's default, as trained


def as_format_one(folder):
    """Make a model folder look written before meta.json recorded its format."""
    import json

    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    del meta["format_version"]
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def test_a_model_folder_of_a_newer_format_is_refused(tiny_model, tmp_path):
    import json
    import shutil

    from anodiff.errors import CheckpointError
    from anodiff.formats import FORMAT_VERSION
    from anodiff.methods import load_model

    newer = tmp_path / "newer"
    shutil.copytree(tiny_model, newer)
    meta = json.loads((newer / "meta.json").read_text(encoding="utf-8"))
    (newer / "meta.json").write_text(json.dumps({**meta, "format_version": FORMAT_VERSION + 1}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="written by a newer anodiff"):
        load_model(newer)
    assert load_model(tiny_model).meta["format_version"] == FORMAT_VERSION
