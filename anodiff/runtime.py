"""The denoiser through ONNX Runtime: export a model folder's network to ONNX, and run detection with it.

Only the network that the sampler calls many times is exported (the pixel-space DDPM's
denoiser, a latent model's denoiser, SegDiff's mask denoiser); everything around it
(preprocessing, the schedulers, scoring, an LDM's autoencoder) stays as it is, so the
ONNX path differs from the torch path in that network's arithmetic only.

The file records the SHA-256 of the weights it was exported from and the largest
difference from them measured at export: detection refuses a file whose weights are
not the folder's (a model retrained after its export), the mistake that makes an
exported model's scores quietly differ from the checkpoint's. ``onnx`` and
``onnxruntime`` are an optional extra (``pip install anodiff[onnx]``).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anodiff.errors import CheckpointError, ConfigError
from anodiff.modelfolder import WEIGHTS, TrainedModel

ONNX_FILE = "model.onnx"  # where `anodiff export` writes by default, and `detect --runtime onnx` reads
OPSET = 17
TOLERANCE = 1e-4  # the largest |torch - onnx| on the export's check batch that an export may keep
WEIGHTS_KEY, DIFFERENCE_KEY = "anodiff_weights_sha256", "anodiff_max_abs_difference"
RUNTIMES = ("torch", "onnx")


def weights_digest(folder: Path) -> str:
    return hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()


def require_onnx():
    """The ``onnx`` and ``onnxruntime`` modules; ConfigError saying how to install them otherwise."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ConfigError(f"the ONNX runtime needs the onnx extra: pip install 'anodiff[onnx]' ({err})") from None
    return onnx, onnxruntime


def example_input(model: TrainedModel, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch the denoiser takes, (B, in_channels, *S) on the diffusion grid, and timesteps (B,)."""
    config = model.config
    size = (config.data.image_size,) * config.model.spatial_dims
    grid = model.space.encode(torch.zeros(1, len(model.modalities), *size, device=device_of(model.network)))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, model.network.in_channels, *grid.shape[2:], generator=generator)
    steps = torch.randint(0, config.scheduler.num_train_timesteps, (batch,), generator=generator)
    return x, steps


def export(model: TrainedModel, out: Path) -> float:
    """Write ``model``'s denoiser to ``out`` (ONNX, batch and spatial size free); the largest difference from
    the torch network on a random batch, checked below :data:`TOLERANCE` and recorded in the file."""
    onnx, _ = require_onnx()
    network = model.network.float().cpu().eval()
    x, steps = example_input(model)
    spatial = {axis: f"s{axis}" for axis in range(2, x.ndim)}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on traced Python control flow
        torch.onnx.export(network, (x, steps), str(partial), dynamo=False, opset_version=OPSET,
                          input_names=["x", "timesteps"], output_names=["output"],
                          dynamic_axes={"x": {0: "batch", **spatial}, "timesteps": {0: "batch"},
                                        "output": {0: "batch", **spatial}})
    try:
        difference = largest_difference(network, OnnxDenoiser(partial), *example_input(model, batch=3, seed=1))
        if not difference <= TOLERANCE:
            raise CheckpointError(f"the exported network differs from the torch one by {difference:.2e} "
                                  f"(more than {TOLERANCE:g}); not written")
        proto = onnx.load(str(partial))
        for key, value in {WEIGHTS_KEY: weights_digest(model.folder), DIFFERENCE_KEY: f"{difference:.3e}"}.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(partial))
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return difference


def largest_difference(network: nn.Module, exported: nn.Module, x: torch.Tensor, steps: torch.Tensor) -> float:
    """max |network - exported| on one batch."""
    with torch.no_grad():
        return float((network(x, steps) - exported(x, steps)).abs().max())


class OnnxDenoiser(nn.Module):
    """The denoiser (x (B, C, *S), timesteps (B,)) -> (B, C_out, *S), run by ONNX Runtime on the CPU, on the
    threads torch uses."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        _, onnxruntime = require_onnx()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)  # where callers look for the device

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        feeds = {"x": x.detach().float().cpu().numpy(),
                 "timesteps": timesteps.detach().cpu().to(torch.int64).numpy()}
        return torch.from_numpy(np.asarray(self.session.run(None, feeds)[0])).to(x.device)


def with_runtime(model: TrainedModel, runtime: str, path: Path | None = None) -> TrainedModel:
    """``model`` with its denoiser run by ``runtime`` (torch: as it is; onnx: the export at ``path``, by default
    the folder's ``model.onnx``, refused unless exported from these weights)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return model
    if device_of(model.network).type != "cpu":
        raise ConfigError("the ONNX runtime runs on the CPU; pass --device cpu")
    path = path or model.folder / ONNX_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no ONNX export; write it with `anodiff export --model {model.folder}`")
    denoiser = OnnxDenoiser(path)
    if denoiser.metadata.get(WEIGHTS_KEY) != weights_digest(model.folder):
        raise CheckpointError(f"{path} was exported from other weights than {model.folder / WEIGHTS} (retrained "
                              "since?); export it again")
    return replace(model, network=denoiser)


def device_of(network: nn.Module) -> torch.device:
    return next(network.parameters()).device
