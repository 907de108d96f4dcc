"""The ``anodiff`` Typer app: one thin function per command."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from anodiff import __version__
from anodiff.cli.ui import end_with_failures, exit_code, fail, print_report, progress_bar, setup_logging, stderr, stdout
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
    raw: Annotated[bool, typer.Option("--raw", help="Raw scans: head, neck, a pose and grid per modality, "
                                                    "bias (t1/t2/flair; the brain mask beside them).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output folder.")] = False,
) -> None:
    """Write a synthetic multi-contrast brain cohort with lesions and ground truth (no download)."""
    from anodiff.data.cohort import write_cohort

    kind_list = tuple(k.strip() for k in kinds.split(",") if k.strip())
    with progress_bar("synthesising") as progress:
        infos = write_cohort(out, cases, seed=seed, healthy_fraction=healthy_fraction, healthy_only=healthy_only,
                             kinds=kind_list, spacing_mm=spacing, raw=raw, overwrite=overwrite, progress=progress)
    table = Table(title=f"synthetic cohort in {out}")
    for column in ("case", "kind", "lesions", "lesion ml", "shape", "spacing mm", "axes"):
        table.add_column(column)
    for info in infos:
        table.add_row(info.id, info.kind, str(info.num_lesions), f"{info.lesion_ml:.1f}",
                      "x".join(map(str, info.shape)), "x".join(f"{s:.2f}" for s in info.spacing_mm), info.orientation)
    stdout.print(table)


@command
def inspect(
    data: Annotated[Path, typer.Argument(help="A data folder (BraTS, IXI, any NIfTI), a datalist .json, or a "
                                              "model folder (its card is printed).")],
) -> None:
    """List the cases found, their modalities, geometry and labels, and what cannot be used and why; for a
    model folder, print its card: what it was trained on, how, its checks and its limits."""
    from anodiff.data.cases import discover
    from anodiff.data.summary import CaseProblem, summarize
    from anodiff.modelfolder import holds_model

    if holds_model(data):
        from anodiff.methods import model_card

        stdout.print(model_card(data).rstrip(), markup=False, highlight=False, soft_wrap=True)
        return
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


@command
def prepare(
    raw: Annotated[list[Path], typer.Argument(help="Raw scan file(s), case folder(s) or a data folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the prepared cases (BraTS layout; for BIDS "
                                                          "input, a BIDS derivatives dataset).")],
    reference: Annotated[str | None, typer.Option(
        help="Modality the others and the template are aligned to (default: t1, else the first).")] = None,
    grid: Annotated[str, typer.Option(help="template: resample onto the template's grid; reference: keep "
                                           "the raw reference scan's own orientation and field of view.")]
    = "template",
    spacing: Annotated[float, typer.Option(help="Isotropic voxel spacing of the prepared grid, mm.")] = 1.0,
    template: Annotated[str, typer.Option(help="Template to register to (shipped, no download).")] = "mni152",
    bias: Annotated[bool, typer.Option("--bias/--no-bias", help="N4 bias-field correction.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the registrations' point samples.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace cases already prepared.")] = False,
) -> None:
    """Bias-correct, co-register, align to the template and skull-strip raw scans, keeping the transforms."""
    from anodiff.inference.cases import resolve_cases
    from anodiff.prepare import Options, prepare_cases, read_record

    if template != "mni152":
        raise fail(f"unknown template '{template}'; the shipped one is mni152 (MNI152 2009a, from nilearn)")
    options = Options(reference=reference, grid=grid, spacing_mm=spacing, bias=bias, seed=seed)
    cases = resolve_cases(raw, {})
    with progress_bar("preparing") as progress:
        outcomes = prepare_cases(cases, out, options, overwrite=overwrite, progress=progress)
    table = Table(title=f"{len(cases)} case(s) prepared into {out}")
    for column in ("case", "reference", "skull-stripped", "brain ml", "brain Dice vs given", "seconds", "status"):
        table.add_column(column)
    for o in outcomes:
        if o.folder is not None:
            record = read_record(o.folder)
            dice = record["brain"].get("dice_vs_given")
            table.add_row(o.case, record["reference"], "yes" if record["skull_stripped"] else "no",
                          f"{record['brain']['ml']:.0f}", "-" if dice is None else f"{dice:.3f}",
                          f"{sum(record['seconds'].values()):.1f}", "kept (prepared before)" if o.kept else "prepared")
    stdout.print(table)
    end_with_failures([(o.case, o.error) for o in outcomes if o.error], len(outcomes), "not prepared",
                      exit_code([o for o in outcomes if o.error]))


def _config(config: Path | None, overrides: list[str] | None, steps: int | None):
    from dataclasses import replace

    from anodiff.methods import load_recipe

    run = load_recipe(config, overrides or [])
    if steps is not None:
        if steps < 1:
            raise fail("--steps must be at least 1")
        run = replace(run, train=replace(run.train, num_steps=steps),
                      autoencoder=replace(run.autoencoder, num_steps=steps))
    return run


@command
def train(
    data: Annotated[Path, typer.Option("--data", "-d", help="Training data folder or datalist (healthy slices used).")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Recipe YAML (default: built-in DDPM 2D).")]
    = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Model folder (default runs/<config name>).")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps of each stage, whatever the config says.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in --out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Train afresh into an existing model folder.")]
    = False,
    overrides: Annotated[list[str] | None, typer.Argument(help="Config overrides, e.g. train.lr=1e-4.")] = None,
) -> None:
    """Train a diffusion model on healthy data, calibrate its threshold, write a model folder.

    With a segdiff recipe (model.kind: segdiff) it trains the supervised mode instead: SegDiff on the labelled
    cases of --data, and a plain UNet on the same batches for comparison.

    Multi-GPU or multi-node: start it with torchrun (`torchrun --nproc-per-node 4 -m anodiff.cli train ...`);
    each process trains on its share of the cases, and rank 0 writes the model folder.
    """
    from anodiff import distributed, jobs
    from anodiff.methods import method_for
    from anodiff.modelfolder import check_trainable, discard_training_state

    run = _config(config, overrides, steps)
    out = out or Path("runs") / (config.stem if config else "ddpm2d")
    chosen = distributed.pick_device(device)
    if distributed.launched():
        chosen = distributed.init_from_env(chosen)
    try:
        if distributed.is_main():
            if out.exists() and any(out.iterdir()) and not (resume or overwrite):
                raise fail(f"{out}: model folder exists; pass --resume to continue or --overwrite to start again")
            check_trainable(out)
            if overwrite and not resume:
                discard_training_state(out)
        distributed.barrier()
        if not distributed.is_main():  # one voice: the other ranks only warn
            logging.getLogger("anodiff").setLevel(logging.WARNING)
        with progress_bar("training", disable=not distributed.is_main()) as progress:
            model = jobs.train(data, run, out, device=chosen, resume=resume, progress=progress)
    finally:
        distributed.shutdown()
    if model is not None:
        method = method_for(run.model.kind)
        stdout.print(f"{method.kind} model written to {out} ({method.describe(model)})")


@command
def detect(
    inputs: Annotated[list[Path] | None, typer.Argument(help="Scan file(s), case folder(s) or a data folder.")]
    = None,
    model: Annotated[Path, typer.Option("--model", "-m", help="Model folder from `anodiff train`.")] = Path(
        "runs/ddpm2d"),
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Mask file (one case) or output folder.")] = None,
    map_out: Annotated[Path | None, typer.Option(
        "--map", help="Anomaly map, or a segdiff model's fused probability (one case).")] = None,
    uncertainty: Annotated[Path | None, typer.Option(
        help="segdiff: uncertainty map across the samples (one case).")] = None,
    samples: Annotated[int | None, typer.Option(
        help="segdiff: masks drawn and fused (default: the model's segmentation.samples).", min=1)] = None,
    flair: Annotated[Path | None, typer.Option(help="FLAIR scan of one case.")] = None,
    t1: Annotated[Path | None, typer.Option(help="T1 scan of one case.")] = None,
    t1ce: Annotated[Path | None, typer.Option(help="T1 contrast-enhanced scan of one case.")] = None,
    t2: Annotated[Path | None, typer.Option(help="T2 scan of one case.")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="Override the calibrated threshold (segdiff: the one on the fused probability).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted batch: keep the cases whose outputs all exist.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the noise draws (same seed, same mask).")] = 0,
    runtime: Annotated[str, typer.Option(
        help="torch, or onnx: the denoiser from the folder's model.onnx (`anodiff export`; CPU; the onnx "
             "extra).")] = "torch",
) -> None:
    """Write an anomaly mask (uint8) and optionally a map (float32) on each input's own grid.

    A segdiff model writes its fused segmentation instead (uint8: 0, or the 1-based index of the innermost
    region found), and optionally the fused probability (--map) and the uncertainty (--uncertainty); with
    several regions, one map per region (<name>_<region>).
    """
    from anodiff import distributed
    from anodiff.data.bids import derivative_path
    from anodiff.inference.cases import resolve_cases
    from anodiff.jobs import describe_derivatives, detect_cases
    from anodiff.methods import load_model
    from anodiff.runtime import with_runtime

    per_modality = {k: v for k, v in {"flair": flair, "t1": t1, "t1ce": t1ce, "t2": t2}.items() if v}
    if not inputs and not per_modality:
        raise fail("give a scan, a case folder, a data folder, or --flair/--t1/--t1ce/--t2")
    chosen = distributed.pick_device(device)
    if distributed.launched():  # torchrun: each rank detects every N-th case, rank 0 reports them all
        chosen = distributed.init_from_env(chosen)
    loaded = with_runtime(load_model(model, device=chosen), runtime)
    cases = resolve_cases(inputs or [], per_modality)
    if out is None:
        raise fail("--out is required (a mask file for one case, a folder for several)")
    single = len(cases) == 1 and out.name.endswith((".nii", ".nii.gz", ".mha", ".nrrd"))
    if not single and (map_out is not None or uncertainty is not None):
        raise fail("--map and --uncertainty name one file; with several cases, maps are written beside the masks "
                   "in --out")
    method = loaded.method

    def outputs(case):
        if single:
            return {"mask": out, "map": map_out, "uncertainty": uncertainty}
        if case.entities:  # BIDS in, BIDS derivatives out: sub-01/ses-1/anat/sub-01_ses-1_desc-anomaly_mask.nii.gz
            return {key: derivative_path(out, case.entities, method.output_desc, key) for key in
                    ("mask", *method.outputs)}
        return {"mask": out / f"{case.id}_mask.nii.gz",
                **{key: out / f"{case.id}_{key}.nii.gz" for key in method.outputs}}

    with progress_bar(method.activity, disable=not distributed.is_main()) as progress:
        outcomes = detect_cases(loaded, distributed.shard(cases), outputs, threshold=threshold,
                                overwrite=overwrite, resume=resume, seed=seed, samples=samples,
                                progress=progress)
    if not single and distributed.is_main():
        describe_derivatives(out, cases)
    order = {case.id: index for index, case in enumerate(cases)}
    outcomes = sorted((o for part in distributed.gather(outcomes) for o in part), key=lambda o: order[o.case_id])
    failures = [o for o in outcomes if o.error]
    main = distributed.is_main()
    distributed.shutdown()
    code = exit_code(failures)
    if not main:
        raise typer.Exit(code)
    for o in outcomes:
        if o.kept:
            stdout.print(f"{o.case_id}: kept, its outputs exist ({', '.join(str(p) for p in o.written)})")
        elif not o.error:
            stdout.print(f"{o.case_id}: {', '.join(str(p) for p in o.written)} ({o.seconds:.1f} s)")
    end_with_failures([(o.case_id, o.error) for o in failures], len(outcomes), "failed", code)


@command
def export(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model folder from `anodiff train`.")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="ONNX file (default: MODEL/model.onnx, what `detect --runtime onnx` reads).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
) -> None:
    """Export the model's denoiser to ONNX (ONNX Runtime, OpenVINO), checked against the torch network; the file
    records the weights it came from, so a retrained model's stale export is refused."""
    from anodiff.methods import load_model
    from anodiff.runtime import ONNX_FILE
    from anodiff.runtime import export as export_onnx

    target = out or model / ONNX_FILE
    if target.exists() and not overwrite:
        raise fail(f"{target} exists (pass --overwrite to replace it)")
    difference = export_onnx(load_model(model, device="cpu"), target)
    stdout.print(f"{target}: the denoiser of {model}, within {difference:.1e} of the torch network")


@command
def evaluate(
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled test data (folder or datalist).")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model folder from `anodiff train`.")] = Path(
        "runs/ddpm2d"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("report"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the noise draws.")] = 0,
    samples: Annotated[int | None, typer.Option(
        help="segdiff: masks drawn and fused (default: the model's segmentation.samples).", min=1)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a report folder written before.")]
    = False,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="anomaly.* or sampler.* settings to try (e.g. anomaly.t0=400); the threshold is recalibrated. "
             "segdiff: sampler.* only.")]
    = None,
) -> None:
    """Dice (three named thresholds), AUROC and AUPRC beside a FLAIR intensity-threshold baseline.

    For a segdiff model: Dice, HD95, AUROC and AUPRC per region for SegDiff (1 and N samples) beside its UNet
    reference, Dice against the number of samples fused, and the uncertainty on, inside and outside lesion borders.
    """
    from anodiff.distributed import pick_device
    from anodiff.jobs import evaluate as evaluate_model
    from anodiff.methods import load_model

    loaded = load_model(model, device=pick_device(device))
    with progress_bar("evaluating") as progress:
        report = evaluate_model(loaded, data, out, seed=seed, samples=samples, overrides=overrides or [],
                                overwrite=overwrite, progress=progress)
    print_report(report)
    stdout.print(f"report: {out / 'report.html'}, {out / 'summary.md'}, {out / 'report.json'}, "
                 f"{out / 'per_case.csv'}, {out / 'figures'}/, {out / 'overlays'}/")


@command
def report(
    folder: Annotated[Path, typer.Argument(help="Report folder written by `anodiff evaluate`.")],
) -> None:
    """Re-render a report from its report.json alone: curves, summary.md, per_case.csv and report.html.

    No network runs; the per-case figures already in overlays/ are kept and embedded.
    """
    from anodiff.jobs import rerender

    print_report(rerender(folder))
    stdout.print(f"report: {folder / 'report.html'}, {folder / 'summary.md'}, {folder / 'figures'}/")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
