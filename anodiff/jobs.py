"""The jobs of anodiff as the CLI runs them: train, detect, evaluate, re-render a report. Thin: each dispatches through
the method table (:mod:`anodiff.methods`) and adds only what every method shares: the model folder's life,
batches of cases with per-case isolation, output files, the report on disk.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from anodiff import __version__, distributed
from anodiff.config import RunConfig
from anodiff.data import bids
from anodiff.data.cases import Case, discover
from anodiff.errors import AnodiffError, ConfigError, DataError
from anodiff.evaluation.report import Report
from anodiff.figures import redraw_case_figures
from anodiff.inference.cases import match_modalities
from anodiff.inference.prediction import Prediction
from anodiff.io import Volume, read_volume, strip_image_suffix, write_volume
from anodiff.methods import kinds_where, load_model, method_for, method_of_report
from anodiff.modelfolder import TrainedModel
from anodiff.outputs import fresh_folder, is_marked, write_json
from anodiff.prepare import Options, prepare_case, prepare_cases, read_options, reference_of, to_raw_grid
from anodiff.progress import Progress, staged

log = logging.getLogger(__name__)


def train(data: Path, config: RunConfig, out: Path, *, device: torch.device, resume: bool = False,
          progress: Progress | None = None) -> TrainedModel | None:
    """Train the config's method on ``data`` into the model folder ``out``; returns the model as loaded from
    disk (None on the ranks other than 0 under torchrun, which only train)."""
    method_for(config.model.kind).train(data, config, out, device=device, resume=resume, progress=progress)
    return load_model(out, device=device) if distributed.is_main() else None


@dataclass(frozen=True)
class DetectOutcome:
    case_id: str
    written: list[Path]
    error: str | None = None
    seconds: float = 0.0
    timings: dict | None = None
    unexpected: bool = False  # the error is a bug, not bad input
    kept: bool = False  # resumed: the outputs were all there already


Outputs = Callable[[Case], dict[str, Path | None]]


def detect_cases(model: TrainedModel, cases: list[Case], outputs: Outputs, *, threshold: float | None = None,
                 overwrite: bool = False, resume: bool = False, seed: int = 0, samples: int | None = None,
                 progress: Progress | None = None) -> list[DetectOutcome]:
    """Predict every case and write its outputs; a failing case is reported and the others still run.

    ``outputs(case)`` gives the paths to write, by name: ``mask`` (required) and
    the method's maps (``map``; ``uncertainty`` for segdiff), None for not wanted.
    A map with one channel per region goes to one file per region
    (``<name>_<region>``). Nothing is written for a failed case; existing files are
    kept unless ``overwrite``. With ``resume`` (an interrupted batch run again), a
    case whose outputs all exist is kept as it is, and one with only some of them
    is detected again, its partial outputs replaced.
    """
    method = model.method
    method.check_samples(model, samples, kinds_where(lambda m: m.draws_samples))
    chosen = method.threshold(model, threshold)
    outcomes = []
    for index, case in enumerate(cases):
        outcomes.append(detect_case(model, case, outputs, threshold=chosen, overwrite=overwrite, resume=resume,
                                    seed=seed, samples=samples))
        if progress is not None:
            progress(index + 1, len(cases), case.id)
    return outcomes


def detect_case(model: TrainedModel, case: Case, outputs: Outputs, *, threshold: float, overwrite: bool,
                seed: int, samples: int | None, resume: bool = False) -> DetectOutcome:
    """One case of :func:`detect_cases`: every error becomes the outcome's one line, and no half-made case stays."""
    clock = time.perf_counter()
    written: list[Path] = []
    new_files: list[Path] = []
    try:
        targets = output_files(outputs(case), model)
        if resume and all(t.exists() for t in targets.values()):
            return DetectOutcome(case.id, list(targets.values()), kept=True)
        overwrite = overwrite or resume  # resumed: a case left incomplete is done again
        new_files = [t for t in targets.values() if not t.exists()]
        case = match_modalities(case, model.modalities)
        check_targets(targets, case, overwrite=overwrite)
        arrays, like, timings = predict_arrays(model, case, threshold=threshold, samples=samples, seed=seed)
        writing = time.perf_counter()
        for name, target in targets.items():
            dtype = np.uint8 if name == "mask" else np.float32
            written.append(write_volume(arrays[name], target, like=like, dtype=dtype, overwrite=overwrite))
        if case.entities:  # a BIDS case: each output gets its JSON sidecar
            written += [write_sidecar(target, name, case, model, threshold) for name, target in targets.items()]
        timings = {**timings, "write_s": time.perf_counter() - writing}
        return DetectOutcome(case.id, written, seconds=time.perf_counter() - clock, timings=timings)
    except Exception as err:  # one bad case must not stop a batch of hundreds
        unexpected = not isinstance(err, AnodiffError)
        message = str(err)
        if unexpected:
            log.debug("case %s failed", case.id, exc_info=True)
            message = f"unexpected {type(err).__name__}: {' '.join(message.split())} (run with -v for details)"
        for path in written:  # no half-made case: a mask without the maps it was asked with
            if path in new_files:
                path.unlink(missing_ok=True)
        return DetectOutcome(case.id, [], error=message, unexpected=unexpected)


def write_sidecar(target: Path, name: str, case: Case, model: TrainedModel, threshold: float) -> Path:
    """The BIDS sidecar of one output: what it is, the scans it came from, the model and threshold that made it."""
    what = "binary mask (1: above the threshold)" if name == "mask" else f"float map ({name})"
    sidecar = bids.sidecar_path(target)
    write_json(sidecar, {"Description": f"anodiff {model.method.kind}: {what}",
                         "Sources": [bids.source_uri(p) for p in case.images.values()],
                         "Model": str(model.folder.resolve()), "ModelKind": model.method.kind,
                         "Threshold": threshold, "Modalities": list(model.modalities),
                         "GeneratedBy": [{"Name": "anodiff", "Version": __version__}]})
    return sidecar


def describe_derivatives(out: Path, cases: list[Case]) -> None:
    """When BIDS cases were detected into ``out``: its description and ``.bidsignore`` (the maps, which no BIDS
    suffix names); see :func:`anodiff.data.bids.describe`."""
    bids.describe(out, cases, __version__, "masks and maps from diffusion models of brain MRI",
                  bids.IGNORED_OUTPUTS)


def predict_arrays(model: TrainedModel, case: Case, *, threshold: float, samples: int | None,
                   seed: int) -> tuple[dict[str, np.ndarray], Volume, dict[str, float]]:
    """The output arrays of one case, the volume whose grid they lie on, and the seconds spent.

    A model trained on prepared data (its meta.json's ``preparation``) prepares a
    raw case the same way first, predicts on the prepared grid and carries the
    arrays back onto the raw reference scan's own grid (a mask by nearest
    neighbour, a map linearly). A case that is itself prepared (it has its
    ``<id>_brain`` mask) is predicted as it is.
    """
    method = model.method
    generator = torch.Generator().manual_seed(seed)
    options = preparation_of(model)
    if options is None or case.brain is not None:
        result = method.predict(model, case, threshold=threshold, samples=samples, generator=generator)
        return output_arrays(result, model), result.reference, result.timings
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="anodiff-prepare-") as tmp:
        # In the BraTS layout whatever the input's: a folder of its own that discover reads as one case.
        folder = prepare_case(replace(case, entities=()), Path(tmp), options)
        prepared = match_modalities(discover(folder).cases[0], model.modalities)
        prepare_s = time.perf_counter() - clock
        result = method.predict(model, prepared, threshold=threshold, samples=samples, generator=generator)
        arrays = {name: to_raw_grid(values, folder, label=name == "mask").data
                  for name, values in output_arrays(result, model).items()}
    like = read_volume(case.images[reference_of(case, options)])
    return arrays, like, {"prepare_s": prepare_s, **result.timings}


def preparation_of(model: TrainedModel) -> Options | None:
    """How the model's training data were prepared (None: they were not)."""
    preparation = model.meta.get("preparation")
    return Options(**preparation["options"]) if preparation else None


def check_targets(targets: dict[str, Path], case: Case, *, overwrite: bool) -> None:
    """Refuse an output that is one of the case's inputs, or that exists without ``overwrite``."""
    inputs = {p.resolve() for p in case.images.values()}
    for target in targets.values():
        if target.resolve() in inputs:
            raise DataError(f"{target}: output path equals an input; choose another --out")
        if target.exists() and not overwrite:
            raise DataError(f"{target}: already exists (pass --overwrite to replace it)")


def output_files(wanted: dict[str, Path | None], model: TrainedModel) -> dict[str, Path]:
    """The files one case writes: ``wanted`` less the unwanted, and a file per channel of a multi-channel map."""
    method = model.method
    channels = method.output_channels(model)
    files = {}
    for name, path in wanted.items():
        if path is None:
            continue
        if name != "mask" and name not in method.outputs:
            offered = kinds_where(lambda m, name=name: name in m.outputs)
            raise DataError(f"{model.folder}: a {method.kind} model has no {name} map; --{name} is for "
                            f"{' and '.join(offered)} models")
        if name != "mask" and channels:
            suffix = path.name[len(strip_image_suffix(path)):]
            for channel in channels:
                files[f"{name}_{channel}"] = path.with_name(f"{strip_image_suffix(path)}_{channel}{suffix}")
        else:
            files[name] = path
    return files


def output_arrays(result: Prediction, model: TrainedModel) -> dict[str, np.ndarray]:
    """The arrays of a prediction by output file name (see :func:`output_files`)."""
    method = model.method
    channels = method.output_channels(model)
    arrays = {"mask": result.mask}
    for name, key in method.outputs.items():
        values = result.maps[key]
        if channels:
            arrays |= {f"{name}_{channel}": v for channel, v in zip(channels, values)}
        else:
            arrays[name] = values[0] if values.ndim == 4 else values
    return arrays


def evaluate(model: TrainedModel, data: Path, out: Path, *, seed: int = 0, samples: int | None = None,
             overrides: list[str] | None = None, overwrite: bool = False,
             progress: Progress | None = None) -> Report:
    """Evaluate on the labelled cases of ``data``; writes report.json, per_case.csv, summary.md and overlays/
    into ``out``, a new folder (or, with ``overwrite``, a report folder anodiff made, emptied first)."""
    method = model.method
    method.check_samples(model, samples, kinds_where(lambda m: m.draws_samples))
    # A report folder without report.json (written last) is an interrupted evaluation: it starts again.
    unfinished = is_marked(out) and not (out / "report.json").is_file()
    fresh_folder(out, "anodiff evaluate", overwrite=overwrite or unfinished, what="report folder")
    data = prepared_for(model, data, out / "prepared", progress=progress)
    report = method.evaluate(model, data, seed=seed, samples=samples, overrides=overrides,
                             overlays=out / "overlays", progress=progress)
    report.write(out)
    return report


def prepared_for(model: TrainedModel, data: Path, folder: Path, *, progress: Progress | None = None) -> Path:
    """``data`` as the model sees it: prepared into ``folder`` (labels carried onto the prepared grid) when
    the model was trained on prepared data and ``data`` is not prepared already; else ``data`` itself."""
    options = preparation_of(model)
    if options is None or data.is_file() or read_options(data) is not None:
        return data
    found = discover(data)
    outcomes = prepare_cases(found.cases, folder, options, overwrite=True,
                             progress=staged(progress, "preparing"))
    for outcome in outcomes:
        if outcome.error:
            log.warning("case %s not prepared, left out: %s", outcome.case, outcome.error)
    return folder


def rerender(folder: Path) -> Report:
    """Re-render a report folder from its ``report.json`` alone (no network, no volume): the curves,
    ``per_case.csv``, ``summary.md`` and ``report.html``, and the per-case figures from the views kept in
    ``overlays/*.npz`` where they still are."""
    path = folder / "report.json"
    if not path.is_file():
        raise DataError(f"{folder}: no report.json (a folder written by `anodiff evaluate`)")
    try:
        figures = json.loads(path.read_text(encoding="utf-8"))
        report = method_of_report(figures).report_of(figures)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ConfigError) as err:
        raise DataError(f"{path}: not a report.json anodiff can read ({type(err).__name__}: {err})") from None
    redraw_case_figures(folder / "overlays")
    report.write(folder)
    return report
