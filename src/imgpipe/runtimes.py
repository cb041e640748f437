"""The frozen backbone on an inference runtime: `extract.runtime` and `extract.precision`.

`torch` runs the inference trunk eagerly (the reference). `openvino` and `onnxruntime`
run the same trunk exported once to ONNX (imgpipe.exported caches the file) and compiled
for this CPU; both give the torch path's features to ~1e-6 in f32, several times faster
on depthwise networks (README, "Speed and scale"). `auto` takes the first of `AUTO_ORDER`
that is installed and compiles this backbone, in f32; when none does it runs torch and
says why in one warning line. An explicit runtime that cannot run is an error naming
the fix. Every runner is an `nn.Module` mapping (B, 3, S, S) images to (B, D) features,
so `imgpipe.data.forward_all` runs it like the eager trunk.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgpipe.errors import ParamsError
from imgpipe.exported import ExportKey, exported_onnx

_logger = logging.getLogger(__name__)
RUNTIMES = ("torch", "openvino", "onnxruntime")
# Fastest first, measured on lite0 and resnet18 (bench/report.md): auto's preference.
AUTO_ORDER = ("openvino", "onnxruntime")
PRECISIONS = ("f32", "bf16")
_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime"}  # module -> pip name
_INSTALL = {"openvino": "pip install openvino (a dependency of imgpipe: pip install -e .)",
            "onnxruntime": "pip install -e .[onnxruntime]"}


class RuntimeUnavailable(RuntimeError):
    """A runtime is not installed, or cannot compile this backbone here."""


def version(runtime: str) -> str:
    """The installed version of a runtime's package (torch: torch's)."""
    if runtime == "torch":
        return torch.__version__
    return importlib.metadata.version(_PACKAGES[runtime])


def check_precision(runtime: str, precision: str) -> None:
    """Refuse bf16 where it cannot run: on torch or onnxruntime, or on a CPU without it.

    Raises:
        ParamsError: naming the fix.
    """
    if precision == "f32":
        return
    if runtime not in ("auto", "openvino"):
        raise ParamsError(f"extract.precision: bf16 runs on OpenVINO only, not with "
                          f"extract.runtime: {runtime}; use extract.runtime: openvino, or "
                          "extract.precision: f32")
    capabilities = _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        raise ParamsError("extract.precision: bf16 but this CPU has no bfloat16 instructions "
                          f"(OpenVINO reports {', '.join(capabilities)}); use "
                          "extract.precision: f32")


def load_runner(requested: str, precision: str, trunk: nn.Module, key: ExportKey,
                cache_dir: Path | None, device: torch.device) -> tuple[str, nn.Module]:
    """The runtime that runs the trunk, and its runner: (runtime name, module).

    `key` says what the exported file depends on; `cache_dir` keeps it across runs.

    Raises:
        ParamsError: an explicit runtime that is missing or cannot run this backbone, or
            bf16 where it cannot run.
    """
    check_precision(requested, precision)
    if requested == "torch" or (requested == "auto" and device.type != "cpu"):
        return "torch", trunk  # on a GPU, PyTorch is the runtime
    if device.type != "cpu":
        raise ParamsError(f"extract.runtime: {requested} runs on the CPU; use device: cpu, "
                          "or extract.runtime: torch (or auto) for the GPU")
    candidates = AUTO_ORDER if requested == "auto" else (requested,)
    reasons = []
    for runtime in candidates:
        try:
            return runtime, _compile(runtime, precision, trunk, key, cache_dir)
        except RuntimeUnavailable as error:
            if requested != "auto":
                raise ParamsError(f"extract.runtime: {runtime} cannot run here: {error}; "
                                  "use extract.runtime: auto (falls back to torch) or "
                                  "torch") from error
            reasons.append(f"{runtime}: {error}")
    if precision != "f32":
        raise ParamsError("extract.precision: bf16 needs OpenVINO, which cannot run here ("
                          + "; ".join(reasons) + "); use extract.precision: f32")
    _logger.warning("extract.runtime auto: running PyTorch eager, slower (%s)",
                    "; ".join(reasons))
    return "torch", trunk


def _compile(runtime: str, precision: str, trunk: nn.Module, key: ExportKey,
             cache_dir: Path | None) -> nn.Module:
    if runtime == "openvino":
        _openvino()  # missing: say so before exporting
    else:
        _import(runtime)
    try:
        target = {"runtime": runtime, "runtime_version": version(runtime),
                  "precision": precision}
        onnx_path = exported_onnx(trunk, key, target, cache_dir)
        try:
            return (OpenVinoTrunk if runtime == "openvino" else OrtTrunk)(onnx_path, precision)
        finally:
            if cache_dir is None:  # a temporary export: the runner holds the model in memory
                shutil.rmtree(onnx_path.parent, ignore_errors=True)
    except RuntimeUnavailable:
        raise
    except Exception as error:  # export or compile failed: an op it lacks, a bad graph
        raise RuntimeUnavailable(f"export or compile failed ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:200] if str(error) else ''})"
                                 ) from error


def _import(runtime: str):
    try:
        return importlib.import_module(runtime)
    except ImportError as error:
        raise RuntimeUnavailable(f"{runtime} is not installed ({_INSTALL[runtime]})") from error


def _openvino():
    return _import("openvino")


class OpenVinoTrunk(nn.Module):
    """The exported trunk compiled by OpenVINO for this CPU, one stream, torch's threads.

    The precision hint is always set: OpenVINO's default on CPUs with bfloat16 is bf16.
    """

    input_memory_format = torch.contiguous_format  # forward_all: batches as they are

    def __init__(self, onnx_path: Path, precision: str) -> None:
        super().__init__()
        openvino = _openvino()
        core = openvino.Core()
        compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",  # one stream: the whole batch, every thread
        })
        self._request = compiled.create_infer_request()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.numpy(), dtype=np.float32)  # (B, 3, S, S)
        return torch.from_numpy(self._request.infer({0: array})[0].copy())


class OrtTrunk(nn.Module):
    """The exported trunk in an ONNX Runtime CPU session with torch's thread count."""

    input_memory_format = torch.contiguous_format  # forward_all: batches as they are

    def __init__(self, onnx_path: Path, precision: str) -> None:
        super().__init__()
        onnxruntime = _import("onnxruntime")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(onnx_path), options,
                                                     providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.numpy(), dtype=np.float32)  # (B, 3, S, S)
        return torch.from_numpy(self._session.run(None, {self._input: array})[0])
