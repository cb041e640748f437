"""Test metrics: accuracy, macro-F1, per-class precision/recall, the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from imgpipe.io import atomic_path


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           classes: list[str]) -> dict:
    """Metrics for `dvc metrics show`: overall figures and one entry per class."""
    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1.mean()),
        "images": len(y_true),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(classes)},
    }


def plot_confusion(path: Path, y_true: np.ndarray, y_pred: np.ndarray,
                   classes: list[str]) -> None:
    """Confusion matrix as a PNG (rows: true class, columns: predicted), counts in cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))
    side = max(4.0, 0.5 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(side, side))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        axes.text(col, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black")
    axes.set_title(f"test accuracy {np.trace(matrix) / max(matrix.sum(), 1):.3f}")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
