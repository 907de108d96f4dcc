"""The model card: what it says of the data's licence, and the same card for a folder trained before cards."""

from __future__ import annotations

import json
import shutil

from anodiff.methods import model_card
from anodiff.methods.card import data_licence


def test_the_licence_is_read_from_bids_a_synthetic_cohort_or_a_licence_file(tmp_path):
    bids, synthetic, plain, unknown = (tmp_path / name for name in ("bids", "synthetic", "plain", "unknown"))
    for folder in (bids, synthetic, plain, unknown):
        folder.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "License": "CC0"}), encoding="utf-8")
    (synthetic / "cohort.json").write_text(json.dumps({"licence": "synthetic, from a template"}), encoding="utf-8")
    (plain / "LICENSE").write_text("\n  CC BY-NC-SA 4.0\nmore text\n", encoding="utf-8")
    (unknown / "dataset_description.json").write_text("not json", encoding="utf-8")
    assert data_licence(bids).startswith("CC0 (from `dataset_description.json`)")
    assert data_licence(synthetic).startswith("synthetic, from a template")
    assert data_licence(plain) == "CC BY-NC-SA 4.0 (from `LICENSE`)"
    assert data_licence(unknown).startswith("not stated")


def test_a_folder_without_a_card_gets_the_card_its_config_and_meta_give(tiny_model, tmp_path):
    older = tmp_path / "older"
    older.mkdir()
    for name in ("config.yaml", "meta.json", "model.safetensors"):
        shutil.copy(tiny_model / name, older / name)
    assert not (older / "README.md").exists()
    assert model_card(older) == (tiny_model / "README.md").read_text(encoding="utf-8")
