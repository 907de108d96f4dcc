"""Anomaly-map quality, lever by lever: the old default, each lever alone, the new default, the FLAIR baseline.

One run over up to three data sets:

* ``brats``: leave one case out on a handful of labelled BraTS cases (``--brats``,
  e.g. ../shared/data/brats2015-sample), with ``configs/brats_cpu.yaml``;
* ``synth-2mm`` and ``synth-1mm``: a healthy synthetic training cohort and a test
  cohort with lesions (``anodiff synth``), with ``configs/demo.yaml``.

A lever changes one setting of the old default. Levers that only change how a
trained model scores (``anomaly.*``, ``sampler.*``) reuse that model through
``anodiff evaluate`` overrides, which recalibrate the threshold on the model's own
held-out healthy data; levers that change training train their own model. Every
figure is measured here; thresholds never see a label. Per data set the table
gives per-case and mean AUROC, AUPRC, best possible Dice and calibrated Dice, the
healthy floor (residual p99 and SSIM on held-out healthy brain), network passes
per slice and seconds per volume. Model and report folders are named by a digest
of what they depend on (:mod:`results`), so a rerun reuses exactly what matches
and an interrupted run continues. Each data set's table is written to
``docs/results/real_quality_<set>.md``.

    python benchmarks/real_quality.py --sets brats --variants 1 --out runs/real-quality
    python benchmarks/real_quality.py --sets synth-2mm --out runs/real-quality
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from results import ROOT, anodiff_command, evaluated, run, trained, write_results

from anodiff.config import config_to_dict, load_config
from anodiff.data.cases import link_cases

CONFIGS = ROOT / "configs"
FIGURES = ("auroc", "auprc", "dice_best_possible", "dice_calibrated")

# The defaults before this benchmark's levers, as overrides of today's configs.
OLD_TRAINING = ("data.normalisation=percentiles",)
# The recipes' scoring before antithetic pairs: three independent draws, at t0 50, 100 and 200.
THREE_LEVELS = ("anomaly.antithetic=false", "anomaly.t0=100", "anomaly.extra_t0=[50,200]")
HEALING = ("train.healthy_tissue=margin", "scheduler.noise=coarse")
OLD_SCORING = ("sampler.kind=ddim", "sampler.num_inference_steps=10", "anomaly.extra_t0=[]", "anomaly.antithetic=false",
               "anomaly.score=residual", "anomaly.combine=mean", "anomaly.centre=false", "anomaly.scale=false")


@dataclass(frozen=True)
class Variant:
    """A row of the table: training overrides (which model) and scoring overrides (how it is read)."""

    name: str
    training: tuple[str, ...]
    scoring: tuple[str, ...] | None  # None: the config's own scoring settings (a reused model may hold others)
    on_top: tuple[str, ...] = ()  # scoring changes made on top of ``scoring``


def with_setting(settings: tuple[str, ...], *changes: str) -> tuple[str, ...]:
    """``settings`` with each ``key=value`` of ``changes`` replacing the one of the same key."""
    keys = {c.split("=")[0] for c in changes}
    return tuple(s for s in settings if s.split("=")[0] not in keys) + changes


VARIANTS = (
    Variant("old default (DDIM-10 from t0 250, mean |residual|, percentile normalisation)", OLD_TRAINING,
            OLD_SCORING),
    Variant("new default (the config as it is)", (), None),
    Variant("lever: one-step x0 at t0 (1 pass)", OLD_TRAINING,
            with_setting(OLD_SCORING, "sampler.kind=ddim_t0", "sampler.num_inference_steps=1")),
    Variant("lever: z-scored residual (healthy statistics), mean over modalities", OLD_TRAINING,
            with_setting(OLD_SCORING, "anomaly.score=zscore")),
    Variant("lever: max over modalities (one pass, z-scored)", OLD_TRAINING,
            with_setting(OLD_SCORING, "sampler.kind=ddim_t0", "sampler.num_inference_steps=1",
                         "anomaly.score=zscore", "anomaly.combine=max")),
    Variant("lever: one-step x0 at t0 100, 250, 400 averaged (3 passes)", OLD_TRAINING,
            with_setting(OLD_SCORING, "sampler.kind=ddim_t0", "sampler.num_inference_steps=1",
                         "anomaly.extra_t0=[100,400]")),
    Variant("lever: median normalisation (retrained)", ("data.normalisation=median",), OLD_SCORING),
    Variant("lever: three levels without centring", (), None, (*THREE_LEVELS, "anomaly.centre=false")),
    Variant("lever: three levels without scaling", (), None, (*THREE_LEVELS, "anomaly.scale=false")),
    Variant("lever: new default at 96 px, trained on 48 px patches (retrained)",
            ("data.image_size=96", "train.patch_size=48"), None),
    Variant("lever: three levels' middle one only (1 pass)", (), None, (*THREE_LEVELS, "anomaly.extra_t0=[]")),
    Variant("lever: noise levels t0 100, 250, 400 (the default before three levels)", (), None,
            (*THREE_LEVELS, "anomaly.t0=250", "anomaly.extra_t0=[100,400]")),
    Variant("lever: noise levels t0 50, 150, 300", (), None,
            (*THREE_LEVELS, "anomaly.t0=150", "anomaly.extra_t0=[50,300]")),
    Variant("lever: every case trains and lends a 20% axial slab to calibration (retrained)",
            ("train.holdout=slabs", "train.val_fraction=0.2"), None),
    Variant("lever: v prediction (retrained)", ("scheduler.prediction_type=v_prediction",), None),
    Variant("lever: trained only on noise levels below 400, twice the highest scored (retrained)",
            ("scheduler.train_t_max=400",), None),
    Variant("lever: learning rate decayed to 0 along a cosine (retrained)", ("train.lr_schedule=cosine",), None),
    Variant("lever: half of each training batch mirrored left to right (retrained)", ("train.mirror=true",), None),
    Variant("lever: three levels t0 50, 100, 200, one draw each (3 passes; the default before antithetic pairs)",
            (), None, THREE_LEVELS),
    Variant("lever: three levels, two independent draws each (6 passes)", (), None,
            (*THREE_LEVELS, "anomaly.num_draws=2")),
    Variant("lever: three levels, an antithetic pair each (6 passes)", (), None,
            (*THREE_LEVELS, "anomaly.antithetic=true")),
    # What healed the tumours of other institutions (benchmarks/brats2018.py): training on all tissue away from
    # the label, coarse noise, a higher level; and that level beside t0 100, each standardised, the maximum.
    Variant("lever: margin training, coarse noise, t0 300 (retrained)", HEALING, None, ("anomaly.t0=300",)),
    Variant("lever: margin training, coarse noise, t0 300 and 100 scored apart (max, 4 passes; retrained)",
            HEALING, None, ("anomaly.t0=300", "anomaly.extra_t0=[100]", "anomaly.combine_levels=max")),
)


def brats_folds(data: Path, out: Path) -> list[tuple[str, Path, Path]]:
    """Leave one case out: (held-out case, training folder, test folder)."""
    cases = sorted(p for p in data.iterdir() if p.is_dir())
    return [(held_out.name, link_cases([c for c in cases if c != held_out], out / held_out.name / "train"),
             link_cases([held_out], out / held_out.name / "test")) for held_out in cases]


def synthetic_folds(spacing: float, out: Path) -> list[tuple[str, Path, Path]]:
    """The demo's cohorts (8 healthy training subjects, 12 test subjects) at ``spacing`` mm."""
    cohorts = (("train", 8, 1, ["--healthy-only"]), ("test", 12, 2, ["--healthy-fraction", "0.17"]))
    for part, cases, seed, extra in cohorts:
        if not (out / part / "cohort.json").exists():
            run(anodiff_command(), "synth", "--out", str(out / part), "--cases", str(cases), "--seed", str(seed),
                "--spacing", str(spacing), "--overwrite", *extra)
    return [("cohort", out / "train", out / "test")]


def scoring_settings(config: Path) -> tuple[str, ...]:
    """The config's sampler and anomaly settings as overrides, so a model trained under other ones scores as
    the config says (evaluate recalibrates for them)."""
    raw = config_to_dict(load_config(config))
    return tuple(f"{section}.{key}={json.dumps(value)}" for section in ("sampler", "anomaly")
                 for key, value in raw[section].items() if key != "threshold")


def row(report: dict, method: str) -> dict[str, float]:
    """The figures of one method in a report, with the model's healthy floor and cost."""
    m = report["methods"][method]
    floor = (report.get("healthy_floor") or {}).get("zones", {}).get("overall", {})
    return {"auroc": m["auroc_pooled"], "auprc": m["auprc_pooled"],
            "dice_best_possible": m["dice_best_possible_pooled"],
            "dice_calibrated": m["dice_calibrated_pooled"], "floor_p99": floor.get("score_p99", np.nan),
            "floor_ssim": floor.get("ssim_mean", np.nan), "passes": report["network_evals_per_slice"],
            "seconds": report["seconds_per_volume"]}


def table(name: str, rows: list[tuple[str, str, dict[str, float]]], seconds: float) -> str:
    """Markdown: per-case rows and a mean row per variant, then the baseline."""
    columns = ("AUROC", "AUPRC", "Dice best possible", "Dice calibrated", "healthy residual p99", "healthy SSIM",
               "passes/slice", "s/volume")
    keys = (*FIGURES, "floor_p99", "floor_ssim", "passes", "seconds")
    lines = [f"### {name} ({seconds / 60:.0f} min)", "", "| setting | case | " + " | ".join(columns) + " |",
             "|" + " --- |" * (len(columns) + 2)]
    fmt = lambda v: "-" if v is None or np.isnan(v) else (f"{v:.0f}" if float(v).is_integer() and v > 1 else f"{v:.3f}")  # noqa: E731
    for variant in dict.fromkeys(v for v, _, _ in rows):
        mine = [(case, figures) for v, case, figures in rows if v == variant]
        if len(mine) > 1:
            lines += [f"| {variant} | {case} | " + " | ".join(fmt(f[k]) for k in keys) + " |" for case, f in mine]
        means = {k: float(np.nanmean([f[k] for _, f in mine])) for k in keys}
        lines.append(f"| **{variant}** | mean | " + " | ".join(fmt(means[k]) for k in keys) + " |")
    return "\n".join(lines)


def benchmark(name: str, folds, config: Path, out: Path, chosen: list[int] | None = None) -> str:
    """The ``chosen`` variants (indices into VARIANTS; None: all) on every fold of one data set, variant by
    variant (a table printed after each); its table."""
    start = time.perf_counter()
    rows, baselines = [], {}
    for index, variant in enumerate(VARIANTS):
        if chosen is not None and index not in chosen:
            continue
        for case, train, test in folds:
            model = trained(config, variant.training, train, out / case)
            scoring = with_setting(variant.scoring if variant.scoring is not None else scoring_settings(config),
                                   *variant.on_top)
            report = evaluated(model, test, scoring, out / case)
            rows.append((variant.name, case, row(report, "anodiff")))
            baseline = next(m for m in report["methods"] if m != "anodiff")
            baselines[case] = row(report, baseline) | {"passes": np.nan, "seconds": np.nan, "floor_p99": np.nan,
                                                       "floor_ssim": np.nan}
        print(table(name, rows + [(baseline, c, f) for c, f in baselines.items()], time.perf_counter() - start),
              flush=True)
    return table(name, rows + [(baseline, c, f) for c, f in baselines.items()], time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/real-quality"))
    parser.add_argument("--brats", type=Path, default=ROOT.parent / "shared" / "data" / "brats2015-sample")
    parser.add_argument("--sets", nargs="+", default=["brats", "synth-2mm", "synth-1mm"],
                        choices=["brats", "synth-2mm", "synth-1mm"])
    parser.add_argument("--variants", nargs="+", type=int, help="rows to run, by their place in VARIANTS "
                        f"(0-{len(VARIANTS) - 1}; default: all)")
    parser.add_argument("--results", help="the results file's name (one data set; default: real_quality_<set>)")
    args = parser.parse_args()
    if args.results and len(args.sets) > 1:
        parser.error("--results names one data set's file: give one --sets")
    for name in args.sets:
        start = time.perf_counter()
        folder = args.out / name
        if name == "brats":
            folds, config = brats_folds(args.brats, folder), CONFIGS / "brats_cpu.yaml"
            title = f"Anomaly-map levers on the BraTS sample ({args.brats.name}), leave one case out"
        else:
            folds, config = synthetic_folds(float(name.split("-")[1][:-2]), folder), CONFIGS / "demo.yaml"
            title = f"Anomaly-map levers on the synthetic cohort at {name.split('-')[1]}"
        result = benchmark(name, folds, config, folder, args.variants)
        write_results(args.results or f"real_quality_{name}", title, result, configs=[config],
                      minutes=(time.perf_counter() - start) / 60)


if __name__ == "__main__":
    main()
