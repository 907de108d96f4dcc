"""The anodiff demo: the whole unsupervised story on a fresh machine, with no download.

Run by ``make demo``: synthesise a healthy training cohort and a test cohort with
lesions, train a small DDPM on the healthy slices (CPU-sized: configs/demo.yaml),
calibrate its threshold on held-out healthy cases, then evaluate on the test
cohort beside a FLAIR intensity-threshold baseline. Each step is an ``anodiff``
command, printed before it runs, so this file doubles as a recipe to copy.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def run(*command: str) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
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
        str(out / "report"))
    report = json.loads((out / "report" / "report.json").read_text())
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s "
          f"({report['seconds_per_volume']:.1f} s per test volume); report: {out / 'report' / 'report.html'}")


if __name__ == "__main__":
    main()
