"""Every image-like PNG anodiff writes: sample grids during training, and the per-case figures of an evaluation.

Figures are drawn from arrays the caller computed (this module runs no network
and reads no file): images in [0, 1], masks as booleans. Volumes are shown in
RAS voxel order (:func:`ras_view`), axial slices rotated so anterior is up,
coronal and sagittal ones so superior is up. A per-case figure
(:func:`case_views`, drawn by :func:`save_case_figures`) shows three orthogonal
views through the centre of the largest lesion, each tile at least ``TILE_PX``
pixels, and a montage of the axial slices with most lesion; the 2D arrays it shows
are kept beside the PNGs, so a report can be redrawn without its volumes.
"""

from __future__ import annotations

import json
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

from anodiff.outputs import replaced_atomically

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


VOLUMES_SUFFIX = "_volumes.npz"  # a case's volumes for the report's 3D viewer (anodiff.evaluation.viewer), not views
Panel = tuple[str, np.ndarray, str, str, float | None]  # title, RAS volume, colour map, colour-bar label, top
Outline = tuple[str, np.ndarray, Colour]  # name, RAS mask, colour


def case_views(title: str, image: np.ndarray, panels: list[Panel], outlines: list[Outline], brain: np.ndarray,
               spacing, count: int = 8) -> dict[str, np.ndarray]:
    """What a case's figures show, as 2D arrays (a few hundred kB, where the volumes are many MB): three views
    through the largest lesion of ``outlines`` (truth first) of the ``image``, each panel and each outline, and
    the ``count`` axial slices with most lesion. ``meta`` holds the rest as JSON. Volumes are RAS (X, Y, Z),
    ``image`` in [0, 1]; a panel's ``top`` None is its 99.9th percentile in the brain."""
    centre, box = lesion_centre(*[mask for _, mask, _ in outlines], brain), brain_box(brain)
    columns = [("image", image, "gray", "", 1.0), *panels]
    views = {f"column{c}_{v}": tile.astype(np.float16) for c, (_, volume, *_) in enumerate(columns)
             for v, tile in enumerate(view_slices(volume, centre, box))}
    views |= {f"outline{o}_{v}": tile.astype(bool) for o, (_, mask, _) in enumerate(outlines)
              for v, tile in enumerate(view_slices(mask, centre, box))}
    focus = next((mask for _, mask, _ in outlines if mask.any()), None)
    area = (focus if focus is not None else brain).sum((0, 1))
    zs = sorted(z for z in np.argsort(area)[::-1][:count].tolist() if area[z] > 0) or [brain.shape[2] // 2]
    views["montage"] = np.stack([np.rot90(image[box[0], box[1], z]) for z in zs]).astype(np.float16)
    views["montage_outlines"] = np.stack([np.stack([np.rot90(mask[box[0], box[1], z]) for z in zs])
                                          for _, mask, _ in outlines]).astype(bool) if outlines else np.zeros(0)
    sx, sy, sz = (float(s) for s in spacing)
    tops = [top if top is not None else (float(np.percentile(volume[brain], 99.9)) if brain.any() else 1.0)
            for _, volume, _, _, top in columns]
    meta = {"title": title, "columns": [[name, cmap, units, top] for (name, _, cmap, units, _), top
                                        in zip(columns, tops)],
            "outlines": [[name, list(colour)] for name, _, colour in outlines], "zs": zs,
            "view_spacing": [[sx, sy], [sx, sz], [sy, sz]]}  # (across, up) mm of each view's pixels
    return views | {"meta": np.array(json.dumps(meta))}


def save_case_figures(folder: Path, name: str, views: dict[str, np.ndarray]) -> list[Figure]:
    """``name.npz`` (the views, so ``anodiff report`` can redraw them), ``name.png`` (three views) and
    ``name_montage.png`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(folder / f"{name}.npz", suffix=".npz") as tmp:
        np.savez_compressed(tmp, **views)
    return draw_case_figures(folder, name, views)


def draw_case_figures(folder: Path, name: str, views) -> list[Figure]:
    """Draw the PNGs of :func:`case_views` (or of a saved ``.npz``) in ``folder``; returns the figures."""
    meta = json.loads(str(views["meta"]))
    return [_views_figure(folder / f"{name}.png", views, meta), _montage_figure(folder / f"{name}_montage.png",
                                                                                 views, meta)]


def redraw_case_figures(folder: Path) -> int:
    """Redraw the figures of every ``.npz`` of :func:`save_case_figures` in ``folder``; how many."""
    saved = sorted(p for p in folder.glob("*.npz") if not p.name.endswith(VOLUMES_SUFFIX)) if folder.is_dir() else []
    for path in saved:
        with np.load(path) as views:
            draw_case_figures(folder, path.stem, dict(views))
    return len(saved)


def _tile_pixels(views, meta: dict) -> list[tuple[float, float]]:
    """(width, height) in pixels of the three views, scaled so the shortest side of any is ``TILE_PX``."""
    extents = [(tile.shape[1] * across, tile.shape[0] * up) for tile, (across, up)
               in ((views[f"column0_{v}"], meta["view_spacing"][v]) for v in range(3))]
    scale = TILE_PX / min(min(e) for e in extents)
    return [(w * scale, h * scale) for w, h in extents]


def _views_figure(path: Path, views, meta: dict) -> Figure:
    """Rows: axial, coronal, sagittal; columns: the image, each panel (with its colour bar when it has units),
    the image with the outlines and their legend."""
    columns = meta["columns"] + [["outlines", "gray", "", 1.0]]
    sizes = _tile_pixels(views, meta)
    bars = sum(1 for _, _, units, _ in columns if units)
    # Room for titles, labels and colour bars around tiles of exactly the views' sizes.
    figure = Figure(figsize=(len(columns) * max(w for w, _ in sizes) * 1.12 / DPI + 1.1 * bars + 0.5,
                             sum(h for _, h in sizes) * 1.1 / DPI + 0.7), dpi=DPI, layout="constrained")
    figure.suptitle(meta["title"], fontsize=10)
    grid = figure.subplots(3, len(columns), squeeze=False, gridspec_kw={"height_ratios": [h for _, h in sizes]})
    for c, (name, cmap, units, top) in enumerate(columns):
        for v, view in enumerate(VIEWS):
            axes = grid[v, c]
            across, up = meta["view_spacing"][v]
            shown = axes.imshow(views[f"column{0 if name == 'outlines' else c}_{v}"].astype(np.float32), cmap=cmap,
                                vmin=0, vmax=max(top, 1e-6), aspect=up / across, interpolation="nearest")
            axes.set(xticks=[], yticks=[], title=name if v == 0 else "", ylabel=view if c == 0 else "")
            if name == "outlines":
                _outlines(axes, [views[f"outline{o}_{v}"] for o in range(len(meta["outlines"]))], meta)
        if units:
            figure.colorbar(shown, ax=grid[:, c], shrink=0.6, label=units)
    _legend(grid[0, -1], meta)
    return _save(figure, path)


def _montage_figure(path: Path, views, meta: dict) -> Figure:
    """The axial slices with most lesion, image with the outlines, four to a row."""
    zs, (across, up) = meta["zs"], meta["view_spacing"][0]
    columns, rows = min(4, len(zs)), -(-len(zs) // min(4, len(zs)))
    height, width = views["montage"].shape[1:]
    scale = TILE_PX / min(width * across, height * up)
    figure = Figure(figsize=(columns * width * across * scale * 1.1 / DPI + 0.2,
                             rows * height * up * scale * 1.12 / DPI + 0.5), dpi=DPI, layout="constrained")
    figure.suptitle(f"{meta['title']}: axial slices with most lesion", fontsize=10)
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.flat:
        axes.set_axis_off()
    for k, (axes, z) in enumerate(zip(grid.flat, zs)):
        axes.imshow(views["montage"][k].astype(np.float32), cmap="gray", vmin=0, vmax=1, aspect=up / across,
                    interpolation="nearest")
        _outlines(axes, [masks[k] for masks in views["montage_outlines"]], meta, width=1.0)
        axes.set_title(f"z = {z}", fontsize=8)
    _legend(grid.flat[0], meta)
    return _save(figure, path)


def _outlines(axes, masks: list[np.ndarray], meta: dict, width: float = 1.2) -> None:
    """Each outline's contour, the truth (first) drawn last, on top."""
    for mask, (_, colour) in list(zip(masks, meta["outlines"]))[::-1]:
        if mask.any():
            axes.contour(mask.astype(np.float32), levels=[0.5], colors=[tuple(colour)], linewidths=width)


def _legend(axes, meta: dict) -> None:
    axes.legend(handles=[Line2D([], [], color=tuple(colour), lw=2, label=name) for name, colour in meta["outlines"]],
                fontsize=7, loc="upper right", framealpha=0.7)


def _save(figure: Figure, path: Path) -> Figure:
    """Write ``figure`` as a PNG; returns it, drawn (its axes' extents are then final)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    with replaced_atomically(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=DPI, format="png")
    return figure


def save_loss_curve(log_csv: Path, path: Path) -> None:
    """The training loss of ``log_csv`` (columns step, loss, ...) against the step, log scale, as a PNG."""
    rows = [line.split(",") for line in log_csv.read_text(encoding="utf-8").splitlines()[1:] if line]
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


def save_outline_rows(path: Path, rows: list[tuple[str, np.ndarray, np.ndarray, list[tuple[str, np.ndarray, Colour]]]],
                      title: str) -> None:
    """Rows of three orthogonal views through a volume's centre, with outlines: a preparation's QC figure.

    Each row: (name, image (X, Y, Z), affine, [(label, mask (X, Y, Z), colour)]), shown in RAS order.
    """
    figure = Figure(figsize=(9.0, 3.1 * len(rows)), dpi=DPI, layout="constrained")
    figure.suptitle(title, fontsize=10)
    grid = figure.subplots(len(rows), 3, squeeze=False)
    for axes_row, (name, image, affine, outlines) in zip(grid, rows):
        view = ras_view(affine)
        image, masks = view(image), [view(mask) > 0.5 for _, mask, _ in outlines]
        centre = tuple(s // 2 for s in image.shape)
        box = tuple(slice(0, s) for s in image.shape)
        low, high = np.percentile(image, [1.0, 99.5])
        tiles = view_slices((image - low) / max(high - low, 1e-6), centre, box)
        mask_tiles = [view_slices(m, centre, box) for m in masks]
        sx, sy, sz = ras_spacing(affine, np.linalg.norm(affine[:3, :3], axis=0))
        meta = {"outlines": [[label, colour] for label, _, colour in outlines]}
        for v, axes in enumerate(axes_row):
            aspect = (sy / sx, sz / sx, sz / sy)[v]
            axes.imshow(np.clip(tiles[v], 0, 1), cmap="gray", vmin=0, vmax=1, aspect=aspect)
            _outlines(axes, [mt[v] for mt in mask_tiles], meta, width=1.0)
            axes.set_axis_off()
            axes.set_title(f"{name}: {VIEWS[v]}", fontsize=8)
        _legend(axes_row[0], meta)
    _save(figure, path)
