"""The probe's head on disk: saved by train_head, loaded by finetune_full.

One `nn.Linear` on raw (unstandardised) backbone features, with what produced it: the
classes, the backbone's identity, the chosen C and the train feature scale (the probe's
L2 penalty, restated by `ProbePenalty`). imgpipe.probe fits it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgpipe.backbone_info import BackboneInfo
from imgpipe.errors import DataError, ParamsError
from imgpipe.io import save_torch

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepPoint:
    c: float
    train_accuracy: float
    val_accuracy: float
    val_balanced_accuracy: float
    val_macro_f1: float
    val_loss: float


@dataclass(frozen=True)
class LinearProbe:
    weight: np.ndarray  # (C, D), acts on raw (unstandardised) features
    bias: np.ndarray  # (C,)
    best_c: float
    sweep: list[SweepPoint]
    # (D,) the train std (floored) the coefficients were regularised in; with best_c and
    # n_train it restates the probe's L2 penalty on raw-feature weights (probe_penalty).
    feature_scale: np.ndarray
    n_train: int
    # The same at start_c, where fine-tuning starts: the C with the lowest val loss, or
    # best_c when within noise of it (imgpipe.probe.within_noise says why).
    start_weight: np.ndarray
    start_bias: np.ndarray
    start_c: float

    @property
    def best(self) -> SweepPoint:
        return next(point for point in self.sweep if point.c == self.best_c)


def save_head(path: Path, probe: LinearProbe, classes: list[str], info: BackboneInfo) -> None:
    payload = {"weight": torch.from_numpy(probe.weight), "bias": torch.from_numpy(probe.bias),
               "classes": list(classes), "backbone": asdict(info), "c": probe.best_c,
               "feature_scale": torch.from_numpy(probe.feature_scale),
               "n_train": probe.n_train,
               "start": {"weight": torch.from_numpy(probe.start_weight),
                         "bias": torch.from_numpy(probe.start_bias), "c": probe.start_c}}
    save_torch(path, payload)


def load_head(path: Path, start: bool = False) -> tuple[nn.Linear, list[str], BackboneInfo]:
    """The saved probe as an `nn.Linear` on raw features, its classes and backbone; with
    `start`, the probe fine-tuning starts from (train_head's start_c)."""
    payload = _load(path)
    rows = _start_rows(payload, path) if start else payload
    weight = rows["weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(rows["bias"])
    return head, list(payload["classes"]), BackboneInfo(**payload["backbone"])


def head_cs(path: Path) -> tuple[float, float]:
    """(the C `select_by` chose, the C fine-tuning starts from) of the saved probe."""
    payload = _load(path)
    return float(payload["c"]), float(_start_rows(payload, path)["c"])


def _load(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro train_head` first")
    return torch.load(path, map_location="cpu", weights_only=True)


def _start_rows(payload: dict, path: Path) -> dict:
    if "start" not in payload:
        raise DataError(f"{path} predates the stored fine-tuning start: run `dvc repro "
                        "train_head` to refit it")
    return payload["start"]


@dataclass(frozen=True)
class ProbePenalty:
    """The probe's own L2 penalty, restated for a head on raw features.

    sklearn minimises C * sum(loss) + |w|^2 / 2 over weights w on standardised features;
    per image that is mean(loss) + |w|^2 / (2 C N), and w = raw weight * feature scale.
    Added to the fine-tuning loss, it makes the probe the optimum of the loss it starts
    from: the head's first gradients are ~0 instead of pulling it towards the
    unregularised fit that the probe's C sweep rejected on val.
    """

    feature_scale: torch.Tensor  # (D,)
    strength: float  # 1 / (2 C N)

    def to(self, device: torch.device) -> ProbePenalty:
        return ProbePenalty(self.feature_scale.to(device), self.strength)

    def __call__(self, head: nn.Linear) -> torch.Tensor:
        return self.strength * (head.weight * self.feature_scale).square().sum()


def load_probe_penalty(path: Path, start: bool = False) -> ProbePenalty:
    """The penalty the probe in `path` was fitted under (with `start`: the fine-tuning
    start's, at its own C)."""
    payload = _load(path)
    if "feature_scale" not in payload:
        raise DataError(f"{path} predates the stored probe penalty: run `dvc repro train_head` "
                        "to refit it, or set finetune_full.head_penalty: none")
    c = float(_start_rows(payload, path)["c"] if start else payload["c"])
    return ProbePenalty(payload["feature_scale"], 1.0 / (2.0 * c * int(payload["n_train"])))


def init_head(head: nn.Linear, mode: str, classes: list[str], imagenet_rows: dict[str, int],
              negative_class: str | None, imagenet_head: nn.Linear | None) -> None:
    """Re-initialise the head in place: keep the probe, Xavier or zeros, then ImageNet rows.

    `imagenet_rows` maps a class to an ImageNet class whose pretrained classifier row
    (weights and bias) it starts from; `negative_class` starts as minus their mean.
    """
    with torch.no_grad():
        if mode == "xavier":
            nn.init.xavier_uniform_(head.weight)
            head.bias.zero_()
        elif mode == "zeros":
            head.weight.zero_()
            head.bias.zero_()
        if not imagenet_rows and negative_class is None:
            return
        if imagenet_head is None:
            raise ParamsError("finetune_full.imagenet_rows needs the pretrained ImageNet "
                              "classifier: set backbone.pretrained: true and backbone.weights: "
                              "null, or imagenet_rows: {}")
        for name in [*imagenet_rows, *([negative_class] if negative_class else [])]:
            if name not in classes:
                raise ParamsError(f"finetune_full.imagenet_rows / negative_class: {name!r} is "
                                  f"not a class; classes are {', '.join(classes)}")
        for name, index in imagenet_rows.items():
            head.weight[classes.index(name)] = imagenet_head.weight[index]
            head.bias[classes.index(name)] = imagenet_head.bias[index]
        if negative_class is not None:
            if not imagenet_rows:
                raise ParamsError("finetune_full.negative_class needs imagenet_rows to negate")
            rows = list(imagenet_rows.values())
            head.weight[classes.index(negative_class)] = -imagenet_head.weight[rows].mean(0)
            head.bias[classes.index(negative_class)] = -imagenet_head.bias[rows].mean()
