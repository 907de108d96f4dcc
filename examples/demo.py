"""The anodiff demo: everything from a fresh machine, with no download.

Run by ``make demo``. Each step is an ``anodiff`` command, printed before it
runs, so this file doubles as a recipe to copy.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run(*command: str) -> None:
    print(f"\n$ {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--cases", type=int, default=8)
    args = parser.parse_args()
    anodiff = str(Path(sys.executable).with_name("anodiff"))
    cohort = args.out / "cohort"
    start = time.perf_counter()
    run(anodiff, "synth", "--out", str(cohort), "--cases", str(args.cases), "--seed", "0", "--spacing", "2",
        "--overwrite")
    run(anodiff, "inspect", str(cohort))
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; cohort in {cohort}")


if __name__ == "__main__":
    main()
