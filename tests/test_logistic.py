"""Logistic regression over row blocks: scikit-learn's fit, without the rows in memory."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from imgpipe.logistic import balanced_weights, fit_logistic


class InBlocks:
    """An in-memory matrix served `rows` at a time."""

    def __init__(self, x: np.ndarray, rows: int) -> None:
        self.x, self.rows = x, rows

    def blocks(self) -> Iterator[tuple[slice, np.ndarray]]:
        for start in range(0, len(self.x), self.rows):
            yield slice(start, start + self.rows), self.x[start:start + self.rows]


def data(classes: int, n: int = 300, dim: int = 12, seed: int = 0,
         shares: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes, size=n, p=shares)
    centres = rng.normal(size=(classes, dim))
    return centres[labels] + rng.normal(scale=1.5, size=(n, dim)), labels


@pytest.mark.parametrize(("classes", "balance"), [(4, False), (2, False), (3, True)])
def test_the_fit_is_scikit_learns(classes: int, balance: bool) -> None:
    x, y = data(classes, shares=[0.6, 0.3, 0.1] if balance else None)
    reference = LogisticRegression(C=0.3, max_iter=1000,
                                   class_weight="balanced" if balance else None).fit(x, y)
    fit = fit_logistic(InBlocks(x, 64), x.shape[1], y, np.unique(y), 0.3, 1000,
                       balanced_weights(y) if balance else None)
    assert fit.converged
    assert fit.coef.shape == reference.coef_.shape  # one row for two classes, as sklearn
    # Both stop at the same gradient tolerance; what is left is summation order.
    np.testing.assert_allclose(fit.coef, reference.coef_, atol=1e-6)
    np.testing.assert_allclose(fit.intercept, reference.intercept_, atol=1e-6)


def test_block_size_changes_only_rounding() -> None:
    x, y = data(3)
    fits = [fit_logistic(InBlocks(x, rows), x.shape[1], y, np.unique(y), 1.0, 1000)
            for rows in (len(x), 7)]
    np.testing.assert_allclose(fits[0].coef, fits[1].coef, atol=1e-9)


def test_a_warm_start_begins_at_the_given_solution() -> None:
    x, y = data(3)
    classes = np.unique(y)
    cold = fit_logistic(InBlocks(x, 50), x.shape[1], y, classes, 1.0, 1000)
    # Started at a solution, L-BFGS stops at once: the start was used, not zeros.
    again = fit_logistic(InBlocks(x, 50), x.shape[1], y, classes, 1.0, 1000,
                         start=(cold.coef, cold.intercept))
    np.testing.assert_allclose(again.coef, cold.coef, atol=1e-6)
    assert np.abs(cold.coef).max() > 0.1  # far from the zeros a cold start begins at


def test_too_few_iterations_is_reported_not_hidden() -> None:
    x, y = data(4)
    fit = fit_logistic(InBlocks(x, 100), x.shape[1], y, np.unique(y), 100.0, 2)
    assert not fit.converged and "ITERATIONS" in fit.message.upper()


def test_balanced_weights_give_each_class_the_same_total() -> None:
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
    weights = balanced_weights(labels)
    totals = [weights[labels == k].sum() for k in range(3)]
    assert totals == pytest.approx([3.0, 3.0, 3.0])  # N / classes each
    assert weights.sum() == pytest.approx(len(labels))
