"""The `extract` section of params.yaml."""

from __future__ import annotations

import dataclasses
from typing import Literal

from imgpipe.params import check_range

Runtime = Literal["auto", "torch", "openvino", "onnxruntime"]  # imgpipe.runtimes.RUNTIMES
Precision = Literal["f32", "bf16"]  # imgpipe.runtimes.PRECISIONS


@dataclasses.dataclass(frozen=True)
class ExtractParams:
    batch_size: int
    runtime: Runtime = "auto"  # what runs the frozen backbone; auto: fastest working, f32
    precision: Precision = "f32"  # bf16: OpenVINO on CPUs with bfloat16; 1.7x faster, less exact

    def __post_init__(self) -> None:
        check_range("extract.batch_size", self.batch_size, 1, 4096)
