"""Whether two checkouts of anodiff train the same tiny models and write the same masks and maps.

For a change that should not change behaviour (a refactor): each checkout, on
the same synthetic cohort, trains the tiny model of every method kind (ddpm, ldm,
segdiff; the recipes of tests/test_contract.py), detects every case, and every
weight tensor, mask and map is compared bit for bit. Prints one line per kind.

    python benchmarks/same_outputs.py --before ../anodiff-old --after . --out runs/same-outputs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import SEGDIFF_TINY, TINY, TINY_LDM  # noqa: E402  (the tiny recipes of the tests)

KINDS = {"ddpm": (TINY, []), "ldm": (TINY, TINY_LDM), "segdiff": (SEGDIFF_TINY, [])}


def anodiff(checkout: Path, *args: str) -> None:
    """Run the CLI of ``checkout`` (its source first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    subprocess.run([sys.executable, "-m", "anodiff.cli", "-q", *args], check=True, env=env, cwd=checkout)


def run(checkout: Path, cohort: Path, out: Path) -> None:
    """Train (where not trained yet) and detect (masks and maps, side by side) with ``checkout``."""
    for kind, (config, overrides) in KINDS.items():
        if not (out / kind / "meta.json").is_file():
            anodiff(checkout, "train", "--data", str(cohort), "--config", str(config), "--out", str(out / kind),
                    "--device", "cpu", "--overwrite", *overrides)
        if not (out / f"{kind}-outputs").is_dir():
            anodiff(checkout, "detect", str(cohort), "--model", str(out / kind), "--out",
                    str(out / f"{kind}-outputs"), "--device", "cpu")


def same_tensors(a: Path, b: Path) -> bool:
    """Every tensor equal (a file's metadata may differ: stage 1 records its run's seconds)."""
    first, second = load_file(str(a)), load_file(str(b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def compare(before: Path, after: Path, kind: str) -> str:
    # The trained weights (a checkpoint also records the run's paths, so it differs between folders anyway).
    weights = sorted(p.name for p in (before / kind).glob("*.safetensors") if p.name != "checkpoint.safetensors")
    same_weights = all(same_tensors(before / kind / n, after / kind / n) for n in weights)
    volumes = sorted(p.relative_to(before) for p in before.glob(f"{kind}-outputs/*.nii.gz"))
    differ = [str(v) for v in volumes if not np.array_equal(np.asanyarray(nib.load(before / v).dataobj),
                                                              np.asanyarray(nib.load(after / v).dataobj))]
    return (f"{kind}: weights {'identical' if same_weights else 'DIFFER'} ({', '.join(weights)}); "
            f"{len(volumes) - len(differ)} of {len(volumes)} masks and maps identical" + (f"; differ: {differ}"
                                                                                          if differ else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout before the change")
    parser.add_argument("--after", type=Path, default=ROOT, help="the checkout after it (default: this one)")
    parser.add_argument("--out", type=Path, default=Path("runs/same-outputs"))
    args = parser.parse_args()
    out = args.out.resolve()
    cohort = out / "cohort"
    if not cohort.is_dir():
        anodiff(args.after, "synth", "--out", str(cohort), "--cases", "6", "--seed", "0", "--spacing", "4")
    for name, checkout in (("before", args.before), ("after", args.after)):
        run(checkout, cohort, out / name)
    for kind in KINDS:
        print(compare(out / "before", out / "after", kind))


if __name__ == "__main__":
    main()
