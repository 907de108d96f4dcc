"""The report's figures, drawn from ``report.json`` alone (no network, no map): curves, histograms, Dice.

An unsupervised report gets ROC and precision-recall curves of anodiff and the
baseline with their calibrated and validation-best operating points, Dice against
the threshold and the score's histograms in healthy and lesion voxels; a segdiff
report gets Dice against the number of samples fused. Matplotlib's object API is
used (no pyplot state), so drawing is safe from any thread and never opens a window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from anodiff.formats import has_curves

COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple")  # anodiff first, as in the overlays
MARKERS = {"calibrated": ("o", "calibrated"), "validation_best": ("s", "val-best")}
DPI = 100


def detection_figures(figures: dict, folder: Path) -> dict[str, Path]:
    """An unsupervised report's figures (``report.json``'s content) as PNGs in ``folder``; {caption: path}."""
    if not has_curves(figures):
        return {}
    return _draw({"ROC curves": ("roc.png", _roc), "Precision-recall curves": ("pr.png", _pr),
                  "Dice against the threshold": ("dice_threshold.png", _dice_threshold),
                  "Score in healthy and lesion voxels": ("histograms.png", _histograms)}, figures, folder)


def segmentation_figures(figures: dict, folder: Path) -> dict[str, Path]:
    """A segmentation report's figures as PNGs in ``folder``; {caption: path}."""
    return _draw({"Dice against the number of samples fused": ("dice_by_samples.png", _dice_by_samples)},
                 figures, folder)


def _draw(drawers: dict, figures: dict, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for caption, (name, draw) in drawers.items():
        figure = draw(figures)
        FigureCanvasAgg(figure)
        figure.savefig(folder / name, dpi=DPI)
        written[caption] = folder / name
    return written


def _roc(figures: dict) -> Figure:
    figure = Figure(figsize=(6.4, 5.6), layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="chance")
    for colour, (name, method) in zip(COLOURS, figures["methods"].items()):
        roc = method["curves"]["roc"]
        axes.plot(roc["fpr"], roc["tpr"], color=colour, lw=1.6, label=f"{name} (AUROC {method['auroc_pooled']:.3f})")
        _operating_points(axes, name, method, colour, "fpr", "tpr")
    axes.set(xlabel="false-positive rate (healthy brain voxels)", ylabel="true-positive rate (lesion voxels)",
             xlim=(0, 1), ylim=(0, 1.01), title="ROC, pooled over the test brain voxels")
    axes.legend(loc="lower right", fontsize=8)
    return figure


def _pr(figures: dict) -> Figure:
    figure = Figure(figsize=(6.4, 5.6), layout="constrained")
    axes = figure.add_subplot()
    for colour, (name, method) in zip(COLOURS, figures["methods"].items()):
        pr = method["curves"]["pr"]
        axes.step(pr["recall"], pr["precision"], where="pre", color=colour, lw=1.6,
                  label=f"{name} (AUPRC {method['auprc_pooled']:.3f})")
        _operating_points(axes, name, method, colour, "tpr", "precision")
    axes.set(xlabel="recall (lesion voxels found)", ylabel="precision (flagged voxels that are lesion)",
             xlim=(0, 1), ylim=(0, 1.01), title="Precision-recall, pooled over the test brain voxels")
    axes.legend(loc="lower left", fontsize=8)
    return figure


def _operating_points(axes, name: str, method: dict, colour: str, x: str, y: str) -> None:
    """A method's calibrated and validation-best masks as markers at their (``x``, ``y``) figures."""
    for key, point in method["curves"]["operating_points"].items():
        marker, label = MARKERS[key]
        axes.plot(point[x], point[y], marker, color=colour, mec="black", ms=7, label=f"{name}, {label} threshold")


def _per_method_panels(figures: dict, height: float = 4.2) -> tuple[Figure, list]:
    """One panel per method, side by side (their scores have their own units)."""
    methods = figures["methods"]
    figure = Figure(figsize=(5.2 * len(methods), height), layout="constrained")
    return figure, [figure.add_subplot(1, len(methods), i + 1) for i in range(len(methods))]


def _dice_threshold(figures: dict) -> Figure:
    figure, panels = _per_method_panels(figures)
    for axes, colour, (name, method) in zip(panels, COLOURS, figures["methods"].items()):
        curve = method["curves"]["dice_by_threshold"]
        axes.plot(curve["threshold"], curve["dice"], color=colour, lw=1.6, label="pooled Dice")
        axes.axvline(method["threshold_calibrated"], color="black", ls="--", lw=1,
                     label=f"calibrated ({method['threshold_calibrated']:.3g}): Dice "
                           f"{method['dice_calibrated_pooled']:.3f}")
        axes.axvline(method["threshold_best_possible"], color="0.5", ls=":", lw=1.2,
                     label=f"best possible ({method['threshold_best_possible']:.3g}): Dice "
                           f"{method['dice_best_possible_pooled']:.3f}")
        axes.set(xlabel=f"threshold ({_units(figures, name)})", ylabel="Dice", ylim=(0, 1), title=name)
        axes.legend(fontsize=8)
    return figure


def _histograms(figures: dict) -> Figure:
    figure, panels = _per_method_panels(figures)
    for axes, colour, (name, method) in zip(panels, COLOURS, figures["methods"].items()):
        histogram = method["curves"]["histogram"]
        edges = np.asarray(histogram["edges"])
        axes.stairs(histogram["healthy"], edges, color="0.35", fill=True, alpha=0.45, label="healthy brain voxels")
        axes.stairs(histogram["lesion"], edges, color=colour, lw=1.6, label="lesion voxels")
        axes.axvline(method["threshold_calibrated"], color="black", ls="--", lw=1, label="calibrated threshold")
        axes.set(xlabel=f"score ({_units(figures, name)})\nthe last bin holds all above the 99.9th percentile",
                 ylabel="density", yscale="log", title=name)
        axes.legend(fontsize=8)
    return figure


def _dice_by_samples(figures: dict) -> Figure:
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    axes = figure.add_subplot()
    curve = figures["dice_by_samples"]
    axes.plot(curve["k"], curve["dice_per_volume_mean"], "o-", color=COLOURS[0], label="SegDiff, fused")
    reference = next((m for name, m in figures["methods"].items() if "UNet" in name), None)
    if reference is not None:
        region = figures["regions"][0]
        axes.axhline(reference[region]["dice_per_volume_mean"], color=COLOURS[1], ls="--", label="UNet reference")
    axes.set(xlabel="samples fused (k)", ylabel=f"Dice ({figures['regions'][0]}, per-volume mean)",
             xticks=curve["k"], title=f"Dice of the {figures['fusion']} of the first k samples")
    axes.legend(fontsize=8)
    return figure


def _units(figures: dict, name: str) -> str:
    """The units of a method's score, for axis labels."""
    if name != "anodiff":
        return "histogram-equalised intensity"
    return "z-score" if figures.get("anomaly", {}).get("score") == "zscore" else "|x - x_hat|"
