"""``anodiff prepare`` on raw IXI volunteers: brain extraction against the brain masks given with them.

Each volunteer of ``--data`` (by default ../shared/data/ixi-t1-sample: five raw T1
scans, skull and neck on, sagittal, 2 mm, each with a ``<id>_brainmask``) is prepared
afresh with the default options; the table gives the brain's Dice against the given
mask, its volume and the seconds per stage, from each case's ``prepare.json``.
Writes ``docs/results/prepare_ixi.md``.

    python benchmarks/prepare_ixi.py --out runs/prepare-ixi
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from results import ROOT, anodiff_command, run, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ixi-t1-sample")
    parser.add_argument("--out", type=Path, default=Path("runs/prepare-ixi"))
    args = parser.parse_args()
    start = time.perf_counter()
    run(anodiff_command(), "-q", "prepare", str(args.data), "--out", str(args.out), "--overwrite")
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(args.out.glob("*/prepare/prepare.json"))]
    stages = list(records[0]["seconds"])
    lines = ["| volunteer | brain Dice against the given mask | brain ml | seconds | "
             + " | ".join(f"{s} s" for s in stages) + " |", "| --- " * (4 + len(stages)) + "|"]
    for r in records:
        lines.append(f"| {r['case']} | {r['brain'].get('dice_vs_given', float('nan')):.3f} | {r['brain']['ml']:.0f} | "
                     f"{sum(r['seconds'].values()):.1f} | " + " | ".join(f"{r['seconds'][s]:.1f}" for s in stages)
                     + " |")
    dice = [r["brain"].get("dice_vs_given", np.nan) for r in records]
    lines.append(f"| mean | {np.nanmean(dice):.3f} | | {np.mean([sum(r['seconds'].values()) for r in records]):.1f} |"
                 + " |" * len(stages))
    body = (f"{len(records)} raw volunteers of `{args.data.name}` (skull and neck on), each prepared with the "
            "default options: N4, registration to MNI152 2009a, brain extraction, 1 mm template grid. The given "
            "masks are a parcellation's brain (not CSF around it), binarised: a reference, not a manual truth.\n\n"
            + "\n".join(lines) + "\n")
    write_results("prepare_ixi", "anodiff prepare on raw IXI volunteers", body, configs=[],
                  minutes=(time.perf_counter() - start) / 60)
    print(body)


if __name__ == "__main__":
    main()
