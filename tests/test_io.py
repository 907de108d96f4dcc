"""anodiff.io: geometry kept exactly, every kind of bad input one clear DataError."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from anodiff.errors import DataError
from anodiff.io import read_images, read_volume, write_volume
from tests.conftest import OBLIQUE_AFFINE, brain_phantom, save_nifti

FLIPPED_AFFINE = np.array([[-2.0, 0, 0, 50], [0, -1.5, 0, 60], [0, 0, 3.0, -20], [0, 0, 0, 1]])


@pytest.mark.parametrize("affine", [OBLIQUE_AFFINE, FLIPPED_AFFINE], ids=["oblique", "flipped"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_write_keeps_shape_and_affine(tmp_path, affine, suffix):
    image, _ = brain_phantom()
    source = read_volume(save_nifti(tmp_path / "in.nii.gz", image, affine))
    mask = (source.data > 110).astype(np.uint8)
    out = write_volume(mask, tmp_path / f"mask{suffix}", like=source, dtype=np.uint8)
    back = read_volume(out)
    assert back.shape == source.shape
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)
    np.testing.assert_array_equal(back.data, mask)


def test_float_map_is_not_truncated_by_an_int16_input(tmp_path):
    image, _ = brain_phantom()
    source = read_volume(save_nifti(tmp_path / "in.nii.gz", image, dtype=np.int16))
    score = np.linspace(0, 1, image.size, dtype=np.float32).reshape(image.shape)
    out = write_volume(score, tmp_path / "map.nii.gz", like=source)
    img = nib.load(out)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(img.dataobj), score)


def test_write_refuses_to_overwrite_and_leaves_no_temporary(tmp_path):
    image, _ = brain_phantom()
    source = read_volume(save_nifti(tmp_path / "in.nii.gz", image))
    out = write_volume(image > 0, tmp_path / "m.nii.gz", like=source, dtype=np.uint8)
    with pytest.raises(DataError, match="already exists"):
        write_volume(image > 0, out, like=source, dtype=np.uint8)
    write_volume(image > 0, out, like=source, dtype=np.uint8, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "m.nii.gz"]
    with pytest.raises(DataError, match="does not match"):
        write_volume(np.zeros((3, 3, 3)), tmp_path / "bad.nii.gz", like=source)


def test_atomic_writes_keep_normal_file_permissions(tmp_path, tiny_model):
    """A temporary file made by mkstemp is 0600; renamed into place it would hide outputs from the group."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x", encoding="utf-8")
    normal = plain.stat().st_mode & 0o777
    image, _ = brain_phantom()
    source = read_volume(save_nifti(tmp_path / "in.nii.gz", image))
    written = [write_volume(image > 0, tmp_path / f"m{suffix}", like=source, dtype=np.uint8)
               for suffix in (".nii.gz", ".nii", ".mha")]
    written += [tiny_model / name for name in ("model.safetensors", "meta.json", "config.yaml",
                                               "checkpoint.safetensors")]
    assert {path.name: path.stat().st_mode & 0o777 for path in written} == {path.name: normal for path in written}


def test_sitk_geometry_is_converted_to_ras(tmp_path):
    image, _ = brain_phantom()
    itk = sitk.GetImageFromArray(np.transpose(image, (2, 1, 0)))
    itk.SetSpacing((1.5, 2.0, 2.5))
    itk.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(itk, str(tmp_path / "x.mha"))
    vol = read_volume(tmp_path / "x.mha")
    np.testing.assert_array_equal(vol.data, image)
    np.testing.assert_allclose(vol.affine[:3, 3], [-10.0, -20.0, 30.0])  # LPS origin -> RAS
    assert vol.orientation == "LPS"
    assert vol.spacing_mm == pytest.approx((1.5, 2.0, 2.5))


def test_dicom_series_folder_is_read(tmp_path):
    image, _ = brain_phantom()
    folder = tmp_path / "series"
    folder.mkdir()
    stored = image.astype(np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(stored.shape[2]):
        sl = sitk.GetImageFromArray(stored[:, :, z].T[None])
        sl.SetSpacing((1.0, 1.0, 2.0))
        sl.SetOrigin((0.0, 0.0, 2.0 * z))
        for tag, value in [("0020|000e", "1.2.3.4"), ("0020|0013", str(z + 1)), ("0008|0060", "MR"),
                           ("0020|0032", f"0\\0\\{2.0 * z}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0008|0018", f"1.2.3.4.{z + 1}")]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(sl)
    vol = read_volume(folder)
    assert vol.shape == stored.shape
    np.testing.assert_array_equal(vol.data, stored)


def _expect(path, match):
    with pytest.raises(DataError, match=match) as info:
        read_volume(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_missing_path(tmp_path):
    _expect(tmp_path / "nope.nii.gz", "no such file")


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_gzip(tmp_path, keep):
    image, _ = brain_phantom()
    path = save_nifti(tmp_path / "t.nii.gz", image)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    _expect(path, "truncated or corrupt")


def test_flipped_bytes_inside_gzip_stream(tmp_path):
    image, _ = brain_phantom()
    path = save_nifti(tmp_path / "c.nii.gz", image)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    raw[len(raw) // 2 + 7] ^= 0x5A
    path.write_bytes(bytes(raw))
    _expect(path, "truncated or corrupt|not a")


def test_truncated_plain_nifti(tmp_path):
    image, _ = brain_phantom()
    path = save_nifti(tmp_path / "t.nii", image)
    path.write_bytes(path.read_bytes()[:-500])
    _expect(path, "truncated or corrupt")


def test_gzip_that_decompresses_to_more_than_promised(tmp_path):
    image, _ = brain_phantom()
    path = save_nifti(tmp_path / "b.nii.gz", image)
    raw = gzip.decompress(path.read_bytes()) + bytes(4 << 20)
    path.write_bytes(gzip.compress(raw))
    _expect(path, "more data than its header promises")


@pytest.mark.parametrize("name,content", [("text.nii.gz", None), ("notes.txt", b"hello"),
                                          ("junk.nii", b"x" * 400)])
def test_non_image(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"just some text\n" * 50) if content is None else content)
    _expect(path, "not a")


def test_two_dimensional_image(tmp_path):
    _expect(save_nifti(tmp_path / "2d.nii.gz", np.random.rand(20, 20).astype(np.float32)), "2D")
    _expect(save_nifti(tmp_path / "slice.nii.gz", np.random.rand(20, 20, 1).astype(np.float32)), "2D")


def test_four_dimensional_image(tmp_path):
    _expect(save_nifti(tmp_path / "4d.nii.gz", np.random.rand(8, 8, 8, 3).astype(np.float32)), "4D")
    vol = read_volume(save_nifti(tmp_path / "4d1.nii.gz", np.random.rand(8, 8, 8, 1).astype(np.float32)))
    assert vol.shape == (8, 8, 8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels(tmp_path, bad):
    image, _ = brain_phantom()
    image[3, 4, 5] = bad
    _expect(save_nifti(tmp_path / "nan.nii.gz", image), "NaN or infinite")


def test_constant_image(tmp_path):
    _expect(save_nifti(tmp_path / "flat.nii.gz", np.full((8, 8, 8), 7, np.float32)), "every voxel equals 7")


def test_modalities_on_different_grids(tmp_path):
    image, _ = brain_phantom()
    a = save_nifti(tmp_path / "a_t1.nii.gz", image)
    b = save_nifti(tmp_path / "a_t2.nii.gz", image, FLIPPED_AFFINE)
    c = save_nifti(tmp_path / "a_flair.nii.gz", image[:-1])
    with pytest.raises(DataError, match="affine differs"):
        read_images({"t1": a, "t2": b})
    with pytest.raises(DataError, match="shape"):
        read_images({"t1": a, "flair": c})
