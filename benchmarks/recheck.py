"""The sensitivity check of a trained anomaly model, as its meta.json holds it and as this code measures it.

    python benchmarks/recheck.py MODEL [MODEL ...]
    python benchmarks/recheck.py MODEL --sizes 30 150 --scoring anomaly.t0=300 "anomaly.extra_t0=[100]"

The same model, its calibration cases and seed: what changes between the two
columns is only the code of the check (its anomalies and their labels) and of the
scoring, so a change to either is measured on the model it was measured on before.
``--scoring`` reads the model with other settings (recalibrated on the same healthy
cases); ``--sizes LO HI`` draws every anomaly between LO and HI ml instead of the
check's strata (e.g. tumour-sized ones only). Nothing is written
to the model folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anodiff.data.anomalies as anomalies  # noqa: E402
from anodiff.evaluation.anomaly import interval  # noqa: E402
from anodiff.evaluation.report import fmt  # noqa: E402
from anodiff.methods import load_model  # noqa: E402
from anodiff.methods.anomaly.method import with_anomaly_settings  # noqa: E402


def groups(check: dict) -> dict[str, dict]:
    return {**check["kinds"], **check["sizes"], "all": check["all"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--scoring", nargs="*", default=[], help="anomaly.*/sampler.* overrides")
    parser.add_argument("--sizes", nargs=2, type=float, metavar=("LO", "HI"), help="draw sizes (ml) from this range")
    args = parser.parse_args()
    if args.sizes:
        anomalies.SIZE_STRATA_ML = (tuple(args.sizes),)
    for folder in args.models:
        model = load_model(folder)
        # Any override recalibrates on the model's calibration cases; the fpr alone changes no setting.
        again = with_anomaly_settings(model, args.scoring or [f"anomaly.fpr={model.config.anomaly.fpr}"])
        before, after = groups(model.meta["sensitivity"]), groups(again.meta["sensitivity"])
        print(f"\n{folder}: threshold {model.meta['threshold']:.4f} -> {again.meta['threshold']:.4f}\n")
        print("| anomalies | count before | AUROC before | count now | AUROC now | 95% interval now | AUPRC now |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name in after:
            old, new = before.get(name, {}), after[name]
            print(f"| {name} | {old.get('count', '-')} | {fmt(old.get('auroc'))} | {new['count']} | "
                  f"{fmt(new['auroc'])} | {interval(new.get('auroc_interval'))} | {fmt(new['auprc'])} |")


if __name__ == "__main__":
    main()
