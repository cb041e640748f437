"""Classification scores from a confusion matrix, and the best-on-val rule.

One place for both: the probe's C sweep (train_head), the fine-tuning epochs
(finetune_full) and the test metrics (evaluate) compute accuracy, balanced accuracy and
macro-F1 the same way, and train_head and finetune_full keep their best point by one rule.
On imbalanced classes accuracy rewards ignoring the rare ones; balanced accuracy (the
mean per-class recall) and macro-F1 do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from imgpipe.params import SelectBy


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: rows the true class, columns the predicted one."""
    flat = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(matrix: np.ndarray) -> dict[str, float]:
    """accuracy, balanced_accuracy (mean recall over the classes present) and macro_f1
    (mean F1 over every class, 0 for a class never predicted nor present)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    hits = np.diag(matrix)
    support, predicted = matrix.sum(1), matrix.sum(0)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=present)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(hits),
                   where=precision + recall > 0)
    return {"accuracy": float(hits.sum() / max(matrix.sum(), 1.0)),
            "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
            "macro_f1": float(f1.mean())}


def best_index(points: Sequence[Mapping[str, float]], select_by: SelectBy) -> int:
    """The point with the highest `val_<select_by>`; among equals the lowest `val_loss`,
    then the earliest (the probe's stronger regularisation, fine-tuning's epoch 0)."""
    return max(range(len(points)),
               key=lambda i: (points[i][f"val_{select_by}"], -points[i]["val_loss"], -i))
