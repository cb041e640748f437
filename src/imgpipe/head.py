"""The linear probe: L2-regularised multinomial logistic regression on cached features.

Protocol of the linear-probe literature: features standardised with train statistics
(std floored, see below), the inverse L2 strength C swept on a log grid and chosen on
val. The fitted model is then folded into one `nn.Linear` on raw features, the head the
backbone gets next.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from threadpoolctl import threadpool_limits
from torch import nn

from imgpipe.backbone_info import BackboneInfo
from imgpipe.errors import DataError, ParamsError
from imgpipe.features import FeatureSet
from imgpipe.io import save_torch
from imgpipe.scores import SelectBy, best_index, confusion, scores

_logger = logging.getLogger(__name__)
_SCALE_FLOOR = 0.1  # fraction of the median feature std below which a std is raised


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
    mean: np.ndarray  # (D,) train feature mean, the standardisation folded into weight/bias
    scale: np.ndarray  # (D,) train feature std (floored)
    best_c: float
    sweep: list[SweepPoint]

    @property
    def best(self) -> SweepPoint:
        return next(point for point in self.sweep if point.c == self.best_c)


def fit_linear_probe(train: FeatureSet, val: FeatureSet, num_classes: int,
                     c_grid: list[float], max_iter: int, select_by: SelectBy = "accuracy",
                     class_balance: str = "none") -> LinearProbe:
    """Fit one probe per C, keep the best on val (`select_by`, then lower val loss).

    With `class_balance="weights"` each class weighs in the loss in inverse proportion to
    its train count (sklearn's `class_weight="balanced"`): a rare class costs as much in
    total as a frequent one.
    """
    if len(np.unique(train.labels)) < 2:
        raise DataError("the train split holds fewer than two classes: nothing to learn")
    features = train.features.astype(np.float64)
    mean = features.mean(axis=0)
    # Near-dead units (std far below the typical one) would get huge weights once the
    # scaling is folded into the head, and fine-tuning would then blow up on the smallest
    # shift in them: their scale is floored at a fraction of the median std.
    scale = features.std(axis=0)
    scale = np.maximum(scale, _SCALE_FLOOR * max(float(np.median(scale)), 1e-12))
    # Fitted in float32 (half the memory traffic of float64, the features' own precision);
    # scored in float64, where the probabilities sum to 1 within log_loss's check.
    train_x = ((features - mean) / scale).astype(np.float32)
    val_x = (val.features.astype(np.float64) - mean) / scale
    classes = np.arange(num_classes)
    fits, sweep = {}, []
    # The regularisation path: each C starts from the solution of the next stronger one
    # (warm start), a few iterations away: 4x faster on the digits features. The optimum
    # is unique for every C, so results move only within the solver's tolerance; that is
    # visible at large C on separable features, where the objective is nearly flat and
    # the fit may stop at once at the previous C's solution.
    solver = LogisticRegression(max_iter=max_iter, warm_start=True,
                                class_weight="balanced" if class_balance == "weights" else None)
    for c in sorted(c_grid):
        # One BLAS thread: these products are too small to split (two threads were 5x
        # slower when other work shared the cores), and the fit no longer depends on the
        # machine's core count.
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
            warnings.simplefilter("always", ConvergenceWarning)
            fit = copy.deepcopy(solver.set_params(C=c).fit(train_x, train.labels))
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            _logger.warning("C=%g did not converge in %d iterations; raise train_head.max_iter",
                            c, max_iter)
        val_proba = _full_proba(fit, val_x, num_classes)
        val_scores = scores(confusion(val.labels, classes[val_proba.argmax(1)], num_classes))
        sweep.append(SweepPoint(
            c=c,
            train_accuracy=float((fit.predict(train_x) == train.labels).mean()),
            val_accuracy=val_scores["accuracy"],
            val_balanced_accuracy=val_scores["balanced_accuracy"],
            val_macro_f1=val_scores["macro_f1"],
            val_loss=float(log_loss(val.labels, val_proba, labels=classes)),
        ))
        fits[c] = fit
        _logger.info("C=%-8g train acc %.4f  val acc %.4f  bal acc %.4f  macro-F1 %.4f  "
                     "val loss %.4f", c, sweep[-1].train_accuracy, sweep[-1].val_accuracy,
                     sweep[-1].val_balanced_accuracy, sweep[-1].val_macro_f1,
                     sweep[-1].val_loss)
    best = best_point(sweep, select_by)
    weight, bias = _fold_standardisation(fits[best.c], mean, scale, num_classes)
    return LinearProbe(weight, bias, mean.astype(np.float32), scale.astype(np.float32),
                       best.c, sweep)


def best_point(sweep: list[SweepPoint], select_by: SelectBy = "accuracy") -> SweepPoint:
    """Highest val `select_by`; among equals, the lowest val loss, then the smallest C."""
    return sweep[best_index([asdict(point) for point in sweep], select_by)]


def _full_proba(fit: LogisticRegression, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Probabilities over all classes, zero for any class absent from train."""
    proba = np.zeros((len(x), num_classes))
    proba[:, fit.classes_] = fit.predict_proba(x)
    return proba


def _fold_standardisation(fit: LogisticRegression, mean: np.ndarray, scale: np.ndarray,
                          num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """w·((x - m) / s) + b  ==  (w / s)·x + (b - (w / s)·m), for every class row."""
    coef, intercept = fit.coef_, fit.intercept_
    if len(fit.classes_) == 2:  # sklearn keeps one row for two classes: logits -z/2, +z/2
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_classes, coef.shape[1]))
    bias = np.full(num_classes, -1e4)  # classes never seen in train are never predicted
    weight[fit.classes_] = coef / scale
    bias[fit.classes_] = intercept - (coef / scale) @ mean
    return weight.astype(np.float32), bias.astype(np.float32)


def save_head(path: Path, probe: LinearProbe, classes: list[str], info: BackboneInfo) -> None:
    payload = {"weight": torch.from_numpy(probe.weight), "bias": torch.from_numpy(probe.bias),
               "mean": torch.from_numpy(probe.mean), "scale": torch.from_numpy(probe.scale),
               "classes": list(classes), "backbone": asdict(info), "c": probe.best_c}
    save_torch(path, payload)


def load_head(path: Path) -> tuple[nn.Linear, list[str], BackboneInfo]:
    """The saved probe as an `nn.Linear` on raw features, its classes and backbone."""
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro train_head` first")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    weight = payload["weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(payload["bias"])
    return head, list(payload["classes"]), BackboneInfo(**payload["backbone"])


def load_standardisation(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The train feature mean and std (each (D,)) that the saved probe was fitted on."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if "mean" not in payload or "scale" not in payload:
        raise DataError(f"{path} predates the stored feature standardisation: run "
                        "`dvc repro -f -s train_head` to refit it")
    return payload["mean"], payload["scale"]


class StandardizedLinear(nn.Module):
    """logits (B, C) = linear((features (B, D) - mean) / scale): the probe's own space.

    The saved probe folds the standardisation into raw-feature weights (w / s), which is
    exact for inference but a poor space to train in: Adam moves every weight by about
    the learning rate per step whatever its scale, so on raw features a step shifts each
    logit by lr x the sum of the feature means (lite0's pooled features are all
    positive), and the first steps of fine-tuning undo the fitted probe. Here mean and
    scale are fixed buffers and the trained weights see zero-mean, unit-variance inputs.
    """

    def __init__(self, linear: nn.Linear, mean: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("scale", scale.detach().clone().float())

    @classmethod
    def from_raw(cls, head: nn.Linear, mean: torch.Tensor,
                 scale: torch.Tensor) -> StandardizedLinear:
        """The same function as `head` (on raw features), re-expressed on standardised ones."""
        linear = nn.Linear(head.in_features, head.out_features)
        with torch.no_grad():
            weight = head.weight.double()
            linear.weight.copy_(weight * scale.double())
            linear.bias.copy_(head.bias.double() + weight @ mean.double())
        return cls(linear, mean, scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.scale)

    def folded(self) -> nn.Linear:
        """An `nn.Linear` on raw features computing the same logits (the model file's head)."""
        head = nn.Linear(self.linear.in_features, self.linear.out_features)
        with torch.no_grad():
            weight = self.linear.weight.double() / self.scale.double()
            head.weight.copy_(weight)
            head.bias.copy_(self.linear.bias.double() - weight @ self.mean.double())
        return head.to(self.linear.weight.device)


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
