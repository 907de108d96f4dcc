"""``anodiff train`` that SIGKILLs itself at a named moment; used by tests/test_kill.py.

    python tests/killed_train.py POINT N train --data ... --out ...

POINT is one of: ``step`` (before training step N), ``checkpoint-write`` (half-way
through writing the N-th checkpoint's temporary file), ``checkpoint-rename`` (the
N-th checkpoint written but not yet renamed into place), ``calibration`` (after
training, while calibrating), ``model-folder`` (weights written, meta.json not).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anodiff.methods.anomaly.method as anomaly
import anodiff.modelfolder as modelfolder
import anodiff.training.loop as loop
import anodiff.weights as weights


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, n: int) -> None:
    calls = {"count": 0}

    def nth_checkpoint(path) -> bool:
        if Path(path).name.startswith((".checkpoint", "checkpoint")):
            calls["count"] += 1
        return calls["count"] == n and Path(path).name.startswith((".checkpoint", "checkpoint"))

    if point == "step":
        real_generator = loop.step_generator

        def step_generator(seed, step, rank=0):
            if step == n:
                die()
            return real_generator(seed, step, rank)

        loop.step_generator = step_generator
    elif point == "checkpoint-write":
        real_save = weights.save_file

        def save_file(tensors, filename, metadata=None):
            real_save(tensors, filename, metadata=metadata)
            if nth_checkpoint(filename):
                size = os.path.getsize(filename)
                with open(filename, "r+b") as handle:
                    handle.truncate(size // 2)
                die()

        weights.save_file = save_file
    elif point == "checkpoint-rename":
        real_replace = os.replace

        def replace(src, dst):
            if nth_checkpoint(dst):
                die()
            real_replace(src, dst)

        os.replace = replace
    elif point == "calibration":
        def calibrate(*args, **kwargs):
            die()

        anomaly.calibrate = calibrate
    elif point == "model-folder":
        def write_json(path, content):
            die()

        modelfolder.write_json = write_json
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    point, n, *cli = sys.argv[1:]
    install(point, int(n))
    from anodiff.cli.main import main

    sys.argv = ["anodiff", *cli]
    main()
