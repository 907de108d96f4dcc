"""Property-based tests over odd and hostile NIfTI files.

Every variant either reads correctly (values with scaling applied, the geometry
nibabel gives, a mask written back on its exact grid) or fails with one
:class:`DataError` line naming the file; never another exception, a hang or an
out-of-memory crash. ``HYPOTHESIS_PROFILE=thorough`` (``make test-all``) tries more.
"""

from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from anodiff.cli.main import app
from anodiff.errors import DataError
from anodiff.io import read_volume, write_volume

settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", max_examples=600, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DTYPES = ("uint8", "int16", "int32", "float32", "float64")


@dataclass(frozen=True)
class Variant:
    data: np.ndarray  # as stored on disk (before scaling)
    affine: np.ndarray
    codes: str  # which of qform/sform are set: both, qform, sform, none
    slope_inter: tuple[float, float] | None
    gz: bool

    def image(self) -> nib.Nifti1Image:
        img = nib.Nifti1Image(self.data, None)
        img.set_data_dtype(self.data.dtype)
        img.set_qform(self.affine, code=1 if self.codes in ("both", "qform") else 0)
        img.set_sform(self.affine, code=1 if self.codes in ("both", "sform") else 0)
        if self.slope_inter is not None:
            img.header.set_slope_inter(*self.slope_inter)
        return img

    def to_bytes(self) -> bytes:
        raw = self.image().to_bytes()
        return gzip.compress(raw, mtime=0) if self.gz else raw


@st.composite
def affines(draw) -> np.ndarray:
    """Rotated, flipped, permuted, anisotropic voxel-to-world matrices."""
    angles = draw(st.tuples(*[st.floats(-np.pi, np.pi)] * 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rotation = rotation @ r
    permutation = np.eye(3)[list(draw(st.permutations(range(3))))]
    flips = np.diag(draw(st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3)))
    spacing = np.diag(draw(st.tuples(*[st.floats(0.3, 6.0)] * 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation @ permutation @ flips @ spacing
    affine[:3, 3] = draw(st.tuples(*[st.floats(-200, 200)] * 3))
    return affine


@st.composite
def variants(draw) -> Variant:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(st.one_of(
        st.tuples(*[st.integers(2, 12)] * 3),  # 3D
        st.tuples(st.integers(2, 12), st.integers(2, 12), st.just(1)),  # a single slice
        st.tuples(*[st.integers(2, 8)] * 3, st.integers(1, 3)),  # 4D, singleton or not
        st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),  # tiny
    ))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    hi = 200 if dtype.kind in "ui" else 1000.0
    data = (rng.random(shape) * hi).astype(dtype)
    if dtype.kind == "f" and draw(st.booleans()):
        data.flat[draw(st.integers(0, data.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if draw(st.integers(0, 9)) == 0:
        data[...] = data.flat[0]  # constant
    slope_inter = draw(st.one_of(st.none(), st.tuples(st.floats(0.01, 5.0), st.floats(-100, 100))))
    return Variant(data, draw(affines()), draw(st.sampled_from(["both", "qform", "sform", "none"])), slope_inter,
                   draw(st.booleans()))


def expected(variant: Variant, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """What a correct reader returns: nibabel's scaled values and affine, squeezed to 3D."""
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float64)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data, img.affine


def check_read(path: Path, intact: Variant | None) -> None:
    """Read ``path``: the right volume when it reads, else one DataError line naming it."""
    try:
        volume = read_volume(path)
    except DataError as err:
        message = str(err)
        assert "\n" not in message and path.name in message
        return
    assert volume.data.ndim == 3 and volume.data.dtype == np.float32 and np.isfinite(volume.data).all()
    if intact is not None:
        data, affine = expected(intact, path)
        np.testing.assert_allclose(volume.data, data, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(volume.affine, affine, atol=1e-4)
    mask = (volume.data > np.median(volume.data)).astype(np.uint8)
    out = write_volume(mask, path.with_name("mask.nii.gz"), like=volume, dtype=np.uint8, overwrite=True)
    written = nib.load(out)
    assert written.shape == volume.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(written.dataobj), mask)


@given(variant=variants())
def test_any_nifti_variant_reads_correctly_or_fails_clearly(variant, tmp_path):
    path = tmp_path / ("scan.nii.gz" if variant.gz else "scan.nii")
    path.write_bytes(variant.to_bytes())
    check_read(path, variant)


@given(variant=variants(), cut=st.floats(0.0, 0.999))
def test_truncated_file_fails_clearly(variant, cut, tmp_path):
    raw = variant.to_bytes()
    path = tmp_path / ("scan.nii.gz" if variant.gz else "scan.nii")
    path.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(DataError) as err:
        read_volume(path)
    assert "\n" not in str(err.value) and path.name in str(err.value)


@given(suffix=st.sampled_from([".mha", ".nrrd"]), compress=st.booleans(), cut=st.floats(0.0, 1.0, exclude_max=True),
       nan=st.booleans())
def test_truncated_or_non_finite_itk_file_fails_clearly(suffix, compress, cut, nan, tmp_path):
    """SimpleITK formats: a short file or a NaN voxel is one clear error, not zeros read in silence."""
    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    if nan:
        data[1, 2, 3] = np.nan
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(data), str(path), useCompression=compress)
    raw = path.read_bytes()
    if not nan:
        path.write_bytes(raw[: min(int(len(raw) * cut), len(raw) - 1)])
    try:
        volume = read_volume(path)
    except DataError as err:
        assert "\n" not in str(err) and path.name in str(err)
        return
    # Only a cut inside a gzip trailer leaves every voxel there (NRRD does not check the CRC).
    assert not nan and np.array_equal(volume.data, data.transpose(2, 1, 0))


@given(variant=variants(), where=st.floats(0.0, 1.0), xor=st.integers(1, 255))
def test_flipped_byte_in_gzip_stream_is_caught_or_harmless(variant, where, xor, tmp_path):
    raw = bytearray(gzip.compress(variant.image().to_bytes(), mtime=0))
    raw[min(int(where * len(raw)), len(raw) - 1)] ^= xor
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(bytes(raw))
    intact = tmp_path / "intact.nii"
    intact.write_bytes(variant.image().to_bytes())
    try:
        volume = read_volume(path)
    except DataError as err:
        assert "\n" not in str(err) and path.name in str(err)
        return
    # A flip the gzip checks let through (header time or OS byte) must not change the image.
    data, affine = expected(variant, intact)
    np.testing.assert_allclose(volume.data, data, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-4)


@given(dims=st.tuples(*[st.integers(1, 32_767)] * 3), gz=st.booleans())  # NIfTI-1 dims are int16
def test_header_that_promises_huge_dimensions(dims, gz, tmp_path):
    """A header may lie about its size: never allocate what it claims without the bytes being there."""
    raw = bytearray(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)).to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)))
    header.set_data_shape(dims)
    raw[:348] = header.binaryblock
    path = tmp_path / ("big.nii.gz" if gz else "big.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    if dims == (4, 4, 4):  # the truth; the image is constant, which is refused on its own account
        assert read_volume(path, allow_constant=True).shape == dims
        return
    with pytest.raises(DataError) as err:
        read_volume(path)
    assert "\n" not in str(err.value)


def test_gzip_bomb_stops_early(tmp_path):
    small = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)).to_bytes()
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb") as stream:
        stream.write(small)
        zeros = bytes(1 << 20)
        for _ in range(256):  # 256 MiB of zeros behind a 256-byte image: compresses to ~250 KiB
            stream.write(zeros)
    assert path.stat().st_size < 2 << 20
    with pytest.raises(DataError, match="far more data than its header promises"):
        read_volume(path)


# Each variant through the whole `anodiff detect`, with the tiny model (the same file as all four modalities).
DETECT_VARIANTS = {
    "uint8": dict(dtype="uint8"),
    "int16 scaled": dict(dtype="int16", slope_inter=(0.5, 10.0)),
    "float64": dict(dtype="float64"),
    "qform only": dict(codes="qform"),
    "sform only": dict(codes="sform"),
    "no geometry codes": dict(codes="none"),
    "4D singleton": dict(shape=(20, 24, 16, 1)),
    "tiny 3x3x3": dict(shape=(3, 3, 3)),
}


@pytest.mark.parametrize("name", list(DETECT_VARIANTS))
def test_detect_on_odd_files_keeps_the_grid_or_fails_in_one_line(name, tiny_model, tmp_path):
    from tests.conftest import OBLIQUE_AFFINE, brain_phantom

    spec = {"dtype": "int16", "codes": "both", "slope_inter": None, "shape": (20, 24, 16)} | DETECT_VARIANTS[name]
    image, _ = brain_phantom(spec["shape"][:3], lesion=True)
    data = image.reshape(spec["shape"]).astype(spec["dtype"])
    flipped = OBLIQUE_AFFINE @ np.diag([-1.0, 1.0, -1.0, 1.0])
    variant = Variant(data, flipped, spec["codes"], spec["slope_inter"], gz=True)
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(variant.to_bytes())
    out = tmp_path / "mask.nii.gz"
    modalities = [arg for m in ("flair", "t1", "t1ce", "t2") for arg in (f"--{m}", str(scan))]
    result = CliRunner().invoke(app, ["detect", *modalities, "--model", str(tiny_model), "--out", str(out),
                                      "--device", "cpu"])
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert errors and "scan.nii.gz" in result.stderr and not out.exists(), result.output
        return
    source, mask = nib.load(scan), nib.load(out)
    assert mask.shape == source.shape[:3] and mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)


def test_a_header_placing_the_voxels_beyond_any_file_is_refused(tmp_path):
    """A flipped byte in vox_offset once sent gzip reading without end (OverflowError, a traceback)."""
    raw = bytearray(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)).to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)))
    header["vox_offset"] = 3e18
    raw[:348] = header.binaryblock
    path = tmp_path / "far.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="implausible header"):
        read_volume(path)
