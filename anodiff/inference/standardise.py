"""Residuals standardised by healthy tissue like them: a z-score per modality and voxel.

A healthy reconstruction is not equally good everywhere: its residual is larger
at bright, sharp anatomy (cortex, ventricle rims, vessels) than in flat white
matter, so a plain residual ranks fine anatomy above a faint lesion. Here each
modality's signed residual ``r = x - x_hat`` is standardised by the mean and
standard deviation of healthy residuals *in voxels like it*: the same
intensity band and the same edge strength of the reconstruction (the healthy
estimate, so a lesion cannot widen its own band). Bands are quantiles of the
healthy calibration voxels, so no intensity scale is assumed. A voxel's mean and
spread are interpolated between the bands' (bilinearly, each band's figures held at
its middle), so the score is continuous in the reconstruction: a voxel on a band's
edge does not jump between two bands' figures when the network's output moves by
1e-6 (another runtime, another device). A voxel's score is
then ``|z|`` combined over modalities (max: a lesion seen in one contrast is not
diluted by the others; or mean).

Statistics are fitted on held-out healthy voxels only (calibration), never on labels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

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


def bracket(values: np.ndarray, middles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each value between two bands: (lower band, upper band, the upper's weight), all of ``values``' shape.

    ``middles`` (B,): where each band's figures hold; the weight runs linearly from one band's middle to the
    next's, and is clamped beyond the first and last. A band whose middle ties an earlier one's (an empty band
    between tied edges) is passed over."""
    anchors, first = np.unique(middles, return_index=True)
    if len(anchors) == 1:
        only = np.full(np.shape(values), first[0])
        return only, only, np.zeros(np.shape(values))
    k = np.clip(np.searchsorted(anchors, values, side="right") - 1, 0, len(anchors) - 2)
    weight = np.clip((values - anchors[k]) / (anchors[k + 1] - anchors[k]), 0, 1)
    return first[k], first[k + 1], weight


def interpolated(table: np.ndarray, rows, columns) -> np.ndarray:
    """``table`` (I, E) read bilinearly between the :func:`bracket` ``rows`` and ``columns``."""
    (r0, r1, a), (c0, c1, b) = rows, columns
    return ((1 - a) * ((1 - b) * table[r0, c0] + b * table[r0, c1])
            + a * ((1 - b) * table[r1, c0] + b * table[r1, c1]))


def middles_from_edges(edges: np.ndarray) -> np.ndarray:
    """(C, B-1) inner edges -> (C, B) band middles, for statistics saved before middles were (the outer bands'
    at their inner edge)."""
    return np.concatenate([edges[:, :1], (edges[:, :-1] + edges[:, 1:]) / 2, edges[:, -1:]], axis=1)


def band_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Index (0 .. len(edges)) of each value's band: band i holds (edges[i-1], edges[i]], so a point mass (flat
    tissue, no edge at all) stays in the lowest band it reaches."""
    return np.searchsorted(edges, values, side="left")


@dataclass(frozen=True)
class ResidualStats:
    """Healthy residual statistics per modality, band of intensity and band of edge strength.

    ``intensity_edges`` (C, I-1) and ``edge_edges`` (C, E-1) are the inner band edges;
    ``mean`` and ``std`` (C, I, E) the healthy signed residual in each band;
    ``intensity_middles`` (C, I) and ``edge_middles`` (C, E) the median of each band's calibration values, where
    its figures hold exactly (an empty band's: its lower edge).
    """

    intensity_edges: np.ndarray
    edge_edges: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    intensity_middles: np.ndarray
    edge_middles: np.ndarray

    @classmethod
    def fit(cls, residual: np.ndarray, reconstruction: np.ndarray, edges: np.ndarray) -> ResidualStats:
        """From healthy voxels: ``residual``, ``reconstruction`` and ``edges`` (C, N) (see :func:`edge_strength`)."""
        quantiles = lambda values, n: np.quantile(values, np.arange(1, n) / n, axis=1).T  # noqa: E731
        table = (len(residual), INTENSITY_BANDS, EDGE_BANDS)
        stats = cls(quantiles(reconstruction, INTENSITY_BANDS), quantiles(edges, EDGE_BANDS),
                    np.zeros(table), np.zeros(table), np.zeros(table[:2]), np.zeros(table[::2]))
        for c, (r, x_hat, g) in enumerate(zip(residual, reconstruction, edges)):
            stats.intensity_middles[c] = band_middles(x_hat, stats.intensity_edges[c])
            stats.edge_middles[c] = band_middles(g, stats.edge_edges[c])
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
        """Signed z-scores (C, *S) of a signed ``residual`` (C, *S), given its reconstruction and edges; each
        voxel's healthy mean and spread interpolated between the bands' (see the module doc)."""
        out = np.empty(residual.shape, np.float32)
        for c in range(residual.shape[0]):
            rows = bracket(reconstruction[c].numpy().astype(np.float64), self.intensity_middles[c])
            columns = bracket(edges[c].numpy().astype(np.float64), self.edge_middles[c])
            mean, std = interpolated(self.mean[c], rows, columns), interpolated(self.std[c], rows, columns)
            out[c] = (residual[c].numpy() - mean) / std
        return torch.from_numpy(out)

    def to_dict(self) -> dict[str, list]:
        return {field.name: getattr(self, field.name).tolist() for field in fields(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, list]) -> ResidualStats:
        values = {name: np.asarray(raw[name], dtype=np.float64)
                  for name in ("intensity_edges", "edge_edges", "mean", "std")}
        for middles, edges in (("intensity_middles", "intensity_edges"), ("edge_middles", "edge_edges")):
            values[middles] = (np.asarray(raw[middles], dtype=np.float64) if middles in raw
                               else middles_from_edges(values[edges]))
        return cls(**values)


def band_middles(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(B,) the median of ``values`` (N,) in each band of ``edges`` (B-1,); an empty band's: its lower edge."""
    band = band_of(values, edges)
    lower = np.concatenate([[-np.inf], edges])
    return np.array([np.median(values[band == b]) if (band == b).any() else lower[b] for b in range(len(lower))])


def combine(values: torch.Tensor, how: str) -> torch.Tensor:
    """(C, *S) per-modality scores -> (1, *S): their maximum or their mean."""
    return values.amax(dim=0, keepdim=True) if how == "max" else values.mean(dim=0, keepdim=True)
