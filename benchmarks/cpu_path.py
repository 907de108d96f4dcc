"""The denoiser's forward pass on the CPU: FLOPs per slice, achieved FLOP/s against the machine's peak, and
what each speed-up the ecosystem offers does to it.

For each recipe (default: the real-data CPU recipe and the 128 px GPU recipe), builds the
network (untrained: the cost does not depend on the weights), counts the FLOPs of one
pass over one slice (``torch.utils.flop_counter``), then times a batch of slices under:
eager fp32 (what detect runs, in ``torch.inference_mode``, attention through
``scaled_dot_product_attention``), the same with the attention matrix materialised (MONAI's
default, what anodiff ran before), channels-last, bf16
autocast, one thread, a larger batch, ``torch.compile``, and the graph exported to ONNX and
run by ONNX Runtime (where ``onnxruntime`` and ``onnxscript`` are installed; not anodiff's
dependencies), its output checked against eager's. The peak is cores x clock x
32 FP32 FLOP per cycle (two 256-bit FMA units: AVX2 + FMA), read from /proc/cpuinfo.
Prints one table; writes ``<out>/cpu_path.md``.

    python benchmarks/cpu_path.py --out bench-output [--recipes brats_cpu.yaml]
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from anodiff.config import load_config
from anodiff.models import build_network

ROOT = Path(__file__).resolve().parents[1]
# recipe -> (config, modalities, slices per timed batch): the 128 px network costs about a second a slice here.
RECIPES = {"brats_cpu.yaml (48 px)": (ROOT / "configs" / "brats_cpu.yaml", 2, 16),
           "ddpm2d.yaml (128 px)": (ROOT / "configs" / "ddpm2d.yaml", 4, 2)}
FLOP_PER_CYCLE = 32  # FP32, AVX2 + FMA, two FMA units per core


def peak_gflops() -> tuple[float, str]:
    """(peak GFLOP/s of this machine's cores, how it was computed)."""
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").is_file() else ""
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", text)] or [2000.0]
    cores = torch.get_num_threads()
    ghz = max(mhz) / 1000
    return cores * ghz * FLOP_PER_CYCLE, f"{cores} cores x {ghz:.2f} GHz x {FLOP_PER_CYCLE} FLOP/cycle"


def slices(config_path: Path, channels: int, batch: int, *, flash_attention: bool = True
           ) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    config = load_config(config_path)
    network = build_network(config.model, in_channels=channels, flash_attention=flash_attention).eval()
    with torch.no_grad():  # MONAI zero-initialises the last convolution: weights, so that outputs can be compared
        for parameter in network.out.parameters():
            parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    size = config.data.image_size
    return network, torch.rand(batch, channels, size, size), torch.full((batch,), 250, dtype=torch.long)


def flops_per_slice(network, x, t) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(x[:1], t[:1])
    return float(counter.get_total_flops())


def seconds_per_slice(network, x, t, *, repeats: int = 3, bf16: bool = False) -> float:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        network(x, t)  # warm-up (and compilation)
        start = time.perf_counter()
        for _ in range(repeats):
            network(x, t)
    return (time.perf_counter() - start) / repeats / len(x)


def onnxruntime_seconds(network, x, t, folder: Path, *, repeats: int = 3) -> tuple[str, float]:
    """(name, seconds per slice) of the pass exported to ONNX and run by ONNX Runtime, threads as torch's."""
    try:
        import onnxruntime
    except ImportError:
        return "ONNX Runtime (not installed)", float("nan")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "network.onnx"
    torch.onnx.export(network, (x, t), path, input_names=["x", "t"], output_names=["y"], dynamo=True)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy(), "t": t.numpy()}
    with torch.inference_mode():
        gap = float(np.abs(session.run(None, feed)[0] - network(x, t).numpy()).max())
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, feed)
    return (f"ONNX Runtime {onnxruntime.__version__} (max abs difference {gap:.1e})",
            (time.perf_counter() - start) / repeats / len(x))


def variants(config_path: Path, channels: int, batch: int, out: Path):
    """(name, seconds per slice) of each way of running the same pass."""
    network, x, t = slices(config_path, channels, batch)
    yield "eager fp32 (detect today)", seconds_per_slice(network, x, t)
    plain, _, _ = slices(config_path, channels, batch, flash_attention=False)
    yield "eager fp32, attention matrix materialised (before)", seconds_per_slice(plain, x, t)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield "eager fp32, 1 thread", seconds_per_slice(network, x, t)
    finally:
        torch.set_num_threads(threads)
    yield f"eager fp32, batch {4 * batch}", seconds_per_slice(network, x.repeat(4, 1, 1, 1), t.repeat(4))
    yield "bf16 autocast", seconds_per_slice(network, x[:1], t[:1], repeats=1, bf16=True)
    last = network.to(memory_format=torch.channels_last)
    yield "channels-last", seconds_per_slice(last, x.contiguous(memory_format=torch.channels_last), t)
    network = network.to(memory_format=torch.contiguous_format)
    try:
        compiled = torch.compile(network)
        yield "torch.compile", seconds_per_slice(compiled, x, t)
    except Exception as err:  # no compiler on this machine: say so, measure the rest
        yield f"torch.compile (failed: {type(err).__name__})", float("nan")
    yield onnxruntime_seconds(network, x, t, out / "onnx" / config_path.stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    parser.add_argument("--slices-per-volume", type=int, default=155)
    parser.add_argument("--recipes", nargs="+", default=[p.name for p, _, _ in RECIPES.values()],
                        help="config file names among the recipes measured")
    args = parser.parse_args()
    peak, how = peak_gflops()
    lines = [f"Peak: {peak:.0f} GFLOP/s ({how}); torch {torch.__version__}, {torch.get_num_threads()} threads", "",
             "| recipe | variant | GFLOP per slice | ms per slice | GFLOP/s | share of peak | s per pass over "
             f"{args.slices_per_volume} slices |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, (path, channels, batch) in RECIPES.items():
        if path.name not in args.recipes:
            continue
        network, x, t = slices(path, channels, 1)
        gflop = flops_per_slice(network, x, t) / 1e9
        for variant, seconds in variants(path, channels, batch, args.out):
            rate = gflop / seconds
            lines.append(f"| {name} | {variant} | {gflop:.2f} | {1000 * seconds:.1f} | {rate:.1f} | "
                         f"{rate / peak:.0%} | {seconds * args.slices_per_volume:.1f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_path.md").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path("bench-output") / "inductor-cache"))
    main()
