"""An ``anodiff`` command that SIGKILLs itself at a named moment; used by tests/test_faults.py.

    python tests/killed_command.py POINT N prepare|detect|evaluate ...

POINT is one of:

* ``bias``: at the N-th bias-field correction (``anodiff prepare``);
* ``staging-rename``: just before the N-th prepared case's staging folder is renamed into place;
* ``write-volume``: half-way through writing the N-th image file (its temporary half full);
* ``replace``: right after the N-th image file is renamed into place (the next one not yet written);
* ``network``: at the N-th volume through the network (``detect``, ``evaluate``);
* ``figure``: half-way through writing the N-th PNG figure;
* ``report-json``: report.json written, just before it is renamed into place;
* ``calibrate``: at the N-th recalibration (``evaluate`` with anomaly.* settings).
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys

import matplotlib.figure

import anodiff.io as io
import anodiff.methods.anomaly.method as anomaly
import anodiff.methods.anomaly.scoring as scoring
import anodiff.prepare.brain as brain


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def on_nth_call(owner, name: str, n: int, *, before: bool = True, truncate=None) -> None:
    """Replace ``owner.name`` by a wrapper that dies at its N-th call: before it runs, or after it ran (having
    cut the file ``truncate(*args)`` names to half its length)."""
    real = getattr(owner, name)
    calls = {"count": 0}

    def wrapper(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == n and before:
            die()
        result = real(*args, **kwargs)
        if calls["count"] == n:
            if truncate is not None:
                path = truncate(*args)
                os.truncate(path, os.path.getsize(path) // 2)
            die()
        return result

    setattr(owner, name, wrapper)


def replace_dies(n: int, wanted) -> None:
    """``os.replace`` dies after (or, for report.json, before) the N-th rename onto a path ``wanted`` accepts."""
    real = os.replace
    calls = {"count": 0}

    def replace(src, dst, *args, **kwargs):
        if wanted(str(dst)):
            calls["count"] += 1
            if calls["count"] == n and str(dst).endswith("report.json"):
                die()
            real(src, dst, *args, **kwargs)
            if calls["count"] == n:
                die()
            return None
        return real(src, dst, *args, **kwargs)

    os.replace = replace


def staging_rename_dies(n: int) -> None:
    real = pathlib.Path.rename
    calls = {"count": 0}

    def rename(self, target):
        if self.name.endswith(".partial"):
            calls["count"] += 1
            if calls["count"] == n:
                die()
        return real(self, target)

    pathlib.Path.rename = rename


def install(point: str, n: int) -> None:
    if point == "bias":
        on_nth_call(brain, "correct_bias", n)
    elif point == "staging-rename":
        staging_rename_dies(n)
    elif point == "write-volume":
        on_nth_call(io, "_write_nifti", n, before=False, truncate=lambda data, path, like: path)
    elif point == "replace":
        replace_dies(n, lambda dst: dst.endswith(".nii.gz"))
    elif point == "network":
        on_nth_call(scoring, "reconstruct_volume", n)
    elif point == "figure":
        on_nth_call(matplotlib.figure.Figure, "savefig", n, before=False, truncate=lambda figure, path: path)
    elif point == "report-json":
        replace_dies(n, lambda dst: dst.endswith("report.json"))
    elif point == "calibrate":
        on_nth_call(anomaly, "calibrate", n)
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    point, n, *cli = sys.argv[1:]
    install(point, int(n))
    from anodiff.cli.main import main

    sys.argv = ["anodiff", *cli]
    main()
