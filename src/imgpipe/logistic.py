"""L2-regularised logistic regression by L-BFGS, over rows read a block at a time.

The objective, parameter layout and stopping rule of scikit-learn's
`LogisticRegression(solver="lbfgs")`: per image, the (class-weighted) mean cross-entropy
plus |W|^2 / (2 C sum(weights)), intercepts unpenalised; one row of coefficients for two
classes (binomial), one per class otherwise (multinomial); scipy's L-BFGS-B with
gtol 1e-4, ftol 64 eps and 50 line-search steps. What differs is only where the rows
live: each evaluation of the loss and its gradient runs over blocks of rows, so a
million feature vectors never sit in memory at once. Fits agree with scikit-learn's to
the float noise of summing in another order (tests/test_logistic.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import optimize
from scipy.special import expit

GTOL = 1e-4  # scikit-learn's default tol: the largest projected gradient at the stop
_FTOL = 64 * np.finfo(float).eps  # scikit-learn's relative-decrease stop
_MAXLS = 50  # line-search steps per iteration (scikit-learn's; scipy's default is 20)


class Blocks(Protocol):
    """Rows of a design matrix, block by block."""

    def blocks(self) -> Iterator[tuple[slice, np.ndarray]]:
        """(rows, (n, D) float64 block) pairs, in row order, every row once."""
        ...


@dataclass(frozen=True)
class Fit:
    coef: np.ndarray  # (R, D): R = 1 for two classes (logit of classes[1]), else one per class
    intercept: np.ndarray  # (R,)
    converged: bool  # L-BFGS stopped on its tolerances, not on max_iter or a failed search
    message: str  # scipy's reason for stopping


def fit_logistic(x: Blocks, dim: int, labels: np.ndarray, classes: np.ndarray, c: float,
                 max_iter: int, sample_weight: np.ndarray | None = None,
                 start: tuple[np.ndarray, np.ndarray] | None = None) -> Fit:
    """Minimise the regularised loss over the rows of `x`, labelled by `labels`.

    Args:
        x: the (N, dim) rows.
        labels: (N,) class labels, each one of `classes` (sorted, at least two).
        c: inverse L2 strength.
        sample_weight: (N,) per-row weights (class balancing), or None for 1.
        start: (coef, intercept) of an earlier fit to start from (a warm start along the
            regularisation path), shaped like `Fit`'s; None starts from zeros.
    """
    binary = len(classes) == 2
    target = ((labels == classes[1]).astype(np.float64) if binary
              else np.searchsorted(classes, labels))
    weights = np.ones(len(labels)) if sample_weight is None else sample_weight
    weight_sum = float(len(labels)) if sample_weight is None else float(weights.sum())
    rows = 1 if binary else len(classes)
    l2 = 1.0 / (c * weight_sum)
    w0 = np.zeros((rows, dim + 1), order="F")
    if start is not None:
        w0[:, :dim], w0[:, dim] = start
    # Parameters as scikit-learn lays them out: (R, D + 1), intercept last, raveled in
    # Fortran order (a feature's classes side by side). L-BFGS does not care in exact
    # arithmetic; the same layout keeps its rounding close to scikit-learn's.

    def loss_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        params = flat.reshape((rows, dim + 1), order="F")
        coef, intercept = params[:, :dim], params[:, dim]
        loss, grad = 0.0, np.zeros((rows, dim + 1))
        for span, block in x.blocks():
            raw = block @ coef.T + intercept  # (n, R) logits
            y, w = target[span], weights[span]
            if binary:
                z = raw[:, 0]
                loss += float(w @ (np.logaddexp(0.0, z) - y * z))
                pointwise = (w * (expit(z) - y))[:, None]  # (n, 1)
            else:
                top = raw.max(axis=1, keepdims=True)
                exp = np.exp(raw - top)
                total = exp.sum(axis=1)
                picked = raw[np.arange(len(y)), y]
                loss += float(w @ (np.log(total) + top[:, 0] - picked))
                pointwise = exp / total[:, None]  # (n, K): softmax minus one-hot, weighted
                pointwise[np.arange(len(y)), y] -= 1.0
                pointwise *= w[:, None]
            grad[:, :dim] += pointwise.T @ block
            grad[:, dim] += pointwise.sum(axis=0)
        grad /= weight_sum
        grad[:, :dim] += l2 * coef
        loss = loss / weight_sum + 0.5 * l2 * float(np.vdot(coef, coef))
        return loss, grad.ravel(order="F")

    result = optimize.minimize(loss_and_gradient, w0.ravel(order="F"), method="L-BFGS-B",
                               jac=True, options={"maxiter": max_iter, "maxls": _MAXLS,
                                                  "gtol": GTOL, "ftol": _FTOL})
    params = result.x.reshape((rows, dim + 1), order="F")
    return Fit(np.ascontiguousarray(params[:, :dim]), params[:, dim].copy(),
               result.status == 0, str(result.message))


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """(N,) weights: each class's rows weigh N / (classes x its count) (scikit-learn's
    `class_weight="balanced"`): every class costs as much in total."""
    classes, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return (len(labels) / (len(classes) * counts))[index]
