"""The inference trunk exported to ONNX once, and kept under the cache folder.

Export takes seconds (lite0: ~5 s on 2 cores); extract reuses the file while nothing
that changes it changes. The key (`ExportKey`, plus the versions and code below) holds
everything that does: the backbone, its weights (by digest), the static input shape
(batch size and input size: padded batches keep one shape), the runtime and its
version, the precision, torch's version (the exporter), and the digest of the
exporting code's import closure (this module, the backbone builders). Layout, as the
per-image caches (imgpipe.cache):

    <cache_dir>/exported/<key>/key.json    what the key was made of
    <cache_dir>/exported/<key>/model.onnx  written atomically (temp file + rename)
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgpipe.cache import FileCache
from imgpipe.closure import code_digests

_logger = logging.getLogger(__name__)
CACHE_KIND = "exported"
MODEL_NAME = "model"
MODEL_SUFFIX = ".onnx"
OPSET = 18  # ONNX operator set of the export
# The exporter logs every graph rewrite at INFO; a stage's log keeps our one line instead.
_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


@dataclass(frozen=True)
class ExportKey:
    """The network and input shape exported (every field is in the key)."""

    backbone: str  # backbone.name
    pretrained: bool  # backbone.pretrained
    weights_sha256: str | None  # digest of backbone.weights; None: the default weights
    batch_size: int  # the static batch dimension
    input_size: int  # S: the static (B, 3, S, S) input, pixels


def export_key_parts(key: ExportKey, target: dict[str, str]) -> dict[str, Any]:
    """The whole key: `key`'s fields, the target (runtime, its version, precision), the
    exporter's version and opset, and the code."""
    return {**asdict(key), **target, "torch": torch.__version__, "opset": OPSET,
            "code": code_digests("imgpipe.exported", "imgpipe.backbones")}


def exported_onnx(trunk: nn.Module, key: ExportKey, target: dict[str, str],
                  cache_dir: Path | None) -> Path:
    """The trunk as an ONNX file with a static (B, 3, S, S) input; exported only when the
    cache has none for `key` and `target` ({"runtime", "runtime_version", "precision"}).
    Without `cache_dir`, exported into a temporary folder."""
    if cache_dir is None:
        path = Path(tempfile.mkdtemp(prefix="imgpipe-export-")) / f"{MODEL_NAME}{MODEL_SUFFIX}"
        _export(trunk, key, path)
        return path
    cache = FileCache(cache_dir, CACHE_KIND, export_key_parts(key, target))
    if cache.has(MODEL_NAME, MODEL_SUFFIX):
        _logger.info("exported %s reused (%s)", key.backbone, cache.folder)
        return cache.path(MODEL_NAME, MODEL_SUFFIX)
    return cache.store(MODEL_NAME, MODEL_SUFFIX, lambda path: _export(trunk, key, path))


def _export(trunk: nn.Module, key: ExportKey, path: Path) -> None:
    started = time.perf_counter()
    example = torch.zeros(key.batch_size, 3, key.input_size, key.input_size)
    trunk = trunk.eval().to(memory_format=torch.contiguous_format)
    with torch.inference_mode(False), torch.no_grad(), _quiet(_EXPORTER_LOGGERS):
        program = torch.onnx.export(trunk, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=["images"], output_names=["features"],
                                    external_data=False, verbose=False)
    program.save(str(path), external_data=False)
    _logger.info("exported %s to ONNX in %.1f s", key.backbone, time.perf_counter() - started)


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
