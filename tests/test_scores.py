"""Scores from a confusion matrix, and the best-on-val rule shared by probe and fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from imgpipe.scores import best_index, confusion, scores


def test_confusion_counts_true_rows_and_predicted_columns() -> None:
    matrix = confusion(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_scores_match_scikit_learn_on_an_imbalanced_case() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.choice(4, size=500, p=[0.57, 0.11, 0.04, 0.28])
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 4, size=500))
    got = scores(confusion(y_true, y_pred, 4))
    assert got["accuracy"] == pytest.approx((y_true == y_pred).mean())
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert got["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_always_predicting_the_majority_scores_high_accuracy_only() -> None:
    y_true = np.array([0] * 90 + [1] * 10)
    got = scores(confusion(y_true, np.zeros(100, dtype=int), 2))
    assert got == pytest.approx({"accuracy": 0.9, "balanced_accuracy": 0.5,
                                 "macro_f1": (2 * 0.9 / 1.9) / 2})


def test_best_index_breaks_ties_by_loss_then_takes_the_earliest() -> None:
    rows = [{"val_accuracy": 0.8, "val_macro_f1": 0.6, "val_loss": 0.5},
            {"val_accuracy": 0.9, "val_macro_f1": 0.5, "val_loss": 0.7},
            {"val_accuracy": 0.9, "val_macro_f1": 0.5, "val_loss": 0.6},
            {"val_accuracy": 0.9, "val_macro_f1": 0.5, "val_loss": 0.6}]
    assert best_index(rows, "accuracy") == 2
    assert best_index(rows, "macro_f1") == 0
