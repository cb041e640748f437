"""Fitting the linear probe: L2-regularised logistic regression on cached features.

Protocol of the linear-probe literature: features standardised with train statistics
(std floored, see below), the inverse L2 strength C swept on a log grid and chosen on
val. The fitted model is then folded into one `nn.Linear` on raw features, the head the
backbone gets next (imgpipe.head saves and loads it). Features are read a block of rows
at a time, so memory does not grow with the number of images.

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
from collections.abc import Iterator
from dataclasses import asdict

import numpy as np
from scipy.special import softmax
from threadpoolctl import threadpool_limits

from imgpipe.errors import DataError
from imgpipe.features import FeatureRows
from imgpipe.head import LinearProbe, SweepPoint
from imgpipe.logistic import balanced_weights, fit_logistic
from imgpipe.params import ClassBalance, SelectBy
from imgpipe.prefetch import prefetched
from imgpipe.scores import best_index, confusion, scores

_logger = logging.getLogger(__name__)
_SCALE_FLOOR = 0.1  # fraction of the median feature std below which a std is raised
# Standardised float64 features kept in memory between L-BFGS iterations up to this size
# (26,000 images at 1,280-d); larger splits are read again from disk on every pass.
HOLD_BYTES = 256 << 20
# Coefficients on standardised features are rounded to 10**-COEF_DECIMALS. Fits under
# other BLAS, numpy and libm kernels part by at most 1e-11 (digits features, 1,259 x
# 1,280; 1e-13 on the sample), 10^7 times finer than the grid; on features of unit
# variance, 1,280 roundings of <= 5e-5 move a logit by ~1e-3 (rms), below the solver's
# own tolerance.
COEF_DECIMALS = 4
# Written metrics are rounded to this many decimals: one grid step of a coefficient moves
# a loss by ~1e-6, and last-bit differences of exp/log between CPUs by ~1e-16.
METRIC_DECIMALS = 4


def fit_linear_probe(train: FeatureRows, val: FeatureRows, num_classes: int,
                     c_grid: list[float], max_iter: int, select_by: SelectBy = "accuracy",
                     class_balance: ClassBalance = "none") -> LinearProbe:
    """Fit one probe per C, keep the best on val (`select_by`, then lower val loss).

    With `class_balance="weights"` each class weighs in the loss in inverse proportion to
    its train count (sklearn's `class_weight="balanced"`): a rare class costs as much in
    total as a frequent one. Features are read a block of rows at a time (held in memory
    up to HOLD_BYTES), so memory does not grow with the number of images.
    """
    classes = np.unique(train.labels)
    if len(classes) < 2:
        raise DataError("the train split holds fewer than two classes: nothing to learn")
    # Fitted in float64: in float32, fits under two BLAS kernels ended 5e-5 apart, as
    # coarse as any grid that keeps the head's meaning; in float64, at most 1e-11 apart,
    # in the same time. sklearn's default tolerance on purpose: tighter ones (1e-7,
    # 1e-10) take more iterations, and the paths part further (4e-6 at C=100) the
    # longer they run, until the stopping test itself becomes noise.
    mean, scale = _moments(train)
    train_x, val_x = Standardised(train, mean, scale), Standardised(val, mean, scale)
    weights = balanced_weights(train.labels) if class_balance == "weights" else None
    rows, sweep, start = {}, [], None
    # The regularisation path: each C starts from the (rounded, so the same on every
    # machine) solution of the next stronger one (warm start), a few iterations away.
    for c in sorted(c_grid):
        # One BLAS thread: these products are too small to split (two threads were 5x
        # slower when other work shared the cores), and it rules out one source of
        # machine-dependent rounding (the rounding grid absorbs the others).
        with threadpool_limits(1):
            fit = fit_logistic(train_x, train.dim, train.labels, classes, c, max_iter,
                               weights, start)
            margin = boundary_margin(np.concatenate([fit.coef.ravel(), fit.intercept]))
            start = np.round(fit.coef, COEF_DECIMALS), np.round(fit.intercept, COEF_DECIMALS)
            weight, bias = _class_rows(classes, *start, num_classes)
            sweep.append(_score(c, weight, bias, train_x, train.labels, val_x, val.labels))
        if not fit.converged:
            _logger.warning("C=%g did not converge in %d iterations (%s); raise "
                            "train_head.max_iter", c, max_iter, fit.message)
        _logger.debug("C=%g: closest coefficient to a rounding boundary: %.1e", c, margin)
        rows[c] = weight, bias
        _logger.info("C=%-8g train acc %.4f  val acc %.4f  bal acc %.4f  macro-F1 %.4f  "
                     "val loss %.4f", c, sweep[-1].train_accuracy, sweep[-1].val_accuracy,
                     sweep[-1].val_balanced_accuracy, sweep[-1].val_macro_f1,
                     sweep[-1].val_loss)
    best = best_point(sweep, select_by)
    lowest = min(sweep, key=lambda point: (point.val_loss, point.c))
    with threadpool_limits(1):  # as the sweep's products: one source of rounding less
        start = best if lowest.c == best.c or within_noise(
            _image_losses(*rows[best.c], val_x, val.labels),
            _image_losses(*rows[lowest.c], val_x, val.labels)) else lowest
    weight, bias = _fold_standardisation(*rows[best.c], mean, scale)
    start_weight, start_bias = _fold_standardisation(*rows[start.c], mean, scale)
    return LinearProbe(weight, bias, best.c, sweep, scale.astype(np.float32), len(train.labels),
                       start_weight, start_bias, start.c)


class Standardised:
    """(features - mean) / scale in float64, a block of rows at a time.

    Held in memory after the first read when they take at most HOLD_BYTES (the sample,
    digits, a few thousand images); above that, read again from the features file on
    every pass, so memory stays bounded at any N.
    """

    def __init__(self, rows: FeatureRows, mean: np.ndarray, scale: np.ndarray) -> None:
        self._rows, self._mean, self._scale = rows, mean, scale
        fits = len(rows.labels) * rows.dim * np.dtype(np.float64).itemsize <= HOLD_BYTES
        self._held = list(self._read(reuse=False)) if fits else None

    def blocks(self) -> Iterator[tuple[slice, np.ndarray]]:
        """(rows, block) pairs; a streamed block is overwritten soon after the next one is
        asked for."""
        if self._held is not None:
            return iter(self._held)
        # Read and standardised by a second thread while this one multiplies: file reads
        # and numpy's arithmetic release the GIL. Three buffers: one in use here, one
        # queued, one being filled.
        return prefetched(self._read(reuse=True, buffers=3), depth=1)

    def _read(self, reuse: bool, buffers: int = 1) -> Iterator[tuple[slice, np.ndarray]]:
        start, ring = 0, [np.empty(0)] * buffers
        for number, chunk in enumerate(self._rows.chunks(reuse=reuse)):
            slot = number % buffers
            if not reuse or len(ring[slot]) < len(chunk):
                ring[slot] = np.empty(chunk.shape)
            block = ring[slot][:len(chunk)]  # (n, D) float64, (x - mean) / scale in two passes
            np.subtract(chunk, self._mean, out=block)
            np.divide(block, self._scale, out=block)
            yield slice(start, start + len(chunk)), block
            start += len(chunk)


def _moments(rows: FeatureRows) -> tuple[np.ndarray, np.ndarray]:
    """Train mean and std per feature (std floored), float64, in two passes over the rows."""
    total, count = np.zeros(rows.dim), 0
    for chunk in rows.chunks(reuse=True):
        total += chunk.sum(axis=0, dtype=np.float64)
        count += len(chunk)
    mean = total / count
    squares = np.zeros(rows.dim)
    for chunk in rows.chunks(reuse=True):
        squares += np.square(chunk - mean).sum(axis=0)  # float32 - float64: float64
    # Near-dead units (std far below the typical one) would get huge weights once the
    # scaling is folded into the head, and fine-tuning would then blow up on the smallest
    # shift in them: their scale is floored at a fraction of the median std.
    scale = np.sqrt(squares / count)
    return mean, np.maximum(scale, _SCALE_FLOOR * max(float(np.median(scale)), 1e-12))


def best_point(sweep: list[SweepPoint], select_by: SelectBy = "accuracy") -> SweepPoint:
    """Highest val `select_by`; among equals, the lowest val loss, then the smallest C."""
    return sweep[best_index([asdict(point) for point in sweep], select_by)]


def within_noise(chosen: np.ndarray, lowest: np.ndarray) -> bool:
    """Whether the chosen C's per-image val losses exceed the lowest-loss C's by no more
    than one standard error of their paired differences on average (a paired t of at
    most 1), compared at METRIC_DECIMALS so that CPUs whose kernels round differently
    decide alike (unless a figure lies within their noise of a rounding boundary, the
    residual risk the coefficients' rounding has too).

    This picks where fine-tuning starts: the chosen probe when it is as good as the
    lowest val loss within noise, else the lowest. Val loss judges a probe's
    probabilities, not only its argmax; a C that `select_by` likes can fit train exactly
    (train accuracy 1.0, as a large C chosen by macro-F1 or with class weights did on the
    README's sets), and from such a head fine-tuning's loss is ~0 and it could not leave
    it (README, "A start at the lowest val loss"). Val loss is unweighted, also with
    class weights: it scores the probabilities on val as they are.
    """
    gap = chosen - lowest
    error = gap.std(ddof=1) / np.sqrt(len(gap)) if len(gap) > 1 else 0.0
    return round(float(gap.mean()), METRIC_DECIMALS) <= round(float(error), METRIC_DECIMALS)


def _image_losses(weight: np.ndarray, bias: np.ndarray, val_x: Standardised,
                  labels: np.ndarray) -> np.ndarray:
    """(N,) val log loss of each image under the rows: minus the log of its class's
    softmax probability, clipped to [eps, 1 - eps] as scikit-learn's log_loss does. Their
    mean is the sweep's val loss."""
    logits = np.concatenate([block @ weight.T + bias for _, block in val_x.blocks()])
    return _log_losses(softmax(logits, axis=1), labels)


def _log_losses(proba: np.ndarray, labels: np.ndarray) -> np.ndarray:
    eps = np.finfo(proba.dtype).eps
    return -np.log(np.clip(proba[np.arange(len(labels)), labels], eps, 1 - eps))


def _class_rows(classes: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(num_classes, D) weights and (num_classes,) biases on standardised features."""
    if len(classes) == 2:  # one row for two classes, the logit of the second: -z/2, +z/2
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_classes, coef.shape[1]))
    bias = np.full(num_classes, -1e4)  # classes never seen in train are never predicted
    weight[classes] = coef
    bias[classes] = intercept
    return weight, bias


def _score(c: float, weight: np.ndarray, bias: np.ndarray, train_x: Standardised,
           train_labels: np.ndarray, val_x: Standardised, val_labels: np.ndarray) -> SweepPoint:
    """Accuracies, val scores and val log loss of the rounded rows, to METRIC_DECIMALS."""
    train_correct = sum(int(((block @ weight.T + bias).argmax(1) == train_labels[rows]).sum())
                        for rows, block in train_x.blocks())
    val_logits = np.concatenate([block @ weight.T + bias for _, block in val_x.blocks()])
    val_proba = softmax(val_logits, axis=1)  # float64
    val_scores = scores(confusion(val_labels, val_logits.argmax(1), len(bias)))
    return SweepPoint(
        c=c,
        train_accuracy=round(train_correct / len(train_labels), METRIC_DECIMALS),
        val_accuracy=round(val_scores["accuracy"], METRIC_DECIMALS),
        val_balanced_accuracy=round(val_scores["balanced_accuracy"], METRIC_DECIMALS),
        val_macro_f1=round(val_scores["macro_f1"], METRIC_DECIMALS),
        val_loss=round(float(_log_losses(val_proba, val_labels).mean()), METRIC_DECIMALS),
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
