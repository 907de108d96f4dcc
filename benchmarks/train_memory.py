"""Peak training memory against the number of cases, with slices in memory and on disk.

Synthesises a healthy cohort once (``--cases`` largest), then for each number of
cases and each ``data.slice_store`` trains a small network on 128 px slices for a
few steps in a child process and reads its peak resident memory (``ru_maxrss``).
Prints one table and the growth per added case; writes ``<out>/train_memory.md``.

    python benchmarks/train_memory.py --out bench-output --cases 20 60
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def cohort(out: Path, size: int, spacing: float) -> Path:
    folder = out / f"memory-cohort-{size}"
    if not (folder / "cohort.json").is_file():
        subprocess.run([sys.executable, "-m", "anodiff.cli", "synth", "--out", str(folder), "--cases", str(size),
                        "--healthy-only", "--spacing", str(spacing), "--overwrite"], check=True,
                       stdout=subprocess.DEVNULL)
    return folder


def subset(data: Path, count: int, out: Path) -> Path:
    """A folder of links to the first ``count`` cases of ``data``."""
    folder = out / f"memory-subset-{count}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for case in sorted(p for p in data.iterdir() if p.is_dir())[:count]:
        (folder / case.name).symlink_to(case.resolve(), target_is_directory=True)
    return folder


# Runs the CLI in this child and writes the child's own peak RSS (kB) to the file named by argv[1].
MEASURED = """
import resource, sys
from pathlib import Path
from anodiff.cli.main import main
report, sys.argv = sys.argv[1], ["anodiff", *sys.argv[2:]]
try:
    main()
finally:
    Path(report).write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def peak_rss_mb(data: Path, store: str, out: Path, steps: int) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one training run in a child process."""
    model, report = out / f"memory-model-{store}", out / "memory-peak.txt"
    shutil.rmtree(model, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", MEASURED, str(report), "-q", "train", "--data", str(data),
                    "--config", str(TINY), "--out", str(model), "--device", "cpu", "--steps", str(steps),
                    "data.image_size=128", f"data.slice_store={store}", "train.val_fraction=0.1"],
                   check=True, stdout=subprocess.DEVNULL)
    return int(report.read_text(encoding="utf-8")) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    parser.add_argument("--cases", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = cohort(args.out, max(args.cases), args.spacing)
    rows = []
    for count in sorted(args.cases):
        for store in ("memory", "disk"):
            rss, seconds = peak_rss_mb(subset(data, count, args.out), store, args.out, args.steps)
            rows.append((count, store, rss, seconds))
            print(f"{count} cases, slices in {store}: peak RSS {rss:.0f} MB ({seconds:.0f} s)", flush=True)
    lines = ["| cases | slices in | peak RSS MB | seconds |", "| --- | --- | --- | --- |"]
    lines += [f"| {c} | {s} | {r:.0f} | {t:.0f} |" for c, s, r, t in sorted(rows)]
    low, high = min(args.cases), max(args.cases)
    for store in ("memory", "disk"):
        peaks = {c: r for c, s, r, _ in rows if s == store}
        lines.append(f"\n{store}: {(peaks[high] - peaks[low]) / (high - low):.1f} MB more peak RSS per added case")
    text = "\n".join(lines)
    print(text)
    (args.out / "train_memory.md").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
