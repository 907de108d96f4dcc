"""Fusion of sampled masks and their uncertainty, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from anodiff.inference.fusion import fuse, staple, uncertainty


def disks(radii: list[float], size: int = 32) -> np.ndarray:
    """One binary disk per radius, all centred: (N, 1, size, size)."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return np.stack([(np.hypot(yy, xx) <= r)[None] for r in radii]).astype(np.float32)


def test_mean_and_majority_fusion():
    samples = np.array([[[1.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]]])[:, None]  # (3, 1, 1, 3)
    np.testing.assert_allclose(fuse(samples, "mean")[0, 0], [1, 2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_array_equal(fuse(samples, "majority")[0, 0], [1, 1, 0])


def test_staple_recovers_the_consensus_despite_an_unreliable_sample():
    truth = disks([6])[0]
    noisy = truth.copy()
    noisy[0, :, :4] = 1  # one sample also paints a band of false positives
    masks = np.stack([truth, truth, truth, noisy]) > 0
    fused = staple(masks) >= 0.5
    assert np.array_equal(fused, truth > 0)
    assert staple(np.zeros((3, 1, 4, 4), bool)).max() == 0


def test_uncertainty_is_zero_where_samples_agree_and_highest_on_the_border():
    samples = disks([7, 8, 9, 10, 11])  # the samples disagree only about where the border is
    for kind in ("std", "entropy"):
        unc = uncertainty(samples, kind)[0]
        yy, xx = np.mgrid[:32, :32] - 15.5
        radius = np.hypot(yy, xx)
        inside, border, outside = unc[radius < 6], unc[(radius > 8) & (radius < 10)], unc[radius > 12]
        assert inside.max() == 0 and outside.max() == 0
        assert border.mean() > 0.3
    assert uncertainty(disks([5, 5, 5]), "entropy").max() == pytest.approx(0, abs=1e-5)
    assert uncertainty(np.array([[1.0], [0.0]]), "entropy")[0] == pytest.approx(1.0, abs=1e-4)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"\(N, \*S\)"):
        fuse(np.array([0.5]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        uncertainty(np.full((2, 3, 3), 2.0))
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(disks([3]), "vote")
