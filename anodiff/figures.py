"""Every image-like PNG anodiff writes: sample grids during training, and the per-case figures of an evaluation.

Figures are drawn from arrays the caller computed (this module runs no network
and reads no file): images in [0, 1], masks as booleans. Volumes are shown in
RAS voxel order (:func:`ras_view`), axial slices rotated so anterior is up,
coronal and sagittal ones so superior is up. A per-case figure
(:func:`save_case_figure`) shows three orthogonal views through the centre of
the largest lesion, each tile at least ``TILE_PX`` pixels; :func:`save_montage`
the axial slices with most lesion.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image
from scipy import ndimage
from skimage import segmentation

Colour = tuple[float, float, float]
GREEN, RED, BLUE = (0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.4, 1.0)  # truth, anodiff, reference
TILE_PX, DPI = 280, 100  # every tile of a per-case figure is at least TILE_PX pixels wide and high
VIEWS = ("axial", "coronal", "sagittal")


def ras_view(affine: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A function turning (X, Y, Z) volumes of this affine's grid into RAS voxel order, for display."""
    ornt = nib.orientations.io_orientation(affine)
    return lambda volume: nib.orientations.apply_orientation(volume, ornt)


def ras_spacing(affine: np.ndarray, spacing) -> tuple[float, float, float]:
    """The voxel spacing (mm) in the axis order :func:`ras_view` gives."""
    ornt = nib.orientations.io_orientation(affine)
    out = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = float(spacing[axis])
    return tuple(out)


def focus_slice(*candidates: np.ndarray) -> int:
    """The axial index z with most voxels of the first non-empty (X, Y, Z) candidate (RAS order)."""
    chosen = next((c for c in candidates if c.any()), candidates[-1])
    return int(np.argmax(chosen.sum((0, 1))))


def save_overlay(path: Path, base: np.ndarray, panels: list[np.ndarray], outlines: list[tuple[np.ndarray, Colour]]
                 ) -> None:
    """One row of tiles (H, W): the image ``base``, each panel in [0, 1], and the image with ``outlines``
    drawn in order (later ones on top)."""
    drawn = np.stack([base] * 3, -1)
    for mask, colour in outlines:
        drawn[segmentation.find_boundaries(mask)] = colour
    tiles = [np.stack([t] * 3, -1) for t in (base, *panels)] + [drawn]
    row = np.concatenate([np.rot90(t) for t in tiles], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((row * 255).astype(np.uint8)).save(path)


def save_grid(rows: list[torch.Tensor], path: Path) -> None:
    """Rows of (B, H, W) or (B, H, W, D) images in [0, 1] (3D: the middle axial slice) as one PNG."""
    rows = [r[..., r.shape[-1] // 2] if r.ndim == 4 else r for r in rows]
    grid = torch.cat([torch.cat(list(r.float().cpu()), dim=1) for r in rows], dim=0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.rot90(grid) * 255).astype(np.uint8)).save(path)


def lesion_centre(*candidates: np.ndarray) -> tuple[int, int, int]:
    """The voxel at the centre of mass of the largest connected component of the first non-empty
    (X, Y, Z) mask of ``candidates``; the centre of the last one's extent when all are empty."""
    chosen = next((c for c in candidates if c.any()), None)
    if chosen is None:
        return tuple(int(s // 2) for s in candidates[-1].shape)
    components, count = ndimage.label(chosen)
    largest = 1 + int(np.argmax(ndimage.sum_labels(chosen, components, range(1, count + 1))))
    return tuple(int(round(c)) for c in ndimage.center_of_mass(components == largest))


def view_slices(volume: np.ndarray, centre: tuple[int, int, int], box: tuple[slice, slice, slice]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of a RAS (X, Y, Z) volume through ``centre``, cropped to ``box``
    and rotated for display (anterior up on axial, superior up on the others)."""
    x, y, z = centre
    cropped = volume[box]
    bx, by, bz = (s.start for s in box)
    return [np.rot90(cropped[:, :, z - bz]), np.rot90(cropped[:, y - by, :]), np.rot90(cropped[x - bx, :, :])]


def brain_box(brain: np.ndarray, margin: int = 4) -> tuple[slice, slice, slice]:
    """The bounding box of ``brain`` (X, Y, Z) plus ``margin`` voxels, within the volume."""
    if not brain.any():
        return tuple(slice(0, s) for s in brain.shape)
    lo, hi = np.argwhere(brain).min(0), np.argwhere(brain).max(0) + 1
    return tuple(slice(max(0, a - margin), min(s, b + margin)) for a, b, s in zip(lo, hi, brain.shape))


Panel = tuple[str, np.ndarray, str, str, float | None]  # title, RAS volume, colour map, colour-bar label, top


def view_sizes(box: tuple[slice, slice, slice], spacing) -> list[tuple[float, float]]:
    """(width, height) in pixels of the axial, coronal and sagittal views of ``box``, scaled so the shortest
    side of any view is ``TILE_PX``."""
    x, y, z = ((s.stop - s.start) * mm for s, mm in zip(box, spacing))
    extents = [(x, y), (x, z), (y, z)]  # as view_slices shows them: (width, height) in mm
    scale = TILE_PX / min(min(e) for e in extents)
    return [(w * scale, h * scale) for w, h in extents]


def save_case_figure(path: Path, title: str, image: np.ndarray, panels: list[Panel],
                     outlines: list[tuple[str, np.ndarray, Colour]], brain: np.ndarray, spacing) -> Figure:
    """Three views (rows) through the largest lesion of ``outlines`` (truth first) of: the ``image``, each
    panel (its colour bar labelled when it has units; ``top`` None: its 99.9th percentile in the brain), and
    the image with the ``outlines`` (name, mask, colour) and their legend. Volumes are RAS (X, Y, Z), ``image``
    in [0, 1]; ``spacing`` (mm) sets each view's aspect."""
    centre = lesion_centre(*[mask for _, mask, _ in outlines], brain)
    box = brain_box(brain)
    columns: list[Panel] = [("image", image, "gray", "", 1.0), *panels, ("outlines", image, "gray", "", 1.0)]
    contours = [(colour, view_slices(mask.astype(np.float32), centre, box)) for _, mask, colour in outlines]
    aspects = (spacing[1] / spacing[0], spacing[2] / spacing[0], spacing[2] / spacing[1])
    sizes = view_sizes(box, spacing)
    width, heights = max(w for w, _ in sizes), [h for _, h in sizes]
    bars = sum(1 for *_, units, _ in panels if units)
    # Room for titles, labels and colour bars around tiles of exactly the views' sizes.
    figure = Figure(figsize=(len(columns) * width * 1.12 / DPI + 1.1 * bars + 0.5, sum(heights) * 1.1 / DPI + 0.7),
                    dpi=DPI, layout="constrained")
    figure.suptitle(title, fontsize=10)
    grid = figure.subplots(3, len(columns), squeeze=False, gridspec_kw={"height_ratios": heights})
    for column, (name, volume, cmap, units, top) in enumerate(columns):
        if top is None:
            top = float(np.percentile(volume[brain], 99.9)) if brain.any() else 1.0
        for row, tile in enumerate(view_slices(volume, centre, box)):
            axes = grid[row, column]
            shown = axes.imshow(tile, cmap=cmap, vmin=0, vmax=max(top, 1e-6), aspect=aspects[row],
                                interpolation="nearest")
            axes.set(xticks=[], yticks=[], title=name if row == 0 else "", ylabel=VIEWS[row] if column == 0 else "")
            if name == "outlines":
                for colour, views in contours[::-1]:  # the truth (first) drawn last, on top
                    if views[row].any():
                        axes.contour(views[row], levels=[0.5], colors=[colour], linewidths=1.2)
        if units:
            figure.colorbar(shown, ax=grid[:, column], shrink=0.6, label=units)
    grid[0, -1].legend(handles=[Line2D([], [], color=c, lw=2, label=label) for label, _, c in outlines],
                       fontsize=7, loc="upper right", framealpha=0.7)
    return _save(figure, path)


def save_montage(path: Path, title: str, image: np.ndarray, outlines: list[tuple[str, np.ndarray, Colour]],
                 brain: np.ndarray, spacing, count: int = 8) -> Figure:
    """The ``count`` axial slices with most lesion (of the first non-empty outline), image with outlines."""
    focus = next((mask for _, mask, _ in outlines if mask.any()), None)
    area = focus.sum((0, 1)) if focus is not None else brain.sum((0, 1))
    zs = sorted(z for z in np.argsort(area)[::-1][:count].tolist() if area[z] > 0) or [brain.shape[2] // 2]
    box = brain_box(brain)
    columns = min(4, len(zs))
    rows = -(-len(zs) // columns)
    width, height = view_sizes((box[0], box[1], slice(0, 10 ** 6)), spacing)[0]  # axial; z never the shortest
    figure = Figure(figsize=(columns * width * 1.1 / DPI + 0.2, rows * height * 1.12 / DPI + 0.5), dpi=DPI,
                    layout="constrained")
    figure.suptitle(title, fontsize=10)
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.flat:
        axes.set_axis_off()
    for axes, z in zip(grid.flat, zs):
        axes.imshow(np.rot90(image[box[0], box[1], z]), cmap="gray", vmin=0, vmax=1,
                    aspect=spacing[1] / spacing[0], interpolation="nearest")
        for _, mask, colour in outlines[::-1]:  # the truth (first) drawn last, on top
            if mask[..., z].any():
                axes.contour(np.rot90(mask[box[0], box[1], z].astype(np.float32)), levels=[0.5], colors=[colour],
                             linewidths=1.0)
        axes.set_title(f"z = {z}", fontsize=8)
    handles = [Line2D([], [], color=colour, lw=2, label=label) for label, _, colour in outlines]
    grid.flat[0].legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.7)
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Figure:
    """Write ``figure`` as a PNG; returns it, drawn (its axes' extents are then final)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI)
    return figure


def save_loss_curve(log_csv: Path, path: Path) -> None:
    """The training loss of ``log_csv`` (columns step, loss, ...) against the step, log scale, as a PNG."""
    rows = [line.split(",") for line in log_csv.read_text().splitlines()[1:] if line]
    points = [(int(r[0]), float(r[1])) for r in rows if len(r) > 1 and r[1] not in ("", "nan")]
    if not points:
        return
    steps, losses = zip(*points)
    figure = Figure(figsize=(6.4, 4.0), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.plot(steps, losses, color="tab:red", lw=1.4)
    axes.set(xlabel="step", ylabel="training loss (mean per logged window)", title=f"{log_csv.parent.name}: loss",
             yscale="log" if min(losses) > 0 else "linear")
    axes.grid(alpha=0.3)
    _save(figure, path)
