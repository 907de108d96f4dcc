"""LDM vs DDPM at the same training budget, on the demo's synthetic cohorts, measured in one run.

Trains (or keeps a finished model of the same config and data) a pixel DDPM
(configs/demo.yaml) and a latent diffusion model (configs/ldm_demo.yaml: the same denoiser, steps and
detection settings, plus an autoencoder trained first for as many steps), then
evaluates both on the same test cohort and prints one table: Dice at the three
thresholds, AUROC, AUPRC, detect seconds per volume, network passes per slice and
training time, with the autoencoder's held-out reconstruction error (it bounds
what the LDM can see). Writes ``<out>/ldm_vs_ddpm.json`` and ``docs/results/ldm_vs_ddpm.md``.

    python benchmarks/ldm_vs_ddpm.py --out runs/ldm-vs-ddpm
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from results import ROOT, anodiff_command, evaluated, run, trained, write_results

CONFIGS = ROOT / "configs"
METHODS = {"ddpm": CONFIGS / "demo.yaml", "ldm": CONFIGS / "ldm_demo.yaml"}


def ensure_cohorts(anodiff: str, out: Path) -> None:
    """The demo's cohorts (the same commands as examples/demo.py), unless already there."""
    if not (out / "train" / "cohort.json").is_file():
        run(anodiff, "synth", "--out", str(out / "train"), "--cases", "8", "--seed", "1", "--spacing", "2",
            "--healthy-only", "--overwrite")
    if not (out / "test" / "cohort.json").is_file():
        run(anodiff, "synth", "--out", str(out / "test"), "--cases", "12", "--seed", "2", "--spacing", "2",
            "--healthy-fraction", "0.17", "--overwrite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ldm-vs-ddpm"))
    args = parser.parse_args()
    out = args.out
    start = time.perf_counter()
    ensure_cohorts(anodiff_command(), out)
    rows = {}
    for name, config in METHODS.items():
        model = trained(config, (), out / "train", out)
        report = evaluated(model, out / "test", (), out)
        meta = json.loads((model / "meta.json").read_text(encoding="utf-8"))
        rows[name] = {"report": report["methods"]["anodiff"], "baseline": report["methods"]["flair threshold"],
                      "seconds_per_volume": report["seconds_per_volume"],
                      "network_evals_per_slice": report["network_evals_per_slice"],
                      "train_seconds": meta["training"]["seconds_this_run"], "autoencoder": meta.get("autoencoder")}
    (out / "ldm_vs_ddpm.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    table = markdown(rows)
    write_results("ldm_vs_ddpm", "LDM against DDPM at the demo's budget, on the demo's cohorts", table,
                  configs=list(METHODS.values()), minutes=(time.perf_counter() - start) / 60)
    print("\n" + table)


def markdown(rows: dict) -> str:
    lines = ["| method | AUROC pooled | AUPRC pooled | Dice calibrated pooled | Dice calibrated per-volume | "
             "Dice val-best pooled | Dice best possible (bound) | network passes / slice | detect s / volume | "
             "stage-2 train s |", "| --- " * 10 + "|"]
    for name, row in rows.items():
        m = row["report"]
        lines.append(f"| {name} | {m['auroc_pooled']:.3f} | {m['auprc_pooled']:.3f} | "
                     f"{m['dice_calibrated_pooled']:.3f} | {m['dice_calibrated_per_volume_mean']:.3f} ± "
                     f"{m['dice_calibrated_per_volume_std']:.3f} | {m['dice_validation_best_pooled']:.3f} | "
                     f"{m['dice_best_possible_pooled']:.3f} | {row['network_evals_per_slice']} | "
                     f"{row['seconds_per_volume']:.2f} | {row['train_seconds']:.0f} |")
    base = next(iter(rows.values()))["baseline"]
    lines.append(f"| FLAIR threshold | {base['auroc_pooled']:.3f} | {base['auprc_pooled']:.3f} | "
                 f"{base['dice_calibrated_pooled']:.3f} | {base['dice_calibrated_per_volume_mean']:.3f} ± "
                 f"{base['dice_calibrated_per_volume_std']:.3f} | {base['dice_validation_best_pooled']:.3f} | "
                 f"{base['dice_best_possible_pooled']:.3f} | 0 | - | - |")
    ae = rows.get("ldm", {}).get("autoencoder") or {}
    if "heldout_l1_brain" in ae:
        lines += ["", f"Autoencoder reconstruction error on held-out healthy slices (intensities in [0, 1]): "
                      f"mean L1 {ae['heldout_l1_brain']:.4f} inside the brain, {ae['heldout_l1']:.4f} over the "
                      f"whole slice ({ae['heldout_inputs']} slices)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
