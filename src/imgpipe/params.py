"""params.yaml, validated against a typed schema before any stage does work.

Each section of params.yaml is a frozen dataclass below; the field comments are the
schema's documentation, params.yaml's comments are the user's. An unknown key, a value
of the wrong type or outside its allowed set stops the stage with one line that names
the key, the value and the fix (the closest known key, or the allowed values). Checks
that span sections (batch size and process count, freeze and head_init, imagenet_rows and
the backbone or data.classes) are in `Params.__post_init__`, so every stage refuses a
conflicting params.yaml before it does any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from imgpipe.errors import ParamsError

FreezeMode = Literal["all", "partial", "none"]
SelectBy = Literal["accuracy", "balanced_accuracy", "macro_f1"]  # scores.scores() keys
ClassBalance = Literal["none", "weights"]
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false",
               str: "a non-empty string"}


@dataclasses.dataclass(frozen=True)
class DataParams:
    source: str  # dataset root: ImageFolder tree or CSV manifest
    classes: list[str] | None = None  # keep only these labels, in this order

    def __post_init__(self) -> None:
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ParamsError(f"data.classes: {self.classes!r} repeats a name; list each once")


@dataclasses.dataclass(frozen=True)
class BackboneParams:
    name: str  # efficientnet_lite0..2 or a torchvision classification model
    pretrained: bool  # False: random init
    weights: str | None = None  # optional local state-dict file
    input_size: int | None = None  # pixels fed to the network; None: the backbone's own

    def __post_init__(self) -> None:
        if self.input_size is not None:
            _check_range("backbone.input_size", self.input_size, 32, 1024)


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    seed: int
    val_fraction: float
    test_fraction: float
    image_size: int  # pixels, side of the stored square images
    on_error: Literal["skip", "stop"]  # unreadable images and broken manifest rows

    def __post_init__(self) -> None:
        _check_range("prepare.val_fraction", self.val_fraction, 0.0, 1.0, closed=False)
        _check_range("prepare.test_fraction", self.test_fraction, 0.0, 1.0, closed=False)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ParamsError(
                f"prepare.val_fraction + prepare.test_fraction = "
                f"{self.val_fraction + self.test_fraction:g} leaves no training images: "
                "keep their sum below 1 (0.3 is usual)")
        _check_range("prepare.image_size", self.image_size, 32, 1024)


@dataclasses.dataclass(frozen=True)
class ExtractParams:
    batch_size: int

    def __post_init__(self) -> None:
        _check_range("extract.batch_size", self.batch_size, 1, 4096)


@dataclasses.dataclass(frozen=True)
class TrainHeadParams:
    c_grid: list[float]  # inverse L2 strengths to sweep
    max_iter: int

    def __post_init__(self) -> None:
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise ParamsError(f"train_head.c_grid: {self.c_grid!r} must be a non-empty list "
                              "of positive numbers, e.g. [0.01, 0.1, 1, 10]")
        _check_range("train_head.max_iter", self.max_iter, 1, 100_000)


@dataclasses.dataclass(frozen=True)
class FinetuneParams:
    trainable_blocks: int = 6  # freeze=partial: trailing backbone blocks trained
    trainable_patterns: list[str] = dataclasses.field(default_factory=list)  # name regexes
    epochs: int = 4
    batch_size: int = 16
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-4  # backbone learning rate (peak, after warmup)
    head_lr_mult: float = 10.0  # head lr = lr * head_lr_mult (discriminative lrs)
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_epochs: int = 2  # schedule=step: epochs between decays
    step_gamma: float = 0.1  # schedule=step: lr factor at each decay
    warmup_epochs: float = 0.0  # linear warmup from 0, in epochs (fractions allowed)
    label_smoothing: float = 0.0
    patience: int = 0  # early stopping: epochs without val improvement; 0 = off
    head_init: Literal["probe", "xavier", "zeros"] = "probe"
    head_penalty: Literal["probe", "none"] = "probe"  # keep the probe's L2 on the head
    cached_views: int = 4  # partial: augmented views whose frozen-block outputs are cached
    imagenet_rows: dict[str, int] = dataclasses.field(default_factory=dict)  # class -> index
    negative_class: str | None = None  # its row = minus the mean of the imagenet_rows
    bn_stats: Literal["frozen", "update"] = "frozen"  # BatchNorm running stats in training
    seed: int = 0

    def __post_init__(self) -> None:
        _check_range("finetune_full.trainable_blocks", self.trainable_blocks, 1, 1000)
        _check_range("finetune_full.epochs", self.epochs, 1, 10_000)
        _check_range("finetune_full.batch_size", self.batch_size, 2, 4096)
        _check_range("finetune_full.lr", self.lr, 0.0, 10.0, closed=False)
        _check_range("finetune_full.head_lr_mult", self.head_lr_mult, 0.0, 1000.0)
        _check_range("finetune_full.momentum", self.momentum, 0.0, 1.0)
        _check_range("finetune_full.weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("finetune_full.step_epochs", self.step_epochs, 1, 10_000)
        _check_range("finetune_full.step_gamma", self.step_gamma, 0.0, 1.0)
        _check_range("finetune_full.warmup_epochs", self.warmup_epochs, 0.0, self.epochs)
        _check_range("finetune_full.label_smoothing", self.label_smoothing, 0.0, 1.0)
        _check_range("finetune_full.patience", self.patience, 0, 10_000)
        _check_range("finetune_full.cached_views", self.cached_views, 0, 1000)
        for index in self.imagenet_rows.values():
            _check_range("finetune_full.imagenet_rows", index, 0, 999)
        for pattern in self.trainable_patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ParamsError(f"finetune_full.trainable_patterns: {pattern!r} is not a "
                                  f"regular expression ({error})") from error


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    crop_scale_min: float = 0.8  # RandomResizedCrop keeps at least this area fraction
    hflip: bool = False
    rotation: float = 0.0  # degrees, random in [-rotation, rotation]
    color_jitter: float = 0.0  # brightness, contrast and saturation strength
    grayscale: float = 0.0  # probability of a grayscale copy

    def __post_init__(self) -> None:
        _check_range("augment.crop_scale_min", self.crop_scale_min, 0.05, 1.0)
        _check_range("augment.rotation", self.rotation, 0.0, 180.0)
        _check_range("augment.color_jitter", self.color_jitter, 0.0, 1.0)
        _check_range("augment.grayscale", self.grayscale, 0.0, 1.0)

    @property
    def deterministic(self) -> bool:
        """True when every augmentation is off: each image has one train view."""
        return (self.crop_scale_min == 1.0 and not self.hflip and self.rotation == 0
                and self.color_jitter == 0 and self.grayscale == 0)


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    batch_size: int

    def __post_init__(self) -> None:
        _check_range("evaluate.batch_size", self.batch_size, 1, 4096)


@dataclasses.dataclass(frozen=True)
class TrackingParams:
    experiment: str  # MLflow experiment name
    register_model: str | None = None  # registered model name; None: do not register
    required: bool = False  # True: a tracking failure fails the stage


@dataclasses.dataclass(frozen=True)
class DistributedParams:
    nproc_per_node: int = 1  # torchrun workers for extract and finetune_full; 1: no torchrun

    def __post_init__(self) -> None:
        _check_range("distributed.nproc_per_node", self.nproc_per_node, 1, 1024)


@dataclasses.dataclass(frozen=True)
class Params:
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
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where the networks run
    select_by: SelectBy = "accuracy"  # val score that picks the probe's C and the epoch
    class_balance: ClassBalance = "none"  # weights: loss weighted by inverse class frequency
    distributed: DistributedParams = dataclasses.field(default_factory=DistributedParams)

    def __post_init__(self) -> None:
        """Checks across sections: each section checks its own keys above."""
        tune = self.finetune_full
        if tune.batch_size % self.distributed.nproc_per_node:
            raise ParamsError(
                f"finetune_full.batch_size: {tune.batch_size} images cannot be shared "
                f"equally by distributed.nproc_per_node: {self.distributed.nproc_per_node} "
                "processes; use a multiple of nproc_per_node")
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


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate the whole params file.

    Raises:
        ParamsError: the file is missing or any key is unknown, missing or invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run the stage from the repository root")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return parse_params(raw)


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as read from YAML) into `Params`."""
    return _build(Params, raw, prefix="")


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the names DVC and MLflow show."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else (
                f"known keys: {', '.join(fields)}")
            raise ParamsError(f"{prefix}{key}: unknown key; {hint}")
    values = {}
    for name, field in fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            if (field.default is not dataclasses.MISSING
                    or field.default_factory is not dataclasses.MISSING):
                continue
            raise ParamsError(f"{key}: missing; add it to params.yaml (see the README)")
        values[name] = _coerce(key, raw[name], hints[name])
    return cls(**values)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ParamsError(f"{key}: {value!r} is not allowed; use one of "
                              f"{', '.join(map(str, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(hint)
        return {_coerce(f"{key} key", k, key_type): _coerce(f"{key}.{k}", v, value_type)
                for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    return _scalar(key, value, hint)


def _scalar(key: str, value: Any, hint: type) -> Any:
    # YAML reads `1e-3` as a string and `true` as a bool: be exact about both.
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if hint is str and isinstance(value, str) and value.strip():
        return value
    raise ParamsError(f"{key}: expected {_TYPE_NAMES[hint]}, got {value!r}")


def _check_range(key: str, value: float, low: float, high: float, closed: bool = True) -> None:
    inside = low <= value <= high if closed else low < value < high
    if not inside:
        bounds = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
        raise ParamsError(f"{key}: {value!r} is out of range; use a value in {bounds}")
