"""The `evaluate` and `tracking` sections of params.yaml."""

from __future__ import annotations

import dataclasses

from imgpipe.params import check_range


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    batch_size: int

    def __post_init__(self) -> None:
        check_range("evaluate.batch_size", self.batch_size, 1, 4096)


@dataclasses.dataclass(frozen=True)
class TrackingParams:
    experiment: str  # MLflow experiment name
    register_model: str | None = None  # registered model name; None: do not register
    required: bool = False  # True: a tracking failure fails the stage
