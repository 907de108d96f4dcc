"""Choose a trained model's scoring settings on healthy data alone: the healthy floor and the sensitivity check.

Each candidate (a set of ``anomaly.*`` / ``sampler.*`` overrides) recalibrates the
model on its own held-out healthy cases, which measures the healthy floor (false
positives) and the sensitivity check (misses of generic anomalies inserted into that
healthy data). No test case and no label is read. The candidate chosen has the best
worst-case AUROC over the check's kinds and sizes, among those whose healthy floor
(residual p99) stays within ``--floor-slack`` of the first candidate's, and only if
that AUROC is above the upper end of the first candidate's interval for its own worst
group: a gain inside the check's noise (a few anomalies a kind) keeps the first.
Writes ``docs/results/choose_scoring_<name>.md``.

    python benchmarks/choose_scoring.py --model demo-output/model --name demo \\
        --candidate "" --candidate "anomaly.extra_t0=[300] anomaly.combine_levels=max"
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import numpy as np
from results import write_results

from anodiff.methods import load_model
from anodiff.methods.anomaly.method import with_anomaly_settings
from anodiff.methods.anomaly.scoring import passes_per_input


def label_free_figures(model) -> dict[str, float]:
    """The floor and the check of a (re)calibrated model: what a choice may look at."""
    check = model.meta["sensitivity"]
    groups = {**check["kinds"], **check["sizes"]}
    aurocs = {name: f["auroc"] for name, f in groups.items() if f["auroc"] is not None}
    worst = min(aurocs, key=aurocs.get)
    return {"floor_p99": model.meta["healthy_floor"]["zones"]["overall"]["score_p99"],
            # the upper end of the worst group's interval (checks measured before intervals: the AUROC itself)
            "worst_high": (groups[worst].get("auroc_interval") or [aurocs[worst]] * 2)[1],
            "floor_ssim": model.meta["healthy_floor"]["zones"]["overall"]["ssim_mean"],
            "worst_auroc": aurocs[worst], "mean_auroc": float(np.mean(list(aurocs.values()))),
            "all_auroc": check["all"]["auroc"], "all_auprc": check["all"]["auprc"],
            **{f"auroc {name}": value for name, value in aurocs.items()},
            "passes": passes_per_input(model.config)}


def choose(rows: dict[str, dict[str, float]], slack: float) -> str:
    """The candidate with the best worst-case AUROC whose floor is within ``slack`` of the first's and whose
    worst-case AUROC clears the first's interval; the first when none does."""
    first_name, first = next(iter(rows.items()))
    allowed = {name: r for name, r in rows.items()
               if r["floor_p99"] <= first["floor_p99"] * (1 + slack) and r["worst_auroc"] > first["worst_high"]}
    if not allowed:
        return first_name
    return max(allowed, key=lambda name: (allowed[name]["worst_auroc"], allowed[name]["all_auprc"]))


def markdown(rows: dict[str, dict[str, float]], chosen: str) -> str:
    keys = [k for k in next(iter(rows.values())) if k.startswith("auroc ")]
    columns = ["floor p99", "floor SSIM", "passes/slice", "worst AUROC", "mean AUROC", "all AUPRC", *keys]
    lines = ["| candidate | " + " | ".join(c.replace("auroc ", "AUROC ") for c in columns) + " |",
             "|" + " --- |" * (len(columns) + 1)]
    for name, r in rows.items():
        values = [r["floor_p99"], r["floor_ssim"], r["passes"], r["worst_auroc"], r["mean_auroc"], r["all_auprc"],
                  *[r[k] for k in keys]]
        label = f"**{name or 'the model as trained'}** (chosen)" if name == chosen else (name or "the model as trained")
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in values)
                     + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the results file: docs/results/choose_scoring_<name>.md")
    parser.add_argument("--candidate", action="append", default=[], help="overrides, space-separated ('' as is)")
    parser.add_argument("--floor-slack", type=float, default=0.10, help="allowed rise of the healthy floor's p99")
    args = parser.parse_args()
    start = time.perf_counter()
    model = load_model(args.model)
    rows = {}
    for candidate in args.candidate or [""]:
        overrides = shlex.split(candidate)
        recalibrated = with_anomaly_settings(model, overrides) if overrides else model
        rows[candidate] = label_free_figures(recalibrated)
        print(markdown(rows, choose(rows, args.floor_slack)), flush=True)
    chosen = choose(rows, args.floor_slack)
    body = (f"Model `{args.model.name}`; every candidate recalibrated on the model's held-out healthy cases. Chosen: "
            f"the best worst-case AUROC of the sensitivity check over its kinds and sizes, among the candidates whose "
            f"healthy floor (residual p99) is within {args.floor_slack:.0%} of the first's and whose worst-case AUROC "
            f"is above the upper end of the first's 95% interval (otherwise the first). No test case or label "
            f"is read.\n\n" + markdown(rows, chosen) + f"\n\nChosen: `{chosen or 'the model as trained'}`\n")
    write_results(f"choose_scoring_{args.name}", f"Scoring settings chosen on healthy data ({args.name})", body,
                  configs=[args.model / "config.yaml"], minutes=(time.perf_counter() - start) / 60)


if __name__ == "__main__":
    main()
