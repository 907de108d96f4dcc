"""Speed and quality in one run (``make bench``): samplers, LDM, training throughput, where detect spends its time.

On one machine, in one run:

1. two small synthetic cohorts (healthy training, test with lesions);
2. a DDPM and an LDM trained at the same small budget (``configs/bench.yaml``);
   training samples/s and the share of time spent waiting on data, from each run;
3. ``anodiff evaluate`` of the DDPM with the full DDPM reverse chain from ``t0`` and
   with DDIM in K steps (stochastic, ``eta`` 1, as the recipe sets it; and K = 10 with
   eta 0), and of the LDM with DDIM: seconds per volume, peak memory
   (the process's peak RSS on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU),
   Dice and AUROC side by side; each threshold recalibrated for its setting;
   and the few-pass frontier below them (one-step x0 estimates at 3 noise levels, or 1);
4. the time split of one ``anodiff detect`` call on a BraTS-sized case
   (240x240x155, 4 modalities), for the bench model and for the GPU recipe's
   network (``configs/ddpm2d.yaml``, untrained weights: timing only);
5. ``anodiff detect`` on that case with the default real-data CPU recipe
   (``configs/brats_cpu.yaml``, untrained weights, calibrated on the case), as a user
   runs it, with each speed-up on and off (the recipe, 2 passes, against DDIM-10; 2 threads against
   1), and the network's achieved FLOP/s against the machine's peak (``cpu_path.py``);
6. on a CPU with onnxruntime installed: ``anodiff detect --runtime onnx`` against the torch network on the
   test cohort (the bench DDPM) and on that case (the real-data recipe): seconds per volume, masks, maps.

Writes ``<out>/bench.json`` and ``docs/results/bench.md``; the last line printed is the
one summary: the recipes' map against DDIM-10 and the full chain, and the default
recipe's detect seconds and share of peak. Trained models are reused only when their
config, overrides and data match (:mod:`results`); every timing is measured afresh.

    python benchmarks/bench.py --out bench-output [--device cuda]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from results import ROOT, digest, trained, write_results

CONFIG = ROOT / "configs" / "bench.yaml"
LDM_SETTINGS = [  # the LDM recipe of configs/ldm_demo.yaml on the bench's budget
    "model.kind=ldm", "autoencoder.channels=[32,64]", "autoencoder.latent_channels=3",
    "autoencoder.adversarial_start=150", "autoencoder.discriminator_layers=2", "autoencoder.lr=2e-4",
]

ONE_STEP = ["sampler.kind=ddim_t0", "sampler.num_inference_steps=1"]
LEVELS = ["anomaly.t0=100", "anomaly.extra_t0=[50,200]"]  # the recipes' three noise levels
RECIPE_MAP = "2-pass: an antithetic pair at t0 100, z-scored, centred and scaled (the recipes' map)"
FEW_PASSES = {  # the frontier below DDIM-5: one-step x0 estimates, in the bench's scoring and in the recipes'
    "3-pass: x0 at t0 50, 100, 200": [*ONE_STEP, *LEVELS],
    "1-pass: x0 at t0 250": [*ONE_STEP, "anomaly.extra_t0=[]"],
    "3-pass, z-scored, centred and scaled (the recipes' map before antithetic pairs)": [
        *ONE_STEP, *LEVELS, "anomaly.score=zscore", "anomaly.centre=true", "anomaly.scale=true"],
    RECIPE_MAP: [*ONE_STEP, "anomaly.t0=100", "anomaly.extra_t0=[]", "anomaly.antithetic=true",
                 "anomaly.score=zscore", "anomaly.centre=true", "anomaly.scale=true"],
}
DEFAULT = "the recipe (default)"
BEFORE = ("sampler.kind=ddim", "sampler.num_inference_steps=10", "anomaly.t0=250", "anomaly.extra_t0=[]")


# Started by a small Python process, which reports the command's own peak resident memory (wait4): a child
# started straight from this process would count this process's memory too (Linux takes the peak of the memory
# a child execs from, and this process holds cohorts and models).
PEAK_OF = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
           "_, status, usage = os.wait4(p.pid, 0); print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)")


def timed(*command: str) -> dict:
    """Run a command; returns its wall time and peak resident memory (the command alone)."""
    print(f"$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    status, peak_kb = subprocess.run([sys.executable, "-c", PEAK_OF, *command], stdout=subprocess.PIPE, text=True,
                                     check=True).stdout.split()
    if int(status) != 0:
        raise SystemExit(f"failed: {shlex.join(command)}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": int(peak_kb) / 1024}


def cohorts(anodiff: str, out: Path) -> None:
    if not (out / "train" / "cohort.json").is_file():
        timed(anodiff, "-q", "synth", "--out", str(out / "train"), "--cases", "6", "--seed", "11", "--spacing",
              "2.5", "--healthy-only", "--overwrite")
    if not (out / "test" / "cohort.json").is_file():
        timed(anodiff, "-q", "synth", "--out", str(out / "test"), "--cases", "6", "--seed", "12", "--spacing",
              "2.5", "--healthy-fraction", "0.17", "--overwrite")


def train(out: Path, device: str, settings: list[str]) -> tuple[Path, dict]:
    """The bench model of ``settings`` (reused when config, settings and data match) and its training figures."""
    model = trained(CONFIG, settings, out / "train", out, "--device", device)
    meta = json.loads((model / "meta.json").read_text(encoding="utf-8"))
    stages = {"diffusion": meta["training"]}
    if "training" in meta.get("autoencoder", {}):
        stages["autoencoder"] = meta["autoencoder"]["training"]
    return model, stages


def evaluate(anodiff: str, out: Path, model: Path, label: str, device: str, settings: list[str]) -> dict:
    report_dir = out / "reports" / label
    usage = timed(anodiff, "-q", "evaluate", "--model", str(model), "--data", str(out / "test"), "--out",
                  str(report_dir), "--device", device, "--overwrite", *settings)
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    m = report["methods"]["anodiff"]
    return {"method": label, "network_evals_per_slice": report["network_evals_per_slice"],
            "seconds_per_volume": report["seconds_per_volume"],
            "peak_memory_mb": report.get("peak_gpu_memory_mb") or usage["peak_rss_mb"],
            "memory_kind": "GPU allocated" if report.get("peak_gpu_memory_mb") else "process RSS",
            "auroc": m["auroc_pooled"], "auprc": m["auprc_pooled"], "dice_calibrated": m["dice_calibrated_pooled"],
            "dice_best_possible": m["dice_best_possible_pooled"],
            "baseline_auroc": report["methods"]["flair threshold"]["auroc_pooled"]}


def brats_sized_case(anodiff: str, out: Path) -> Path:
    """One 4-modality case of BraTS's grid (240x240x155 at 1 mm): a 1 mm synthetic subject, padded/cropped."""
    import nibabel as nib

    case = out / "brats_sized" / "bsz_000"
    if case.is_dir():
        return case
    timed(anodiff, "-q", "synth", "--out", str(out / "brats_sized_src"), "--cases", "1", "--seed", "13",
          "--spacing", "1", "--healthy-fraction", "0", "--overwrite")
    source = next(p for p in (out / "brats_sized_src").iterdir() if p.is_dir())
    case.mkdir(parents=True)
    for path in sorted(source.glob("*.nii.gz")):
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        target = np.zeros((240, 240, 155), data.dtype)
        x, y, z = (min(a, b) for a, b in zip(data.shape, target.shape))
        z0 = max(0, (data.shape[2] - 155) // 2)
        target[:x, :y, :z] = data[:x, :y, z0:z0 + z]
        suffix = path.name[len(source.name):]
        nib.save(nib.Nifti1Image(target, img.affine, img.header), case / f"bsz_000{suffix}")
    return case


def detect_split(model_dir: Path, case: Path, device: str, repeats: int = 2) -> dict:
    """Time split of detect_cases on one case (the last of ``repeats`` runs, after a warm-up)."""
    import tempfile

    from anodiff.data.cases import discover
    from anodiff.distributed import pick_device
    from anodiff.jobs import detect_cases
    from anodiff.methods import load_model

    model = load_model(model_dir, device=pick_device(device))
    [found] = discover(case.parent).cases
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            [outcome] = detect_cases(model, [found], lambda c: {"mask": Path(tmp) / "mask.nii.gz"}, overwrite=True)
    if outcome.error:
        raise SystemExit(f"detect failed on {case}: {outcome.error}")
    t = outcome.timings
    network = t["network_s"]
    return {"load_preprocess_s": t["preprocess_s"], "network_s": network,
            "postprocess_write_s": t["postprocess_s"] + t["write_s"], "total_s": outcome.seconds,
            "network_share": network / outcome.seconds}


def untrained_model(out: Path, name: str, config_path: Path, case_dir: Path, overrides: list[str], device: str
                    ) -> Path:
    """A recipe's network with untrained weights, calibrated on the case itself (a threshold and, for a z-scored
    map, its healthy residual statistics): every step of a real detect, for timing only."""
    import torch

    from anodiff.config import config_to_dict, load_config
    from anodiff.data.cases import discover
    from anodiff.distributed import pick_device
    from anodiff.methods.anomaly.calibration import calibrate
    from anodiff.modelfolder import TrainedModel, save_model
    from anodiff.models import build_network

    folder = out / f"{name}-{digest(config_to_dict(load_config(config_path, overrides)), str(case_dir))}"
    if (folder / "meta.json").is_file():
        return folder
    config = load_config(config_path, overrides)
    [case] = discover(case_dir.parent).cases
    modalities = sorted(case.images)
    network = build_network(config.model, in_channels=len(modalities)).eval().to(pick_device(device))
    meta = {"kind": "ddpm", "modalities": modalities, "preprocessing": config_to_dict(config.data)}
    with torch.inference_mode():
        meta |= calibrate(TrainedModel(config=config, network=network, meta=meta, folder=folder), [case])
    save_model(folder, config, network.cpu(), meta)
    return folder


def detect_speed(anodiff: str, out: Path, case: Path, device: str) -> dict:
    """``anodiff detect`` on the 240x240x155x4 case with the default real-data CPU recipe
    (``configs/brats_cpu.yaml``), each speed-up on and off: seconds end to end (the command, as a user runs it,
    start-up included), its time split, and the network's achieved FLOP/s against the machine's peak."""
    import torch
    from cpu_path import flops_per_slice, peak_gflops, slices

    from anodiff.config import load_config
    from anodiff.data.cases import discover
    from anodiff.inference.cases import preprocess
    from anodiff.methods.anomaly.scoring import num_slices_run, passes_per_input

    recipe = ROOT / "configs" / "brats_cpu.yaml"
    settings = {DEFAULT: [], "DDIM-10 from t0 250 (before)": list(BEFORE)}
    peak, _ = peak_gflops()
    network, x, t = slices(recipe, 4, 1)
    gflop = flops_per_slice(network, x, t) / 1e9
    [found] = discover(case.parent).cases
    rows = {}
    for label, overrides in settings.items():
        model = untrained_model(out, f"brats-cpu-recipe-{len(rows)}", recipe, case, overrides, device)
        config = load_config(model / "config.yaml")
        passes = passes_per_input(config) * num_slices_run(preprocess(found, tuple(sorted(found.images)), config.data),
                                                           config)
        command = timed(anodiff, "-q", "detect", str(case), "--model", str(model), "--out",
                        str(out / "masks" / f"{model.name}.nii.gz"), "--device", device, "--overwrite")
        split = detect_split(model, case, device)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one_thread = detect_split(model, case, device, repeats=1)
        finally:
            torch.set_num_threads(threads)
        rate = gflop * passes / split["network_s"]
        rows[label] = {"command_s": command["seconds"], "peak_rss_mb": command["peak_rss_mb"], **split,
                       "network_passes": passes, "gflop_per_slice": gflop, "gflops": rate, "peak_share": rate / peak,
                       "one_thread_total_s": one_thread["total_s"]}
    return {"recipe": "configs/brats_cpu.yaml (48 px, 4 modalities, untrained weights)", "peak_gflops": peak,
            "rows": rows}


def onnx_parity(anodiff: str, out: Path, model: Path, cases: Path, label: str) -> dict:
    """``anodiff detect`` of every case in ``cases`` with the torch network and with its ONNX export through ONNX
    Runtime (CPU): seconds per volume each (the command's, start-up included, over the cases), masks identical,
    the share of map voxels within 1e-5 and the largest map difference."""
    import nibabel as nib

    timed(anodiff, "-q", "export", "--model", str(model), "--overwrite")
    seconds, found = {}, {}
    for runtime in ("torch", "onnx"):
        folder = out / "onnx-parity" / model.name / runtime
        seconds[runtime] = timed(anodiff, "-q", "detect", str(cases), "--model", str(model), "--out", str(folder),
                                 "--device", "cpu", "--runtime", runtime, "--overwrite")["seconds"]
        found[runtime] = {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*.nii.gz"))}
    masks = [name for name in found["torch"] if name.endswith("_mask.nii.gz")]
    maps = [name for name in found["torch"] if name.endswith("_map.nii.gz")]
    differences = np.concatenate([np.abs(found["torch"][n] - found["onnx"][n]).ravel() for n in maps])
    return {"model": label, "cases": len(masks), "torch_s": seconds["torch"] / len(masks),
            "onnx_s": seconds["onnx"] / len(masks),
            "masks_identical": sum(np.array_equal(found["torch"][n], found["onnx"][n]) for n in masks),
            "map_within_1e-5": float(np.mean(differences <= 1e-5)), "map_max_difference": float(differences.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25, 50], help="DDIM step counts")
    args = parser.parse_args()
    anodiff = str(Path(sys.executable).with_name("anodiff"))
    out, device = args.out, args.device
    began = time.perf_counter()
    cohorts(anodiff, out)

    ddpm, ddpm_training = train(out, device, [])
    ldm, ldm_training = train(out, device, LDM_SETTINGS)
    training = {"ddpm": ddpm_training, "ldm": ldm_training}
    rows = [evaluate(anodiff, out, ddpm, "DDPM full reverse", device, ["sampler.kind=ddpm"])]
    rows += [evaluate(anodiff, out, ddpm, f"DDIM-{k}", device, [f"sampler.num_inference_steps={k}"])
             for k in args.steps]
    rows.append(evaluate(anodiff, out, ddpm, "DDIM-10, eta 0 (deterministic)", device,
                         ["sampler.num_inference_steps=10", "sampler.eta=0"]))
    rows += [evaluate(anodiff, out, ddpm, label, device, settings) for label, settings in FEW_PASSES.items()]
    rows.append(evaluate(anodiff, out, ldm, "LDM DDIM-10", device, ["sampler.num_inference_steps=10"]))

    case = brats_sized_case(anodiff, out)
    splits = {"bench DDPM (DDIM-10)": detect_split(ddpm, case, device)}
    cpu = machine(device).startswith("CPU")
    gpu_recipe = untrained_model(out, "ddpm2d-recipe-untrained", ROOT / "configs" / "ddpm2d.yaml", case,
                                 ["anomaly.extra_t0=[]"] if cpu else [], device)  # one pass on a CPU: ~2 min
    splits[f"ddpm2d.yaml network ({1 if cpu else 3} pass{'' if cpu else 'es'})"] = detect_split(
        gpu_recipe, case, device, repeats=1)  # no warm-up: the network dominates
    speed = detect_speed(anodiff, out, case, device)
    onnx = []
    if cpu and importlib.util.find_spec("onnxruntime") is not None:  # the ONNX runtime is a CPU path
        recipe = untrained_model(out, "brats-cpu-recipe-0", ROOT / "configs" / "brats_cpu.yaml", case, [], device)
        onnx = [onnx_parity(anodiff, out, ddpm, out / "test", "bench DDPM, the test cohort"),
                onnx_parity(anodiff, out, recipe, case.parent, "configs/brats_cpu.yaml, the 240x240x155x4 case")]

    results = {"machine": machine(device), "rows": rows, "training": training, "detect_split": splits,
               "detect_speed": speed, "onnx": onnx, "seconds": time.perf_counter() - began}
    table = markdown(results) + "\nThe one summary line it printed:\n\n    " + summary_line(results) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    write_results("bench", "Speed and quality: samplers, LDM, training throughput, anodiff detect on a BraTS-sized "
                  "case (make bench)", table, configs=[CONFIG, ROOT / "configs" / "brats_cpu.yaml",
                                                        ROOT / "configs" / "ddpm2d.yaml"],
                  minutes=results["seconds"] / 60)
    print("\n" + table)
    print(summary_line(results))


def summary_line(results: dict) -> str:
    """The one line the README quotes: the default's speed and quality against DDIM-10 and the full chain."""
    rows = {r["method"]: r for r in results["rows"]}
    full, ddim10, few = rows["DDPM full reverse"], rows["DDIM-10"], rows[RECIPE_MAP]
    default = results["detect_speed"]["rows"][DEFAULT]
    return (f"the recipes' 2-pass map vs DDIM-10: AUPRC {few['auprc'] - ddim10['auprc']:+.3f}, best Dice "
            f"{few['dice_best_possible'] - ddim10['dice_best_possible']:+.3f}; "
            f"{full['seconds_per_volume'] / few['seconds_per_volume']:.0f}x faster than the full chain; "
            f"default real-data recipe: anodiff detect on 240x240x155x4 in {default['command_s']:.1f} s end to end, "
            f"network at {default['peak_share']:.0%} of peak")


def machine(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; whole run {results['seconds'] / 60:.1f} min.", "",
             "| method | network passes / slice | detect s / volume | peak memory MB | AUROC | AUPRC | "
             "Dice calibrated | Dice best possible |", "| --- " * 8 + "|"]
    for r in results["rows"]:
        lines.append(f"| {r['method']} | {r['network_evals_per_slice']} | {r['seconds_per_volume']:.2f} | "
                     f"{r['peak_memory_mb']:.0f} ({r['memory_kind']}) | {r['auroc']:.3f} | {r['auprc']:.3f} | "
                     f"{r['dice_calibrated']:.3f} | {r['dice_best_possible']:.3f} |")
    lines.append(f"| FLAIR threshold | 0 | - | - | {results['rows'][0]['baseline_auroc']:.3f} | - | - | - |")
    lines += ["", "| training | stage | samples / s | share of time waiting on data |", "| --- | --- | --- | --- |"]
    for mode, stages in results["training"].items():
        for stage, t in stages.items():
            lines.append(f"| {mode} | {stage} | {t['samples_per_s']:.1f} | {t['data_wait_fraction']:.1%} |")
    lines += ["", "| one `anodiff detect` on 240x240x155x4 | load + preprocess s | network s | "
                  "post-process + write s | total s | network share |", "| --- " * 6 + "|"]
    for name, t in results["detect_split"].items():
        lines.append(f"| {name} | {t['load_preprocess_s']:.2f} | {t['network_s']:.2f} | "
                     f"{t['postprocess_write_s']:.2f} | {t['total_s']:.2f} | {t['network_share']:.0%} |")
    speed = results["detect_speed"]
    lines += ["", f"`anodiff detect` on 240x240x155x4 with {speed['recipe']}; peak {speed['peak_gflops']:.0f} GFLOP/s",
              "", "| setting | command s (end to end) | in-process s | 1 thread s | network s | network passes | "
                  "GFLOP/s | share of peak | peak RSS MB |", "| --- " * 9 + "|"]
    for name, t in speed["rows"].items():
        lines.append(f"| {name} | {t['command_s']:.1f} | {t['total_s']:.2f} | {t['one_thread_total_s']:.2f} | "
                     f"{t['network_s']:.2f} | {t['network_passes']} | {t['gflops']:.1f} | {t['peak_share']:.0%} | "
                     f"{t['peak_rss_mb']:.0f} |")
    return "\n".join(lines + onnx_lines(results.get("onnx", []))) + "\n"


def onnx_lines(rows: list[dict]) -> list[str]:
    """The torch-against-ONNX Runtime table (none when the ONNX path was not measured)."""
    if not rows:
        return []
    lines = ["", "`anodiff detect --runtime onnx` (after `anodiff export`) against the torch network, per volume "
                 "(the command's seconds over the cases, start-up included):", "",
             "| model and cases | cases | torch s | ONNX Runtime s | speed-up | masks identical | "
             "map voxels within 1e-5 | largest map difference |", "| --- " * 8 + "|"]
    return lines + [f"| {r['model']} | {r['cases']} | {r['torch_s']:.1f} | {r['onnx_s']:.1f} | "
                    f"{r['torch_s'] / r['onnx_s']:.2f}x | {r['masks_identical']} of {r['cases']} | "
                    f"{r['map_within_1e-5']:.4%} | {r['map_max_difference']:.1e} |" for r in rows]


if __name__ == "__main__":
    main()
