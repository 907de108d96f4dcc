"""Residuals standardised by healthy tissue like them: a z-score per modality and voxel.

A healthy reconstruction is not equally good everywhere: its residual is larger
at bright, sharp anatomy (cortex, ventricle rims, vessels) than in flat white
matter, so a plain residual ranks fine anatomy above a faint lesion. Here each
modality's signed residual ``r = x - x_hat`` is standardised by the mean and
standard deviation of healthy residuals *in voxels like it*: the same
intensity band and the same edge strength of the reconstruction (the healthy
estimate, so a lesion cannot widen its own band). Bands are quantiles of the
healthy calibration voxels, so no intensity scale is assumed. A voxel's score is
then ``|z|`` combined over modalities (max: a lesion seen in one contrast is not
diluted by the others; or mean).

Statistics are fitted on held-out healthy voxels only (calibration), never on labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

INTENSITY_BANDS = 8
EDGE_BANDS = 4
PRIOR_VOXELS = 200  # a band's spread is shrunk towards its modality's with this weight, so sparse bands are stable


def edge_strength(reconstruction: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Gradient magnitude (C, H, W, D) of a (C, H, W, D) volume: in-plane (2D models, per axial slice) or 3D."""
    values = reconstruction.numpy()
    axes = (1, 2) if spatial_dims == 2 else (1, 2, 3)
    squared = sum(ndimage.sobel(values, axis=axis, mode="nearest") ** 2 for axis in axes)
    return torch.from_numpy(np.sqrt(squared).astype(np.float32))


def band_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index (0 .. len(edges)) of each value's band: band i holds (edges[i-1], edges[i]], so a point mass (flat
    tissue, no edge at all) stays in the lowest band it reaches."""
    return np.searchsorted(edges, values, side="left")


@dataclass(frozen=True)
class ResidualStats:
    """Healthy residual statistics per modality, band of intensity and band of edge strength.

    ``intensity_edges`` (C, I-1) and ``edge_edges`` (C, E-1) are the inner band edges;
    ``mean`` and ``std`` (C, I, E) the healthy signed residual in each band.
    """

    intensity_edges: np.ndarray
    edge_edges: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, residual: np.ndarray, reconstruction: np.ndarray, edges: np.ndarray) -> ResidualStats:
        """From healthy voxels: ``residual``, ``reconstruction`` and ``edges`` (C, N) (see :func:`edge_strength`)."""
        quantiles = lambda values, n: np.quantile(values, np.arange(1, n) / n, axis=1).T  # noqa: E731
        stats = cls(quantiles(reconstruction, INTENSITY_BANDS), quantiles(edges, EDGE_BANDS),
                    np.zeros((len(residual), INTENSITY_BANDS, EDGE_BANDS)),
                    np.zeros((len(residual), INTENSITY_BANDS, EDGE_BANDS)))
        for c, (r, x_hat, g) in enumerate(zip(residual, reconstruction, edges)):
            band = stats._bands(c, x_hat, g)
            count = np.bincount(band, minlength=INTENSITY_BANDS * EDGE_BANDS)
            total = np.bincount(band, weights=r, minlength=count.size)
            squares = np.bincount(band, weights=r**2, minlength=count.size)
            mean_all, var_all = float(r.mean()), float(r.var()) + 1e-8
            seen = np.maximum(count, 1)
            band_var = np.maximum(squares / seen - (total / seen) ** 2, 0)
            mean = (total + PRIOR_VOXELS * mean_all) / (count + PRIOR_VOXELS)
            var = (count * band_var + PRIOR_VOXELS * var_all) / (count + PRIOR_VOXELS)
            stats.mean[c] = mean.reshape(INTENSITY_BANDS, EDGE_BANDS)
            stats.std[c] = np.sqrt(np.maximum(var, 1e-8)).reshape(INTENSITY_BANDS, EDGE_BANDS)
        return stats

    def _bands(self, c: int, reconstruction: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """Flat band index (I * E) of each voxel of modality ``c``."""
        return (band_of(reconstruction, self.intensity_edges[c]) * EDGE_BANDS
                + band_of(edges, self.edge_edges[c]))

    def zscores(self, residual: torch.Tensor, reconstruction: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """Signed z-scores (C, *S) of a signed ``residual`` (C, *S), given its reconstruction and edges."""
        out = np.empty(residual.shape, np.float32)
        for c in range(residual.shape[0]):
            band = self._bands(c, reconstruction[c].numpy(), edges[c].numpy())
            out[c] = (residual[c].numpy() - self.mean[c].ravel()[band]) / self.std[c].ravel()[band]
        return torch.from_numpy(out)

    def to_dict(self) -> dict[str, list]:
        return {name: getattr(self, name).tolist() for name in ("intensity_edges", "edge_edges", "mean", "std")}

    @classmethod
    def from_dict(cls, raw: dict[str, list]) -> ResidualStats:
        return cls(*(np.asarray(raw[name], dtype=np.float64)
                     for name in ("intensity_edges", "edge_edges", "mean", "std")))


def combine(values: torch.Tensor, how: str) -> torch.Tensor:
    """(C, *S) per-modality scores -> (1, *S): their maximum or their mean."""
    return values.amax(dim=0, keepdim=True) if how == "max" else values.mean(dim=0, keepdim=True)
