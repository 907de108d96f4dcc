"""The ``anodiff`` Typer app: one thin function per command."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from anodiff.cli.ui import fail, progress_bar, setup_logging, stderr, stdout
from rich.table import Table

from anodiff import __version__
from anodiff.errors import AnodiffError

app = typer.Typer(
    name="anodiff",
    help="Find and outline what is abnormal in brain MRI with diffusion models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"anodiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    setup_logging(verbose, quiet)


def command(func):
    """Register a command whose AnodiffErrors end as one red line and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except AnodiffError as err:
            raise fail(str(err)) from None

    return app.command()(wrapper)


@command
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the cohort to (BraTS layout).")],
    cases: Annotated[int, typer.Option("--cases", "-n", help="Number of subjects.")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same cohort.")] = 0,
    healthy_fraction: Annotated[float, typer.Option(help="Share of subjects without a lesion.")] = 1 / 3,
    healthy_only: Annotated[bool, typer.Option("--healthy-only", help="Only healthy subjects.")] = False,
    kinds: Annotated[str, typer.Option(help="Comma-separated lesion kinds to cycle through.")] =
        "glioma,wm_lesions,t1_hypo,mass",
    spacing: Annotated[float, typer.Option(help="Base voxel spacing in mm (each subject varies around it).")] = 1.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output folder.")] = False,
) -> None:
    """Write a synthetic multi-contrast brain cohort with lesions and ground truth (no download)."""
    from anodiff.data.synthetic import write_cohort

    kind_list = tuple(k.strip() for k in kinds.split(",") if k.strip())
    with progress_bar("synthesising") as progress:
        infos = write_cohort(out, cases, seed=seed, healthy_fraction=healthy_fraction, healthy_only=healthy_only,
                             kinds=kind_list, spacing_mm=spacing, overwrite=overwrite, progress=progress)
    table = Table(title=f"synthetic cohort in {out}")
    for column in ("case", "kind", "lesions", "lesion ml", "shape", "spacing mm", "axes"):
        table.add_column(column)
    for info in infos:
        table.add_row(info.id, info.kind, str(info.num_lesions), f"{info.lesion_ml:.1f}",
                      "x".join(map(str, info.shape)), "x".join(f"{s:.2f}" for s in info.spacing_mm), info.orientation)
    stdout.print(table)


@command
def inspect(
    data: Annotated[Path, typer.Argument(help="A data folder (BraTS, IXI, any NIfTI) or a datalist .json.")],
) -> None:
    """List the cases found, their modalities, geometry and labels, and what cannot be used and why."""
    from anodiff.data.cases import discover
    from anodiff.data.summary import CaseProblem, summarize

    found = discover(data)
    with progress_bar("reading", transient=True) as progress:
        results = list(summarize(found, progress=progress))
    table = Table(title=f"{len(found.cases)} case(s) in {data} (layout: {', '.join(found.layouts) or 'none'})")
    for column in ("case", "modalities", "shape", "spacing mm", "axes", "labels (voxels)", "lesion ml", "status"):
        table.add_column(column)
    problems = [r for r in results if isinstance(r, CaseProblem)]
    for r in results:
        if isinstance(r, CaseProblem):
            continue
        labels = "-" if r.label_counts is None else ", ".join(f"{k}:{v}" for k, v in r.label_counts.items()) or "none"
        table.add_row(r.id, ",".join(r.modalities), "x".join(map(str, r.shape)),
                      "x".join(f"{s:g}" for s in r.spacing_mm), r.orientation, labels,
                      "-" if r.lesion_ml is None else f"{r.lesion_ml:.1f}", r.status)
    stdout.print(table)
    counts = {s: sum(1 for r in results if not isinstance(r, CaseProblem) and r.status == s)
              for s in ("healthy", "lesion", "no label")}
    stdout.print(", ".join(f"{v} {k}" for k, v in counts.items()) + f", {len(problems)} unreadable")
    for problem in problems:
        stderr.print(f"[yellow]unusable case[/] {problem.id}: {problem.reason}", highlight=False, soft_wrap=True)
    for skipped in found.skipped:
        stderr.print(f"[yellow]skipped[/] {skipped.path}: {skipped.reason}", highlight=False, soft_wrap=True)
    if not found.cases:
        raise fail(f"{data}: no usable cases found")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
