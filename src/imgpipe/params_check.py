"""The whole params.yaml validated at once, checks across sections included.

`imgpipe.stage.run` calls `check_params` before every stage's body, so a stage refuses a
params.yaml that is wrong anywhere (a typo in a later stage's section, head_init that
contradicts freeze) before it does any work. This module is deliberately no stage's
dependency in dvc.yaml (stage.run imports it when it runs, not when it is imported): it
can refuse a params file but never changes a value a stage computes with, since every
stage reads its values from its own sections (`imgpipe.params.load_section`). So an edit
here re-runs no stage; a stricter check applies from the next stage that runs.
tests/test_params.py checks that every stage still refuses what this module refuses.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from imgpipe.errors import ParamsError
from imgpipe.params import (
    PARAMS_FILE,
    BackboneParams,
    ClassBalance,
    Device,
    DistributedParams,
    FreezeMode,
    RunParams,
    SelectBy,
    build_dataclass,
    read_params_file,
)
from imgpipe.params_evaluate import EvaluateParams, TrackingParams
from imgpipe.params_extract import ExtractParams
from imgpipe.params_finetune import AugmentParams, FinetuneParams
from imgpipe.params_head import TrainHeadParams
from imgpipe.params_prepare import DataParams, PrepareParams


@dataclasses.dataclass(frozen=True)
class Params:
    """The whole of params.yaml: every section, and the checks across sections."""

    data: DataParams
    backbone: BackboneParams
    freeze: FreezeMode
    prepare: PrepareParams
    extract: ExtractParams
    train_head: TrainHeadParams
    finetune_full: FinetuneParams
    augment: AugmentParams
    evaluate: EvaluateParams
    tracking: TrackingParams
    device: Device = RunParams.device
    select_by: SelectBy = RunParams.select_by
    class_balance: ClassBalance = RunParams.class_balance
    distributed: DistributedParams = dataclasses.field(default_factory=DistributedParams)

    def __post_init__(self) -> None:
        """Checks across sections: each section checks its own keys above."""
        tune = self.finetune_full
        if tune.batch_size % self.distributed.world:
            raise ParamsError(
                f"finetune_full.batch_size: {tune.batch_size} images cannot be shared "
                f"equally by {self.distributed.world} processes (distributed.nnodes: "
                f"{self.distributed.nnodes} x distributed.nproc_per_node: "
                f"{self.distributed.nproc_per_node}); use a multiple of that")
        if self.freeze == "all" and tune.head_init != "probe":
            raise ParamsError(
                f"finetune_full.head_init: {tune.head_init!r} with freeze: all would leave "
                "an untrained head; use head_init: probe, or freeze: partial or none")
        if tune.negative_class is not None and not tune.imagenet_rows:
            raise ParamsError(f"finetune_full.negative_class: {tune.negative_class!r} needs "
                              "imagenet_rows to negate; set imagenet_rows or negative_class: null")
        if tune.imagenet_rows and not (self.backbone.pretrained and self.backbone.weights is None):
            raise ParamsError(
                "finetune_full.imagenet_rows needs the pretrained ImageNet classifier, but "
                f"backbone.pretrained: {self.backbone.pretrained}, backbone.weights: "
                f"{self.backbone.weights!r}; set pretrained: true and weights: null, or "
                "imagenet_rows: {}")
        named = [*tune.imagenet_rows, *([tune.negative_class] if tune.negative_class else [])]
        unknown = [name for name in named if self.data.classes and name not in self.data.classes]
        if unknown:
            raise ParamsError(
                f"finetune_full.imagenet_rows / negative_class: {unknown[0]!r} is not in "
                f"data.classes {self.data.classes!r}; use one of those names")

def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate the whole params file.

    Raises:
        ParamsError: the file is missing or any key is unknown, missing or invalid.
    """
    return parse_params(read_params_file(path))


def check_params(path: Path | str = PARAMS_FILE) -> None:
    """Refuse an invalid params file (ParamsError); nothing else."""
    load_params(path)


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML) into `Params`."""
    return build_dataclass(Params, raw, prefix="")
