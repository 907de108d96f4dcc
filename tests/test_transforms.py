"""The preprocessing chain and the slice data set."""

from __future__ import annotations

import pytest
import torch

import anodiff.io
from anodiff.config import DataConfig
from anodiff.data.cases import Case, discover
from anodiff.data.datasets import SliceDataset, select_slices
from anodiff.data.transforms import case_item, preprocessing, to_input_grid
from tests.conftest import brain_phantom, save_nifti


@pytest.fixture
def lesion_case(tmp_path) -> Case:
    image, label = brain_phantom(shape=(30, 36, 20), lesion=True)
    return Case(
        id="p",
        images={"flair": save_nifti(tmp_path / "p_flair.nii.gz", image),
                "t1": save_nifti(tmp_path / "p_t1.nii.gz", image * 0.5)},
        label=save_nifti(tmp_path / "p_seg.nii.gz", label),
    )


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_chain_shapes_and_ranges(lesion_case, spatial_dims):
    cfg = DataConfig(image_size=16)
    out = preprocessing(cfg, with_label=True, spatial_dims=spatial_dims)(case_item(lesion_case, ("flair", "t1")))
    image, brain, label = out["image"], out["brain"], out["label"]
    assert image.shape[:3] == (2, 16, 16) and brain.shape[1:] == image.shape[1:] == label.shape[1:]
    if spatial_dims == 3:
        assert image.shape[3] == 16
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    assert float(image.max()) == pytest.approx(1.0)
    assert torch.all(image[:, brain[0] == 0] == 0)  # nothing outside the brain
    assert set(torch.unique(label).tolist()) == {0.0, 1.0}
    assert set(torch.unique(brain).tolist()) == {0.0, 1.0}
    # The lesion is the brightest structure and survives the chain.
    assert image[0][label[0] > 0].mean() > image[0][(label[0] == 0) & (brain[0] > 0)].mean() + 0.2


def test_chain_inverts_to_the_input_grid(lesion_case):
    chain = preprocessing(DataConfig(image_size=16, spacing_mm=(1.5, 1.5, 1.5)), with_label=False)
    out = chain(case_item(lesion_case, ("flair",)))
    source = anodiff.io.read_volume(lesion_case.images["flair"])
    score = out["image"][:1] * out["brain"]  # stands in for a (1, H, W, D) anomaly map
    restored = to_input_grid(chain, out["image"], score)[0]
    assert tuple(restored.shape) == source.shape
    # Back on the input grid, the map lies where the input's brain is.
    inside = source.data > 0
    assert restored[torch.from_numpy(inside)].mean() > 10 * restored[torch.from_numpy(~inside)].mean()


def test_slice_dataset_keeps_only_healthy_slices_and_caches(lesion_case, monkeypatch):
    reads = []
    original = anodiff.io.read_volume

    def counting(path, **kwargs):
        reads.append(path)
        return original(path, **kwargs)

    monkeypatch.setattr("anodiff.data.transforms.read_volume", counting)
    monkeypatch.setattr("anodiff.io.read_volume", counting)
    cfg = DataConfig(image_size=16, min_brain_fraction=0.0)
    healthy = SliceDataset([lesion_case], ("flair", "t1"), cfg, healthy_only=True)
    every = SliceDataset([lesion_case], ("flair", "t1"), cfg, healthy_only=False)
    assert 0 < len(healthy) < len(every)
    assert all(healthy[i]["label"].sum() == 0 for i in range(len(healthy)))
    assert any(every[i]["label"].sum() > 0 for i in range(len(every)))
    item = healthy[0]
    assert item["image"].shape == (2, 16, 16) and item["brain"].shape == (1, 16, 16)
    reads_after_build = len(reads)
    for _ in range(2):  # two epochs read no file
        for i in range(len(healthy)):
            healthy[i]
    assert len(reads) == reads_after_build


def test_slice_range_and_brain_fraction():
    brain = torch.zeros(1, 8, 8, 10)
    brain[:, 2:6, 2:6, 2:8] = 1  # brain on z = 2..7, 25 % of each slice
    volume = {"brain": brain}
    assert select_slices(volume, DataConfig(image_size=8, min_brain_fraction=0.0), healthy_only=True) == list(
        range(2, 8))
    assert select_slices(volume, DataConfig(image_size=8, slice_range=(0.5, 1.0)), healthy_only=True) == [5, 6, 7]
    assert select_slices(volume, DataConfig(image_size=8, min_brain_fraction=0.3), healthy_only=True) == []


def test_chain_on_the_synthetic_cohort(tiny_cohort):
    found = discover(tiny_cohort)
    data = SliceDataset(found.cases, ("flair", "t1"), DataConfig(image_size=32), healthy_only=True)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    assert images.shape[1:] == (2, 32, 32)
    inside = images[torch.stack([data[i]["brain"] for i in range(len(data))]).expand_as(images) > 0]
    assert 0.3 < float(inside.median()) < 0.8  # normalised brains, not saturated
    assert float(images.max()) == pytest.approx(1.0)


def test_slices_on_disk_read_back_as_those_in_memory(tiny_cohort, tmp_path):
    """data.slice_store: disk keeps no volume in memory and serves the same slices (to float16's precision),
    labels and lesion slices; its folder goes with the data set."""
    cases = discover(tiny_cohort).cases
    memory = SliceDataset(cases, ("flair", "t1"), DataConfig(image_size=32), healthy_only=False)
    disk = SliceDataset(cases, ("flair", "t1"), DataConfig(image_size=32, slice_store="disk", cache_dir=tmp_path),
                        healthy_only=False)
    assert len(disk) == len(memory) and disk.lesion_indices() == memory.lesion_indices() != []
    assert not any(isinstance(v, dict) for v in disk.volumes)
    for index in [*range(0, len(memory), 5), *memory.lesion_indices()[:3]]:
        a, b = memory[index], disk[index]
        assert torch.allclose(a["image"], b["image"], atol=5e-4) and a["image"].dtype == b["image"].dtype
        assert torch.equal(a["brain"], b["brain"]) and torch.equal(a["label"], b["label"])
    folder = next(tmp_path.glob("anodiff-slices-*"))
    assert len(list(folder.glob("*.slices"))) == len(cases)
    del disk
    import gc

    gc.collect()
    assert not folder.exists()
