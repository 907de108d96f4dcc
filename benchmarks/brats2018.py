"""BraTS 2018, leave one institution out: train on two institutions, evaluate on the third, rotate.

The ten BraTS 2018 cases of ../shared/data/brats2018-sample come from three
institutions (2013, CBICA, TCIA02). Each fold trains a model on the healthy tissue
of the cases of two institutions (a held-out share of them calibrates the threshold
and runs the sensitivity check, no test label involved) and evaluates it on every
case of the third. Rows per contrast, as the field reports BraTS: T2 only, FLAIR
only, all four; each beside the FLAIR threshold and, for a model of another
contrast, its own threshold (the T2 threshold beside T2). Scoring rows reuse a
row's models (``anodiff evaluate`` overrides, recalibrated on the held-out healthy
data). Writes ``docs/results/brats2018.md``.

    python benchmarks/brats2018.py --out runs/brats2018
    python benchmarks/brats2018.py --rows t2 flair --out runs/brats2018
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from results import ROOT, evaluated, trained, write_results

from anodiff.data.cases import link_cases

CONFIG = ROOT / "configs" / "brats_cpu.yaml"
FIGURES = {"auroc": "AUROC", "auprc": "AUPRC", "dice_best_possible": "Dice best possible",
           "dice_calibrated": "Dice calibrated"}


@dataclass(frozen=True)
class Row:
    """A row of the table: training overrides (which models) and scoring overrides (how they are read)."""

    key: str
    name: str
    training: tuple[str, ...]
    scoring: tuple[str, ...] = ()


ALL_FOUR = "data.modalities=[flair,t1,t1ce,t2]"
ROWS = (
    Row("t2", "T2 only", ("data.modalities=[t2]",)),
    Row("flair", "FLAIR only", ("data.modalities=[flair]",)),
    Row("all", "all four (FLAIR, T1, T1c, T2)", (ALL_FOUR,)),
    Row("ldm", "latent diffusion, all four", (ALL_FOUR, "model.kind=ldm", "autoencoder.num_steps=800")),
)


def institution(case: Path) -> str:
    """A BraTS 2018 case's institution: ``Brats18_<institution>_...``."""
    return case.name.split("_")[1]


def folds(data: Path, out: Path) -> list[tuple[str, Path, Path]]:
    """Leave one institution out: (held-out institution, training folder, test folder), inputs linked."""
    cases = sorted(p for p in data.iterdir() if p.is_dir())
    held = sorted({institution(c) for c in cases})
    return [(name, link_cases([c for c in cases if institution(c) != name], out / name / "train"),
             link_cases([c for c in cases if institution(c) == name], out / name / "test")) for name in held]


def figures(report: dict) -> dict[str, dict[str, float]]:
    """Every method's pooled figures in a report, with anodiff's cost and its sensitivity check."""
    out = {}
    for method, m in report["methods"].items():
        out[method] = {key: m[f"{key}_pooled"] for key in FIGURES}
    check = (report.get("sensitivity") or {}).get("all") or {}
    out["anodiff"] |= {"passes": report["network_evals_per_slice"], "seconds": report["seconds_per_volume"],
                       "check_auroc": check.get("auroc") or np.nan}
    return out


def table(results: dict[str, dict[str, dict[str, dict[str, float]]]]) -> str:
    """Markdown: per row, each method's per-fold figures and their mean."""
    lines = ["| row | method | fold | " + " | ".join(FIGURES.values()) + " | passes/slice | s/volume | "
             "sensitivity check AUROC |", "|" + " --- |" * (len(FIGURES) + 6)]
    fmt = lambda v: "-" if v is None or not np.isfinite(v) else f"{v:.3f}"  # noqa: E731
    for row, by_fold in results.items():
        methods = list(next(iter(by_fold.values())))
        for method in methods:
            per_fold = {fold: f[method] for fold, f in by_fold.items() if method in f}
            extra = ("passes", "seconds", "check_auroc")
            for fold, f in per_fold.items():
                lines.append(f"| {row} | {method} | {fold} | " + " | ".join(fmt(f[k]) for k in FIGURES) + " | "
                             + " | ".join(fmt(f.get(k, np.nan)) for k in extra) + " |")
            mean = {k: float(np.nanmean([f.get(k, np.nan) for f in per_fold.values()])) for k in (*FIGURES, *extra)}
            lines.append(f"| **{row}** | **{method}** | mean | " + " | ".join(fmt(mean[k]) for k in FIGURES) + " | "
                         + " | ".join(fmt(mean[k]) for k in extra) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "brats2018-sample")
    parser.add_argument("--out", type=Path, default=Path("runs/brats2018"))
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--rows", nargs="+", default=[r.key for r in ROWS], choices=[r.key for r in ROWS])
    parser.add_argument("--scoring", nargs="*", default=[], help="anomaly.*/sampler.* overrides for every row")
    parser.add_argument("--results", default="brats2018", help="name of the docs/results file written")
    parser.add_argument("--folds", nargs="+", help="held-out institutions to run (default: all three)")
    parser.add_argument("--training", nargs="*", default=[], help="training overrides for every row")
    args = parser.parse_args()
    start = time.perf_counter()
    results = {}
    for row in (r for r in ROWS if r.key in args.rows):
        name = row.name + "".join(f" ({' '.join(extra)})" for extra in (args.training, args.scoring) if extra)
        results[name] = {}
        for fold, train, test in folds(args.data, args.out):
            if args.folds and fold not in args.folds:
                continue
            model = trained(args.config, (*row.training, *args.training), train, args.out / fold)
            report = evaluated(model, test, (*row.scoring, *args.scoring), args.out / fold)
            results[name][f"test {fold}"] = figures(report)
            print(table(results), flush=True)
    body = ("Leave one institution out on the ten BraTS 2018 cases of `brats2018-sample` (2013: 4, CBICA: 4, "
            "TCIA02: 2); pooled over the brain voxels of the held-out institution's cases. The sensitivity check "
            "is measured at calibration on the training institutions' held-out healthy tissue.\n\n" + table(results))
    write_results(args.results, "BraTS 2018, leave one institution out", body, configs=[args.config],
                  minutes=(time.perf_counter() - start) / 60)


if __name__ == "__main__":
    main()
