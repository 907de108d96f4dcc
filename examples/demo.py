"""The anodiff demo: the whole unsupervised story on a fresh machine, with no download.

Run by ``make demo``: synthesise a healthy training cohort and a test cohort with
lesions, train a small DDPM on the healthy slices (CPU-sized: configs/demo.yaml),
calibrate its threshold on held-out healthy cases, then evaluate on the test
cohort beside a FLAIR intensity-threshold baseline. Each step is an ``anodiff``
command, printed before it runs, so this file doubles as a recipe to copy.

``--results`` also writes the report's tables to ``docs/results/demo.md``, its two
headline figures to ``docs/results/figures/`` and the README's results table: how
the figures the README shows are made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo.yaml"


def run(*command: str) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--results", action="store_true", help="write docs/results/demo.md and the README's table")
    args = parser.parse_args()
    anodiff = str(Path(sys.executable).with_name("anodiff"))
    out = args.out
    start = time.perf_counter()
    run(anodiff, "synth", "--out", str(out / "train"), "--cases", "8", "--seed", "1", "--spacing", "2",
        "--healthy-only", "--overwrite")
    run(anodiff, "synth", "--out", str(out / "test"), "--cases", "12", "--seed", "2", "--spacing", "2",
        "--healthy-fraction", "0.17", "--overwrite")
    steps = ["--steps", str(args.steps)] if args.steps else []
    run(anodiff, "train", "--data", str(out / "train"), "--config", str(CONFIG), "--out", str(out / "model"),
        "--overwrite", *steps)
    run(anodiff, "evaluate", "--model", str(out / "model"), "--data", str(out / "test"), "--out",
        str(out / "report"), "--overwrite")
    seconds = time.perf_counter() - start
    report = json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))
    print(f"\ndemo finished in {seconds:.0f} s ({report['seconds_per_volume']:.1f} s per test volume); "
          f"report: {out / 'report' / 'report.html'}")
    if args.results:
        write_demo_results(out, seconds)


def write_demo_results(out: Path, seconds: float) -> None:
    """docs/results/demo.md (every table of the report), its two figures, and the README's table."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from results import RESULTS, update_readme, write_results

    report = out / "report"
    figures = RESULTS / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    glioma = next(c["case"] for c in json.loads((report / "report.json").read_text(encoding="utf-8"))["cases"]
                  if c.get("kind") == "glioma")
    shutil.copy(report / "overlays" / f"{glioma}.png", figures / "demo_glioma_three_views.png")
    shutil.copy(report / "figures" / "pr.png", figures / "demo_precision_recall.png")
    md5 = hashlib.md5((out / "model" / "model.safetensors").read_bytes()).hexdigest()
    summary = (report / "summary.md").read_text(encoding="utf-8")
    sections = [f"### {part.strip()}" for part in summary.split("\n## ")[1:]
                if not part.startswith(("Figures", "Cases"))]
    body = (f"The demo's model (md5 {md5}) on its test cohort; the whole run took {seconds / 60:.1f} min.\n\n"
            + "\n\n".join(sections)
            + "\n\n![A synthetic glioma in three views](figures/demo_glioma_three_views.png)\n\n"
            "![Precision-recall curves](figures/demo_precision_recall.png)\n")
    write_results("demo", "make demo: the synthetic cohort", body, configs=[CONFIG], minutes=seconds / 60)
    update_readme("demo", "\n\n".join(sections[:2]))

if __name__ == "__main__":
    main()
