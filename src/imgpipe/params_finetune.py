"""The `finetune_full` and `augment` sections of params.yaml: what finetune_full alone reads."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from imgpipe.errors import ParamsError
from imgpipe.params import check_range


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
    clip_grad_norm: float = 0.0  # max L2 norm of all gradients per step; 0 = off
    patience: int = 0  # early stopping: epochs without val improvement; 0 = off
    head_init: Literal["probe", "xavier", "zeros"] = "probe"
    head_penalty: Literal["probe", "none"] = "probe"  # keep the probe's L2 on the head
    cached_views: int = 4  # partial: augmented views whose frozen-block outputs are cached
    imagenet_rows: dict[str, int] = dataclasses.field(default_factory=dict)  # class -> index
    negative_class: str | None = None  # its row = minus the mean of the imagenet_rows
    bn_stats: Literal["frozen", "update"] = "frozen"  # BatchNorm running stats in training
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("finetune_full.trainable_blocks", self.trainable_blocks, 1, 1000)
        check_range("finetune_full.epochs", self.epochs, 1, 10_000)
        check_range("finetune_full.batch_size", self.batch_size, 2, 4096)
        check_range("finetune_full.lr", self.lr, 0.0, 10.0, closed=False)
        check_range("finetune_full.head_lr_mult", self.head_lr_mult, 0.0, 1000.0)
        check_range("finetune_full.momentum", self.momentum, 0.0, 1.0)
        check_range("finetune_full.weight_decay", self.weight_decay, 0.0, 1.0)
        check_range("finetune_full.step_epochs", self.step_epochs, 1, 10_000)
        check_range("finetune_full.step_gamma", self.step_gamma, 0.0, 1.0)
        check_range("finetune_full.warmup_epochs", self.warmup_epochs, 0.0, self.epochs)
        check_range("finetune_full.label_smoothing", self.label_smoothing, 0.0, 1.0)
        check_range("finetune_full.clip_grad_norm", self.clip_grad_norm, 0.0, 1e6)
        check_range("finetune_full.patience", self.patience, 0, 10_000)
        check_range("finetune_full.cached_views", self.cached_views, 0, 1000)
        for index in self.imagenet_rows.values():
            check_range("finetune_full.imagenet_rows", index, 0, 999)
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
        check_range("augment.crop_scale_min", self.crop_scale_min, 0.05, 1.0)
        check_range("augment.rotation", self.rotation, 0.0, 180.0)
        check_range("augment.color_jitter", self.color_jitter, 0.0, 1.0)
        check_range("augment.grayscale", self.grayscale, 0.0, 1.0)

    @property
    def deterministic(self) -> bool:
        """True when every augmentation is off: each image has one train view."""
        return (self.crop_scale_min == 1.0 and not self.hflip and self.rotation == 0
                and self.color_jitter == 0 and self.grayscale == 0)
