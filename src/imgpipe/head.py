"""The linear probe: L2-regularised multinomial logistic regression on cached features.

Protocol of the linear-probe literature: features standardised with train statistics
(std floored, see below), the inverse L2 strength C swept on a log grid and chosen on
val. The fitted model is then folded into one `nn.Linear` on raw features, the head the
backbone gets next.

Canonical bytes: the fit runs in float64 and its coefficients are rounded to
`COEF_DECIMALS` before anything else reads them. CPUs whose BLAS and libm kernels round
differently (AVX2, AVX, SSE3; 1 or 2 threads) end the fit at points far closer together
than that grid (tests/test_head_kernels.py), so they round to the same coefficients, and
everything written (head, metrics, sweep) is computed from the rounded ones. The
residual risk: a coefficient within that noise of a rounding boundary rounds one grid
step apart on the two machines (README, Reproducibility).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from threadpoolctl import threadpool_limits
from torch import nn

from imgpipe.backbone_info import BackboneInfo
from imgpipe.errors import DataError, ParamsError
from imgpipe.features import FeatureSet
from imgpipe.io import save_torch
from imgpipe.params import ClassBalance, SelectBy
from imgpipe.scores import best_index, confusion, scores

_logger = logging.getLogger(__name__)
_SCALE_FLOOR = 0.1  # fraction of the median feature std below which a std is raised
# Coefficients on standardised features are rounded to 10**-COEF_DECIMALS. Fits under
# other BLAS, numpy and libm kernels part by at most 1e-11 (digits features, 1,259 x
# 1,280; 1e-13 on the sample), 10^7 times finer than the grid; on features of unit
# variance, 1,280 roundings of <= 5e-5 move a logit by ~1e-3 (rms), below the solver's
# own tolerance.
COEF_DECIMALS = 4
# Written metrics are rounded to this many decimals: one grid step of a coefficient moves
# a loss by ~1e-6, and last-bit differences of exp/log between CPUs by ~1e-16.
METRIC_DECIMALS = 4


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

    @property
    def best(self) -> SweepPoint:
        return next(point for point in self.sweep if point.c == self.best_c)


def fit_linear_probe(train: FeatureSet, val: FeatureSet, num_classes: int,
                     c_grid: list[float], max_iter: int, select_by: SelectBy = "accuracy",
                     class_balance: ClassBalance = "none") -> LinearProbe:
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
    # Fitted in float64: in float32, fits under two BLAS kernels ended 5e-5 apart, as
    # coarse as any grid that keeps the head's meaning; in float64, at most 1e-11 apart,
    # in the same time. sklearn's default tolerance on purpose: tighter ones (1e-7,
    # 1e-10) take more iterations, and the paths part further (4e-6 at C=100) the
    # longer they run, until the stopping test itself becomes noise.
    train_x = (features - mean) / scale  # (N, D)
    val_x = (val.features.astype(np.float64) - mean) / scale
    rows, sweep = {}, []
    # The regularisation path: each C starts from the (rounded, so the same on every
    # machine) solution of the next stronger one (warm start), a few iterations away.
    solver = LogisticRegression(max_iter=max_iter, warm_start=True,
                                class_weight="balanced" if class_balance == "weights" else None)
    for c in sorted(c_grid):
        # One BLAS thread: these products are too small to split (two threads were 5x
        # slower when other work shared the cores), and it rules out one source of
        # machine-dependent rounding (the rounding grid absorbs the others).
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(1):
            warnings.simplefilter("always", ConvergenceWarning)
            solver.set_params(C=c).fit(train_x, train.labels)
            margin = boundary_margin(np.concatenate([solver.coef_.ravel(), solver.intercept_]))
            solver.coef_ = np.round(solver.coef_, COEF_DECIMALS)
            solver.intercept_ = np.round(solver.intercept_, COEF_DECIMALS)
            weight, bias = _class_rows(solver, num_classes)
            sweep.append(_score(c, weight, bias, train_x, train.labels, val_x, val.labels))
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            _logger.warning("C=%g did not converge in %d iterations; raise train_head.max_iter",
                            c, max_iter)
        _logger.debug("C=%g: closest coefficient to a rounding boundary: %.1e", c, margin)
        rows[c] = weight, bias
        _logger.info("C=%-8g train acc %.4f  val acc %.4f  bal acc %.4f  macro-F1 %.4f  "
                     "val loss %.4f", c, sweep[-1].train_accuracy, sweep[-1].val_accuracy,
                     sweep[-1].val_balanced_accuracy, sweep[-1].val_macro_f1,
                     sweep[-1].val_loss)
    best = best_point(sweep, select_by)
    weight, bias = _fold_standardisation(*rows[best.c], mean, scale)
    return LinearProbe(weight, bias, best.c, sweep, scale.astype(np.float32), len(train.labels))


def best_point(sweep: list[SweepPoint], select_by: SelectBy = "accuracy") -> SweepPoint:
    """Highest val `select_by`; among equals, the lowest val loss, then the smallest C."""
    return sweep[best_index([asdict(point) for point in sweep], select_by)]


def _class_rows(fit: LogisticRegression, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(num_classes, D) weights and (num_classes,) biases on standardised features."""
    coef, intercept = fit.coef_, fit.intercept_
    if len(fit.classes_) == 2:  # sklearn keeps one row for two classes: logits -z/2, +z/2
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_classes, coef.shape[1]))
    bias = np.full(num_classes, -1e4)  # classes never seen in train are never predicted
    weight[fit.classes_] = coef
    bias[fit.classes_] = intercept
    return weight, bias


def _score(c: float, weight: np.ndarray, bias: np.ndarray, train_x: np.ndarray,
           train_labels: np.ndarray, val_x: np.ndarray, val_labels: np.ndarray) -> SweepPoint:
    """Accuracies, val scores and val log loss of the rounded rows, to METRIC_DECIMALS."""
    train_logits, val_logits = train_x @ weight.T + bias, val_x @ weight.T + bias
    val_proba = softmax(val_logits, axis=1)  # float64: rows sum to 1 within log_loss's check
    classes = np.arange(len(bias))
    val_scores = scores(confusion(val_labels, val_logits.argmax(1), len(bias)))
    return SweepPoint(
        c=c,
        train_accuracy=round(float((train_logits.argmax(1) == train_labels).mean()),
                             METRIC_DECIMALS),
        val_accuracy=round(val_scores["accuracy"], METRIC_DECIMALS),
        val_balanced_accuracy=round(val_scores["balanced_accuracy"], METRIC_DECIMALS),
        val_macro_f1=round(val_scores["macro_f1"], METRIC_DECIMALS),
        val_loss=round(float(log_loss(val_labels, val_proba, labels=classes)), METRIC_DECIMALS),
    )


def boundary_margin(values: np.ndarray) -> float:
    """Distance of the value closest to a rounding boundary of the COEF_DECIMALS grid.

    A fit on another CPU that lands further than this from ours may round differently.
    """
    steps = np.asarray(values, dtype=np.float64) * 10.0**COEF_DECIMALS
    return float(np.abs(np.abs(steps - np.floor(steps)) - 0.5).min() * 10.0**-COEF_DECIMALS)


def _fold_standardisation(weight: np.ndarray, bias: np.ndarray, mean: np.ndarray,
                          scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w·((x - m) / s) + b  ==  (w / s)·x + (b - (w / s)·m), for every class row.

    Elementwise products and numpy's fixed-order sums, no BLAS: the same bits on any CPU.
    """
    raw_weight = weight / scale
    raw_bias = bias - (raw_weight * mean).sum(axis=1)
    return raw_weight.astype(np.float32), raw_bias.astype(np.float32)


def save_head(path: Path, probe: LinearProbe, classes: list[str], info: BackboneInfo) -> None:
    payload = {"weight": torch.from_numpy(probe.weight), "bias": torch.from_numpy(probe.bias),
               "classes": list(classes), "backbone": asdict(info), "c": probe.best_c,
               "feature_scale": torch.from_numpy(probe.feature_scale),
               "n_train": probe.n_train}
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


def load_probe_penalty(path: Path) -> ProbePenalty:
    """The penalty the probe in `path` was fitted under."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if "feature_scale" not in payload:
        raise DataError(f"{path} predates the stored probe penalty: run `dvc repro train_head` "
                        "to refit it, or set finetune_full.head_penalty: none")
    return ProbePenalty(payload["feature_scale"],
                        1.0 / (2.0 * float(payload["c"]) * int(payload["n_train"])))


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
