"""Leave-one-case-out on a handful of labelled BraTS cases (e.g. ../shared/data/brats2015-sample).

For each case: train on the others, then evaluate on the left-out case. With the
default, unsupervised recipe, training uses the tumour-free axial slices of the
others (one of them held out to calibrate the threshold) and the FLAIR baseline
stands beside it; with a segdiff recipe, training uses the others' labels and the
UNet reference stands beside it. Prints per-case figures and their mean. Inputs
are linked, never copied.

    python examples/brats_leave_one_out.py ../shared/data/brats2015-sample --out runs/brats-loo
    python examples/brats_leave_one_out.py ../shared/data/brats2015-sample --config configs/segdiff_brats_cpu.yaml \
        --out runs/brats-loo-segdiff
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from anodiff.data.cases import link_cases

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "brats_cpu.yaml"
FIGURES = ("auroc", "auprc", "dice_calibrated", "dice_best_possible")
SEGMENTATION_FIGURES = ("dice whole", "hd95 whole", "auroc whole", "auprc whole")


def run(*command: str) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/brats-loo"))
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="Keep what earlier runs trained; train what is missing.")
    args = parser.parse_args()
    anodiff = str(Path(sys.executable).with_name("anodiff"))
    cases = sorted(p for p in args.data.iterdir() if p.is_dir())
    rows = []
    start = time.perf_counter()
    for held_out in cases:
        fold = args.out / held_out.name
        train = link_cases([c for c in cases if c != held_out], fold / "train")
        test = link_cases([held_out], fold / "test")
        steps = ["--steps", str(args.steps)] if args.steps else []
        run(anodiff, "-q", "train", "--data", str(train), "--config", str(args.config), "--out", str(fold / "model"),
            "--resume" if args.resume else "--overwrite", *steps)
        run(anodiff, "-q", "evaluate", "--model", str(fold / "model"), "--data", str(test), "--out",
            str(fold / "report"), "--overwrite")
        report = json.loads((fold / "report" / "report.json").read_text(encoding="utf-8"))
        (case_row,) = report["cases"]
        seconds = {name: m.get("seconds_per_volume") for name, m in report["methods"].items()}
        rows.append({"case": held_out.name, **{k: v for k, v in case_row.items() if ": " in k},
                     **{f"{name}: s/volume": s for name, s in seconds.items() if s is not None}})
    segdiff = report.get("kind") == "segdiff"
    figures = SEGMENTATION_FIGURES + ("s/volume",) if segdiff else FIGURES
    methods = list(dict.fromkeys(k.split(": ")[0] for k in rows[0] if ": " in k))
    print(f"\nleave-one-case-out on {len(cases)} cases ({time.perf_counter() - start:.0f} s); "
          + ("whole tumour; SegDiff and a UNet trained on the other three cases' labels" if segdiff else
             "calibrated = 1 % FPR on the held-out training case's tumour-free slices"))
    header = "| case | method | " + " | ".join(figures) + " |"
    lines = [header, "|" + " --- |" * (len(figures) + 2)]
    for method in methods:
        for row in rows:
            lines.append(f"| {row['case']} | {method} | "
                         + " | ".join(f"{row.get(f'{method}: {f}', np.nan):.3f}" for f in figures) + " |")
        means = [np.nanmean([row.get(f"{method}: {f}", np.nan) for row in rows]) for f in figures]
        lines.append(f"| **mean** | {method} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    table = "\n".join(lines)
    print(table)
    (args.out / "summary.md").write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
